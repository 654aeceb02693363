"""Configuration of the ``loadbalancing`` exporter."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from agent.config.schema import Duration, HostPort, setting
from agent.exporters._helper.queue import SendingQueueConfig
from agent.exporters._helper.retry import RetryConfig
from agent.exporters._helper.tls import TlsClientConfig, insecure_problem
from agent.exporters.otlp.config import OtlpExporterConfig


@dataclass(frozen=True)
class BackendProtocolConfig:
    """How each gateway is spoken to: the ``otlp`` exporter's settings without an endpoint."""

    protocol: Literal["grpc", "http/protobuf"] = setting("grpc", doc="OTLP transport to the gateways.")
    compression: Literal["gzip", "none"] = setting("gzip", doc="Request compression.")
    headers: dict[str, str] = setting(doc="Headers sent with every request.", default_factory=dict, secret=True)
    tls: TlsClientConfig = setting(doc="TLS client settings.", default_factory=TlsClientConfig)
    timeout: Duration = setting(Duration(5.0), doc="Time one export to one gateway may take.", positive=True)

    def for_backend(self, endpoint: str) -> OtlpExporterConfig:
        target = endpoint if self.protocol == "grpc" else f"{'https' if not self.tls.insecure else 'http'}://{endpoint}"
        return OtlpExporterConfig(
            endpoint=target,
            protocol=self.protocol,
            compression=self.compression,
            headers=self.headers,
            tls=self.tls,
            timeout=self.timeout,
        )

    def validate(self) -> Iterator[tuple[str, str]]:
        """What the ``otlp`` exporter checks of the same settings (the endpoint comes from the resolver)."""
        checked = self.for_backend("gateway:4317")
        yield from ((path, message) for path, message in checked.validate() if path != "endpoint")
        if self.protocol != "grpc" and self.tls.insecure and self.tls.given_for_tls():
            yield "tls.insecure", insecure_problem(self.tls.given_for_tls())  # it makes the gateways' URLs http://


@dataclass(frozen=True)
class StaticResolverConfig:
    hostnames: list[str] = setting(doc="Gateways as `host:port`.", default_factory=list)

    def validate(self) -> Iterator[tuple[str, str]]:
        for index, hostname in enumerate(self.hostnames):
            try:
                endpoint = HostPort.parse(hostname)
            except ValueError:
                yield f"hostnames[{index}]", f"must be host:port, got {hostname!r}"
                continue
            if not endpoint.rsplit(":", 1)[0] or endpoint.port == 0:
                yield f"hostnames[{index}]", f"must name a host and a port 1-65535, got {hostname!r}"


