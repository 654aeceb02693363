"""``otlp`` receiver: OTLP over gRPC (4317) and HTTP (4318, protobuf and JSON, gzip)."""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.component import ConsumerMap, CreateSettings, Factory, Kind, Signal
from agent.config.schema import Duration, EnvText, HostPort, setting, type_name
from agent.receivers.otlp.core import ExportHandler
from agent.receivers.otlp.grpc_server import GrpcServer
from agent.receivers.otlp.http_server import HttpServer
from agent.server_tls import TlsServerConfig, load_server_tls
from agent.telemetry.certificates import LoadedCertificate, presented_certificates


@dataclass(frozen=True)
class GrpcConfig:
    enabled: bool = setting(True, doc="Serve OTLP/gRPC. Off when the section names only `http`.")
    endpoint: HostPort = setting(
        HostPort("127.0.0.1:4317"), doc="Listen address; the default is reachable only from inside the pod."
    )
    max_recv_msg_size_mib: int = setting(
        16, doc="Largest request accepted (after decompression); larger ones get RESOURCE_EXHAUSTED.", minimum=1
    )
    tls: TlsServerConfig = setting(doc="Server TLS; off unless `cert_file` is set.", default_factory=TlsServerConfig)


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = setting(
        True, doc="Serve OTLP/HTTP (`/v1/traces`, `/v1/metrics`, `/v1/logs`). Off when the section names only `grpc`."
    )
    endpoint: HostPort = setting(
        HostPort("127.0.0.1:4318"), doc="Listen address; the default is reachable only from inside the pod."
    )
    max_request_body_size_mib: int = setting(
        16, doc="Largest request body accepted (after decompression); larger ones get 413.", minimum=1
    )
    read_timeout: Duration = setting(
        Duration(30.0),
        doc="Time a request body may take to arrive whole; a slower one gets 503 with `Retry-After` and is counted "
        "as `incomplete`. It bounds how long a trickled body holds memory.",
        positive=True,
    )
    idle_timeout: Duration = setting(
        Duration(60.0), doc="An idle keep-alive connection is closed after this.", positive=True
    )
    tls: TlsServerConfig = setting(doc="Server TLS; off unless `cert_file` is set.", default_factory=TlsServerConfig)


_PROTOCOLS = ("grpc", "http")


def _without_protocols_level(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    protocols = EnvText.structure(raw.get("protocols"))
    if not isinstance(protocols, Mapping):
        return raw  # absent; anything else than a mapping is reported as an unknown field
    lifted = {key: value for key, value in raw.items() if key != "protocols"}
    for key, value in protocols.items():
        # A key under protocols that is not a protocol, or is also given beside protocols, stays nested, and
        # the unknown-field check names it.
        if key in _PROTOCOLS and key not in lifted:
            lifted[key] = value
        else:
            lifted.setdefault("protocols", {})[key] = value
    return lifted


@dataclass(frozen=True)
class OtlpReceiverConfig:
    grpc: GrpcConfig = setting(doc="OTLP/gRPC server.", default_factory=GrpcConfig)
    http: HttpConfig = setting(doc="OTLP/HTTP server.", default_factory=HttpConfig)
    retry_after: float = setting(
        1.0, doc="Seconds a refused sender is told to wait (gRPC RetryInfo, HTTP Retry-After).", minimum=0
    )

    # A key ``prepare_raw`` takes that is no field: the Collector's ``protocols:`` level around these fields
    # (for the chart's schema, agent.config.jsonschema).
    WRAPPERS: ClassVar[Mapping[str, tuple[str, ...]]] = {"protocols": _PROTOCOLS}

    @staticmethod
    def prepare_raw(raw: Mapping[str, Any]) -> Mapping[str, Any]:
        """A section naming only one protocol serves only that one, as the Collector's ``otlp`` receiver does.

        With neither named, both are served: the sidecar's default. The Collector's layout, with ``grpc`` and
        ``http`` under ``protocols:``, is taken as well, so a Collector config's receiver section works as it is.
        """
        raw = _without_protocols_level(raw)
        # A protocol's section that only switches it off does not ask for that protocol alone.
        named = [protocol for protocol in _PROTOCOLS if protocol in raw and not _switched_off(raw[protocol])]
        if len(named) != 1:
            return raw
        (unnamed,) = set(_PROTOCOLS) - set(named)
        if unnamed in raw:
            return raw  # switched off in a section of its own, which is read (and checked) as written
        return {**raw, unnamed: {"enabled": False}}

    @staticmethod
    def explain_unknown(key: str, value: Any) -> list[tuple[str, str]] | None:
        """What ``protocols:`` still holds after its protocols were lifted (see ``_without_protocols_level``): a
        protocol also given beside it, or a key that is none, named under ``protocols`` rather than blaming it."""
        if key != "protocols":
            return None
        value = EnvText.structure(value)
        if not isinstance(value, Mapping):
            return [("", f"must be a mapping holding grpc and/or http, got {type_name(value)}")]
        problems = []
        for name in value:
            if name in _PROTOCOLS:
                problems.append((str(name), f"{name} is given both under protocols: and beside it; keep one"))
            else:
                close = difflib.get_close_matches(str(name), _PROTOCOLS, n=1)
                hint = f"did you mean {close[0]}?" if close else "protocols holds grpc and http"
                problems.append((str(name), f"unknown protocol; {hint}"))
        return problems

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if not self.grpc.enabled and not self.http.enabled:
            problems.append(("", "enable at least one of grpc and http"))
        both = self.grpc.enabled and self.http.enabled
        # Port 0 asks the kernel for a free port: each server gets its own, as the loader's overlap check allows.
        if both and self.grpc.endpoint == self.http.endpoint and self.http.endpoint.port != 0:
            problems.append(("http.endpoint", "must differ from grpc.endpoint"))
        return problems


def _switched_off(section: Any) -> bool:
    section = EnvText.structure(section)  # a section or its switch may come whole from an environment variable
    return isinstance(section, Mapping) and EnvText.structure(section.get("enabled")) is False


class OtlpReceiver:
    def __init__(self, config: OtlpReceiverConfig, settings: CreateSettings, consumers: ConsumerMap) -> None:
        handler = self._handler = ExportHandler(settings, consumers, config.retry_after)
        self._servers: list[GrpcServer | HttpServer] = []
        if config.grpc.enabled:
            grpc = config.grpc
            tls = load_server_tls(grpc.tls, f"receivers.{settings.component_id}.grpc.tls")
            self._servers.append(GrpcServer(grpc.endpoint, grpc.max_recv_msg_size_mib, handler, settings, tls))
        if config.http.enabled:
            http = config.http
            tls = load_server_tls(http.tls, f"receivers.{settings.component_id}.http.tls")
            grpc_endpoint = config.grpc.endpoint if config.grpc.enabled else None
            self._servers.append(HttpServer(http, handler, settings, tls, grpc_endpoint))

    def certificates(self) -> list[LoadedCertificate]:
        return [cert for server in self._servers for cert in presented_certificates(server.tls)]

    async def start(self) -> None:
        for server in self._servers:
            await server.start()

    async def shutdown(self, deadline: float) -> None:
        await asyncio.gather(*(server.shutdown(deadline) for server in self._servers))
        self._handler.close()


FACTORY: Factory[OtlpReceiverConfig] = Factory(
    kind=Kind.RECEIVER,
    type="otlp",
    config_class=OtlpReceiverConfig,
    signals=frozenset(Signal),
    create=lambda cfg, settings, consumers: OtlpReceiver(cfg, settings, consumers),
    description="OTLP over gRPC and HTTP (protobuf and JSON, gzip; HTTP also deflate).",
)
