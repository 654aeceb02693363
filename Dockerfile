# syntax=docker/dockerfile:1
# The otel-sidecar agent image: Python slim, the agent in a venv, runs as UID/GID 10001 (non-root), writes only
# to /var/lib/otel-sidecar and /tmp (so it runs with a read-only root filesystem).
#
#   docker build -t otel-sidecar:0.1.0 .
#   docker run --rm -p 127.0.0.1:4317:4317 -p 127.0.0.1:4318:4318 -p 127.0.0.1:9464:9464 -p 127.0.0.1:13133:13133 \
#     -v "$PWD/my-config.yaml:/etc/otel-sidecar/config.yaml:ro" otel-sidecar:0.1.0
#
# Config:  /etc/otel-sidecar/config.yaml (the packaged default config until you mount yours; the Helm chart mounts
#          its ConfigMap there). Check one with: docker run --rm -v ...:ro otel-sidecar:0.1.0 validate --config ...
#          (add --check-files, with the TLS files mounted too, to check them as a start does)
# Ports:   4317  OTLP/gRPC receiver
#          4318  OTLP/HTTP receiver
#          9464  Prometheus exporter: span-derived orchestrator_* metrics at /metrics
#          13133 admin: /health/live, /health/ready, the agent's own otel_sidecar_* metrics at /metrics
# Data:    /var/lib/otel-sidecar (persistent sending queues): mount a volume to keep them across containers.
# The image listens on 0.0.0.0 (OTEL_SIDECAR_*_ENDPOINT below); as a Kubernetes sidecar the chart sets 127.0.0.1.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/otel-sidecar
COPY pyproject.toml README.md ./
COPY agent ./agent
RUN /opt/otel-sidecar/bin/pip install .

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 otel-sidecar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin otel-sidecar \
 && mkdir -p /etc/otel-sidecar /var/lib/otel-sidecar \
 && chown 10001:10001 /var/lib/otel-sidecar
COPY --from=build /opt/otel-sidecar /opt/otel-sidecar
COPY agent/default_config.yaml /etc/otel-sidecar/config.yaml
ENV PATH=/opt/otel-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OTEL_SIDECAR_GRPC_ENDPOINT=0.0.0.0:4317 \
    OTEL_SIDECAR_HTTP_ENDPOINT=0.0.0.0:4318 \
    OTEL_SIDECAR_METRICS_ENDPOINT=0.0.0.0:9464 \
    OTEL_SIDECAR_ADMIN_ENDPOINT=0.0.0.0:13133
USER 10001:10001
WORKDIR /var/lib/otel-sidecar
EXPOSE 4317 4318 9464 13133
# SIGTERM makes the agent drain and flush within service.shutdown_timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["otel-sidecar"]
CMD ["run", "--config", "/etc/otel-sidecar/config.yaml"]
