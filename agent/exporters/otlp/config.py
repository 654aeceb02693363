"""Configuration of the ``otlp`` exporter."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from agent.config.schema import Duration, HostPort, Url, setting, without_credentials
from agent.exporters._helper.batcher import BatchConfig
from agent.exporters._helper.headers import credential_problems, header_problems
from agent.exporters._helper.queue import SendingQueueConfig
from agent.exporters._helper.retry import RetryConfig
from agent.exporters._helper.tls import TlsClientConfig, insecure_problem, plain_http_problem


@dataclass(frozen=True)
class OtlpExporterConfig:
    endpoint: str = setting(
        doc="Where to send. gRPC: `host:port` (TLS unless `tls.insecure`) or `http[s]://host:port`. "
        "HTTP: a base URL such as `http://jaeger:4318`; `/v1/traces` etc. are appended.",
        endpoint=True,
    )
    protocol: Literal["grpc", "http/protobuf"] = setting("grpc", doc="OTLP transport.")
    compression: Literal["gzip", "none"] = setting("gzip", doc="Request compression.")
    headers: dict[str, str] = setting(
        doc="Headers (gRPC metadata) sent with every request, e.g. an authorization token.",
        default_factory=dict,
        secret=True,
    )
    tls: TlsClientConfig = setting(doc="TLS client settings.", default_factory=TlsClientConfig)
    timeout: Duration = setting(Duration(10.0), doc="Time one export attempt may take.", positive=True)
    retention_classes: list[str] = setting(
        doc="Retention classes this exporter receives (names from `service.retention.classes`); empty receives "
        "every class. Data without `retention.class` counts as `service.retention.default_class`.",
        default_factory=list,
    )
    retry_on_failure: RetryConfig = setting(doc="Retries of retryable failures.", default_factory=RetryConfig)
    sending_queue: SendingQueueConfig = setting(
        doc="Bounded (optionally persistent) queue in front of the network.", default_factory=SendingQueueConfig
    )
    batch: BatchConfig = setting(doc="Batching by size and time.", default_factory=BatchConfig)

    def validate(self) -> Iterator[tuple[str, str]]:
        endpoint_problems = list(_check_endpoint(self.endpoint, self.protocol))
        yield from endpoint_problems
        yield from header_problems(self.headers, grpc=self.protocol == "grpc")
        if endpoint_problems:
            return  # what follows reads the endpoint (its scheme, its credentials)
        yield from credential_problems(self.endpoint, self.headers, grpc=self.protocol == "grpc")
        if self.protocol == "grpc" and self.tls.insecure_skip_verify and self.uses_tls:
            # grpcio cannot skip certificate verification: every export would fail the TLS handshake.
            yield "tls.insecure_skip_verify", "is not available over gRPC; give tls.ca_file (the server's CA)"
        ignored = [] if self.uses_tls else self.tls.given_for_tls()
        if ignored and "://" not in self.endpoint:
            yield "tls.insecure", insecure_problem(ignored)
        elif ignored:
            yield "endpoint", plain_http_problem(ignored)

    @property
    def uses_tls(self) -> bool:
        """A URL decides by its scheme (in any case: ``HTTPS://`` is https), ``host:port`` by ``tls.insecure``."""
        scheme = urlsplit(self.endpoint).scheme.lower() if "://" in self.endpoint else ""
        if scheme in ("http", "https"):
            return scheme == "https"
        return not self.tls.insecure

    @property
    def grpc_target(self) -> str:
        return self.endpoint.split("://", 1)[1].rstrip("/") if "://" in self.endpoint else self.endpoint


def _check_endpoint(endpoint: str, protocol: str) -> Iterator[tuple[str, str]]:
    shown = without_credentials(endpoint)
    if "://" in endpoint:
        try:
            Url.parse(endpoint)
        except ValueError as exc:
            yield "endpoint", str(exc)
            return
        parts = urlsplit(endpoint)
        if parts.query or parts.fragment:
            yield "endpoint", f"must have no query or fragment (the signal path is appended), got {shown!r}"
        elif protocol == "grpc" and parts.path not in ("", "/"):
            yield "endpoint", "a gRPC endpoint has no path"
        elif parts.path.rstrip("/").endswith(("/v1/traces", "/v1/metrics", "/v1/logs")):
            yield "endpoint", f"is the base URL: /v1/traces etc. are appended, so leave them out of {shown!r}"
        return
    if protocol != "grpc":
        yield "endpoint", f"must be a URL such as http://jaeger:4318 for {protocol}, got {shown!r}"
        return
    address = HostPort.FORM.match(endpoint)
    if address is None or not address.group(1):  # a dial address needs its host
        yield "endpoint", f"must be host:port or a URL, got {shown!r}"
    elif not 1 <= int(address.group(2)) <= 65535:
        yield "endpoint", f"the port must be 1-65535, got {shown!r}"
