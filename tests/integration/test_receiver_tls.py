"""The agent process receiving over mutual TLS from the OpenTelemetry Python SDK (a real client), and taking a
rotated certificate at SIGHUP, or by itself when a mounted Secret's files are swapped; its admin endpoint over TLS
likewise. Certificates are made for each test (openssl, or cryptography where their dates matter)."""

from __future__ import annotations

import datetime
import signal
import ssl
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.helpers import (
    AgentProcess,
    MountedSecret,
    base_config,
    http_get,
    output_spans,
    running_agent,
    self_signed_certificate,
    wait_until,
)

pytestmark = pytest.mark.integration


def spans(count: int) -> tuple[ReadableSpan, ...]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for index in range(count):
        with provider.get_tracer("tls-test").start_as_current_span(f"step {index}"):
            pass
    return memory.get_finished_spans()


def sdk_exporter(agent: AgentProcess, transport: str, trusted: bytes, client: tuple[Path, Path]) -> SpanExporter:
    """The SDK's exporter trusting the certificate ``trusted`` and presenting the ``client`` certificate."""
    client_cert, client_key = client
    otlp = agent.config["receivers"]["otlp"]
    if transport == "grpc":
        credentials = grpc.ssl_channel_credentials(trusted, client_key.read_bytes(), client_cert.read_bytes())
        port = otlp["grpc"]["endpoint"].rsplit(":", 1)[1]
        return GrpcSpanExporter(endpoint=f"localhost:{port}", credentials=credentials, timeout=3)
    trust_file = agent.workdir / f"trusted-{len(trusted)}-{hash(trusted)}.pem"
    trust_file.write_bytes(trusted)
    port = otlp["http"]["endpoint"].rsplit(":", 1)[1]
    return HttpSpanExporter(
        endpoint=f"https://localhost:{port}/v1/traces",
        certificate_file=str(trust_file),
        client_certificate_file=str(client_cert),
        client_key_file=str(client_key),
        timeout=3,
    )


def exported(exporter: SpanExporter, batch: tuple[ReadableSpan, ...]) -> bool:
    try:
        return exporter.export(batch) is SpanExportResult.SUCCESS
    except requests.exceptions.SSLError:  # older SDKs (1.35) raise it instead of answering FAILURE
        return False


def made_certificates(tmp_path: Path) -> tuple[Path, Path, tuple[Path, Path]]:
    """A directory with the agent's certificate and key (server.pem, server.key) and a client's (self-signed, so its
    own CA); returns the directory, the agent's certificate and the client's certificate and key."""
    certs = tmp_path / "certs"
    certs.mkdir()
    cert, _ = self_signed_certificate(certs)
    return certs, cert, self_signed_certificate(certs, "client")


def tls_config(out_dir: Path, certs: Path, client: tuple[Path, Path]) -> dict[str, Any]:
    """Both receivers over mutual TLS with the files of ``made_certificates``."""
    config = base_config(out_dir)
    tls = {
        "cert_file": str(certs / "server.pem"),
        "key_file": str(certs / "server.key"),
        "client_ca_file": str(client[0]),
    }
    for protocol in ("grpc", "http"):
        config["receivers"]["otlp"][protocol]["tls"] = tls
    return config


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_the_sdk_exports_over_mutual_tls_and_a_sighup_takes_a_rotated_certificate(
    tmp_path: Path, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests lets these variables override a session's own CA file (the SDK's certificate_file), and machines
    # (this one among them) set them to the system bundle.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    certs, cert, client = made_certificates(tmp_path)
    with running_agent(tmp_path, tls_config(tmp_path / "out", certs, client)) as agent:
        first = cert.read_bytes()
        assert exported(sdk_exporter(agent, transport, first, client), spans(2))
        wait_until(lambda: len(output_spans(agent.out_dir)) == 2, what="the spans sent over TLS written")

        self_signed_certificate(certs)  # rotated in place, as a Secret mounted in a pod is
        rotated = cert.read_bytes()
        assert rotated != first
        assert agent.process is not None
        agent.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "config reloaded" in agent.log(), timeout=20, what="the reload")

        assert exported(sdk_exporter(agent, transport, rotated, client), spans(3))
        wait_until(lambda: len(output_spans(agent.out_dir)) == 5, what="the spans sent after the rotation written")
        # A client still trusting only the old certificate no longer gets in.
        assert not exported(sdk_exporter(agent, transport, first, client), spans(1))
        assert agent.stop() == 0
    assert len(output_spans(agent.out_dir)) == 5