@dataclass(frozen=True)
class DnsResolverConfig:
    hostname: str = setting(
        doc="Name whose A and AAAA records are the gateways (a Kubernetes headless Service). Asked of DNS servers "
        "only, not `/etc/hosts`: to try the tier on one machine, use the `static` resolver."
    )
    port: int = setting(4317, doc="Port of every gateway.", minimum=1, maximum=65535)
    interval: Duration = setting(Duration(5.0), doc="How often the name is resolved again.", positive=True)
    timeout: Duration = setting(Duration(1.0), doc="Time one resolution may take.", positive=True)
    nameservers: list[str] = setting(
        doc="`ip[:port]` of DNS servers to ask instead of the system's (`/etc/resolv.conf`).", default_factory=list
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        if not self.hostname.strip():
            yield "hostname", "must name the gateways' DNS name (their headless Service)"
        for index, nameserver in enumerate(self.nameservers):
            try:
                parse_nameserver(nameserver)
            except ValueError:
                yield (
                    f"nameservers[{index}]",
                    f"must be an IP address with an optional :port ([ipv6]:port), got {nameserver!r}",
                )


def parse_nameserver(text: str) -> tuple[str, int]:
    """``10.0.0.10``, ``10.0.0.10:5353``, ``fd00::a``, ``[fd00::a]:5353`` → (ip, port); ValueError otherwise."""
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(text)
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    ipaddress.ip_address(host)  # raises ValueError
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(text)
    return host, int(port)


@dataclass(frozen=True)
class ResolverConfig:
    static: StaticResolverConfig | None = setting(None, doc="A fixed list of gateways.")
    dns: DnsResolverConfig | None = setting(None, doc="Gateways from DNS, re-resolved periodically.")

    def validate(self) -> Iterator[tuple[str, str]]:
        if (self.static is None) == (self.dns is None):
            yield "", "set exactly one of static and dns"
        elif self.static is not None and not self.static.hostnames:
            yield "static.hostnames", "must name at least one gateway"


@dataclass(frozen=True)
class LoadBalancingRetryConfig(RetryConfig):
    """The exporters' retry settings with a shorter first wait: a gateway that took nothing should hand its traces
    on soon. A subclass rather than a ``default_factory`` with other values, because a section is built from the
    class defaults of its type: the default must not change when any ``retry_on_failure`` key is written."""

    initial_interval: Duration = setting(Duration(1.0), doc="Wait before the first retry.")


@dataclass(frozen=True)
class LoadBalancingQueueConfig(SendingQueueConfig):
    """The sending queue with the Collector's 10 consumers (a subclass, as ``LoadBalancingRetryConfig``): they
    are shared by every gateway, and a batch holds one until each of its gateways has answered, so a slow gateway
    slows the others' delivery to (consumers ÷ its answer time) batches a second."""

    num_consumers: int = setting(
        10, doc="Concurrent exports, shared by the gateways (a slow gateway holds one per batch).", minimum=1,
        maximum=64,
    )  # fmt: skip


@dataclass(frozen=True)
class LoadBalancingExporterConfig:
    routing_key: Literal["traceID"] = setting(
        "traceID", doc="What picks the gateway: every span and log of a trace goes to the same one."
    )
    protocol: BackendProtocolConfig = setting(doc="How gateways are reached.", default_factory=BackendProtocolConfig)
    resolver: ResolverConfig = setting(
        doc="Where the gateways are: exactly one of `static` and `dns` (required).", default_factory=ResolverConfig
    )
    backend_cooldown: Duration = setting(
        Duration(5.0),
        doc="A gateway taken out of the ring (see `eject_after`) stays out this long; its traces go to the next "
        "gateway on the ring meanwhile (above 0s: a failed gateway would be back in the ring at once).",
        positive=True,
    )
    eject_after: Duration = setting(
        Duration(0.0),
        doc="How long a gateway failing with a retryable error (unreachable, timing out) keeps its traces, which "
        "wait in the queue, before it leaves the ring for `backend_cooldown`. 0s (the default): at the first "
        "failure, so that every sidecar moves a dead gateway's traces at about the same moment; the gateways "
        "decide a trace `decision_wait_after_root` after its root, and spans arriving later follow that decision. "
        "A few seconds keep traces in place through a stall only one sidecar sees (shorter than `protocol.timeout` "
        "it is no failure at all), at the price of sidecars moving a dead gateway's traces up to a retry interval "
        "apart. With retries off, or at shutdown, no retry would come back to the gateway: it leaves at once.",
    )
    max_throttled: Duration = setting(
        Duration(10.0),
        doc="How long a gateway may keep answering 'busy, retry later' (RetryInfo, Retry-After) before it is taken "
        "out of the ring like a failed one. Until then its traces wait for it (a trace stays on one gateway); "
        "past it they go to the next gateway, so that one busy gateway cannot hold up the others' traces, which "
        "wait in the same queue. 0: never. With retries off, or at shutdown, they go to the next gateway at once, "
        "as a failed gateway's do: no retry would come back to it.",
    )
    retry_on_failure: LoadBalancingRetryConfig = setting(
        doc="Retries when no gateway took the data.", default_factory=LoadBalancingRetryConfig
    )
    sending_queue: LoadBalancingQueueConfig = setting(
        doc="Bounded (optionally persistent) queue in front of the gateways.", default_factory=LoadBalancingQueueConfig
    )