def test_a_certificate_rotated_in_a_mounted_secret_is_served_without_a_sighup(tmp_path: Path) -> None:
    """service.tls_files_check_interval: the kubelet's swap of a Secret's files is noticed and the running config
    reloaded; the SDK then needs the new certificate."""
    secret = MountedSecret(tmp_path / "secret")
    secret.update(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=20))
    client = self_signed_certificate(tmp_path, "client")
    config = base_config(tmp_path / "out")
    config["receivers"]["otlp"]["grpc"]["tls"] = {"cert_file": str(secret.cert), "key_file": str(secret.key)}
    config["service"]["tls_files_check_interval"] = "200ms"
    with running_agent(tmp_path, config) as agent:
        first = secret.cert.read_bytes()
        assert exported(sdk_exporter(agent, "grpc", first, client), spans(2))
        secret.update(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=80))
        wait_until(lambda: "config reloaded" in agent.log(), timeout=20, what="the reload")
        assert "TLS files changed: reloading the running config to take them" in agent.log()
        assert exported(sdk_exporter(agent, "grpc", secret.cert.read_bytes(), client), spans(3))
        assert not exported(sdk_exporter(agent, "grpc", first, client), spans(1))
        wait_until(lambda: len(output_spans(agent.out_dir)) == 5, what="the spans written")
        assert agent.stop() == 0


def test_a_sighup_with_tls_files_broken_in_place_keeps_the_agent_serving(tmp_path: Path) -> None:
    """README: a config that cannot be used is refused and the running one stays. Certificates are rotated in place
    (same paths), so falling back to the previous config would read the same broken files: they are checked before
    anything stops. A half-written rotation (a cert written before its key, as a script copying two files does) is
    enough."""
    certs, cert, client = made_certificates(tmp_path)
    with running_agent(tmp_path, tls_config(tmp_path / "out", certs, client)) as agent:
        first = cert.read_bytes()
        self_signed_certificate(certs, "next")
        (certs / "next.pem").replace(cert)  # the new certificate is in place, its key not yet
        assert agent.process is not None
        agent.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "config reload refused" in agent.log(), timeout=20, what="the reload refused")
        assert "receivers.otlp.grpc.tls: TLS file(s) not usable" in agent.log()
        assert agent.ready()
        # Still serving over TLS with the certificate it had loaded.
        assert exported(sdk_exporter(agent, "grpc", first, client), spans(2))
        wait_until(lambda: len(output_spans(agent.out_dir)) == 2, what="the spans written")
        assert agent.stop() == 0


def test_the_admin_endpoint_over_tls_answers_probes_and_takes_a_rotated_certificate_at_sighup(tmp_path: Path) -> None:
    certs, cert, _ = made_certificates(tmp_path)
    config = base_config(tmp_path / "out")
    config["service"]["telemetry"]["admin"]["tls"] = {
        "cert_file": str(certs / "server.pem"),
        "key_file": str(certs / "server.key"),
    }
    first = cert.read_bytes()
    agent = AgentProcess(config, tmp_path, admin_ssl=ssl.create_default_context(cafile=str(cert)))
    agent.start()  # ready: /health/ready answered over HTTPS
    try:
        plain = "http://" + config["service"]["telemetry"]["admin"]["endpoint"]
        assert http_get(plain + "/health/ready")[0] == 0
        assert "otel_sidecar_ready 1.0" in agent.metrics()

        self_signed_certificate(certs)  # rotated in place
        assert agent.process is not None
        agent.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "config reloaded" in agent.log(), timeout=20, what="the reload")
        agent.admin_ssl = ssl.create_default_context(cafile=str(cert))
        assert cert.read_bytes() != first
        wait_until(agent.ready, timeout=10, what="ready over HTTPS with the rotated certificate")
        old = certs / "first.pem"
        old.write_bytes(first)
        assert http_get(agent.admin_url + "/health/live", context=ssl.create_default_context(cafile=str(old)))[0] == 0
        assert agent.stop() == 0
    finally:
        agent.kill()
