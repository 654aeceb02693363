"""The ``service`` section: pipelines, the agent's own telemetry and shutdown."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from agent.config.schema import Duration, HostPort, setting
from agent.server_tls import TlsServerConfig


@dataclass(frozen=True)
class IngestConfig:
    queue_items: int = setting(
        100_000,
        doc="Most items (spans, data points, log records) accepted from senders but not yet taken by the "
        "pipelines, per receiver; beyond it the receiver refuses with a retryable answer. While one signal's "
        "pipeline refuses, each other signal may still hold an equal share (a third with three signals) beyond it.",
        minimum=1,
    )
    queue_mib: int = setting(
        64,
        doc="Most MiB of such requests (their size as received, after decompression), per receiver: a few "
        "requests carrying large prompts must not grow memory without bound while the item bound is far away.",
        minimum=1,
    )


@dataclass(frozen=True)
class PipelineConfig:
    receivers: list[str] = setting(doc="Receivers (or connectors) feeding the pipeline.", default_factory=list)
    processors: list[str] = setting(doc="Processors applied in order.", default_factory=list)
    exporters: list[str] = setting(doc="Exporters (or connectors) every batch is sent to.", default_factory=list)

    def validate(self) -> Iterator[tuple[str, str]]:
        if not self.receivers:
            yield "receivers", "must name at least one receiver"
        if not self.exporters:
            yield "exporters", "must name at least one exporter"
        for section in ("receivers", "processors", "exporters"):
            names = getattr(self, section)
            for name in sorted({n for n in names if names.count(n) > 1}):
                yield section, f"names {name} more than once"


def pipeline_id_problem(pipeline_id: str) -> str | None:
    signal, slash, name = pipeline_id.partition("/")
    if signal not in ("traces", "metrics", "logs"):
        return "pipeline id must start with traces, metrics or logs"
    if slash and not name:
        return "pipeline id must be signal or signal/name, with a name after /"
    return None


@dataclass(frozen=True)
class AdminConfig:
    endpoint: HostPort = setting(
        HostPort("127.0.0.1:13133"),
        doc="Listen address of /health/live, /health/ready and /metrics (the agent's own telemetry).",
    )
    tls: TlsServerConfig = setting(
        doc="Serve the admin endpoint over HTTPS; off unless `cert_file` is set (probes then need `scheme: HTTPS`, "
        "and the scrape of its /metrics `scheme: https`; the kubelet's probes present no client certificate, so "
        "`client_ca_file` here fails them). At a reload that is not refused (`SIGHUP`, or a change of the TLS files: "
        "`service.tls_files_check_interval`), an endpoint with TLS (before or after) listens again with the files "
        "read anew: rotated certificates are taken, and connections and TLS sessions made with the old ones end.",
        default_factory=TlsServerConfig,
    )


@dataclass(frozen=True)
class LogsConfig:
    level: Literal["debug", "info", "warning", "error"] = setting("info", doc="Minimum level logged.")
    format: Literal["json", "text"] = setting("json", doc="`json` lines for log collectors, `text` for humans.")


@dataclass(frozen=True)
class TelemetryConfig:
    admin: AdminConfig = setting(doc="The admin HTTP endpoint.", default_factory=AdminConfig)
    logs: LogsConfig = setting(doc="The agent's own logs (stdout).", default_factory=LogsConfig)


DEFAULT_RETENTION_CLASSES = {
    "error": Duration(30 * 86400),
    "critical": Duration(30 * 86400),
    "standard": Duration(7 * 86400),
}


@dataclass(frozen=True)
class RetentionConfig:
    classes: dict[str, Duration] = setting(
        doc="Retention classes and how long backends keep each. Sampling policies name the class they give a "
        "trace; exporters and Loki labels route by it. Names are lower_snake_case.",
        default_factory=lambda: dict(DEFAULT_RETENTION_CLASSES),
    )
    default_class: str = setting("standard", doc="Class of data no policy or rule classified.")

    def validate(self) -> Iterator[tuple[str, str]]:
        if not self.classes:
            yield "classes", "must define at least one retention class"
        for name in self.classes:
            if not name.replace("_", "").isalnum() or not name.islower():
                yield f"classes.{name}", "class names must be lower_snake_case"
        if self.classes and self.default_class not in self.classes:
            yield "default_class", f"must be one of the classes ({', '.join(self.classes)})"


# A Collector config's extensions (health_check, pprof, zpages): what serves their purpose here.
NO_EXTENSIONS = (
    "the agent has no extensions: its health endpoints and own metrics are served at service.telemetry.admin; remove it"
)


@dataclass(frozen=True)
class ServiceConfig:
    pipelines: dict[str, PipelineConfig] = setting(
        doc="Pipelines by id: `traces`, `metrics` or `logs`, optionally `/name` (`traces/sampling`).",
        default_factory=dict,
    )
    telemetry: TelemetryConfig = setting(doc="The agent's own telemetry.", default_factory=TelemetryConfig)
    retention: RetentionConfig = setting(
        doc="Retention classes, defined once for the sampler, the exporters and the backend configs.",
        default_factory=RetentionConfig,
    )
    ingest: IngestConfig = setting(
        doc="The bounded queue between receivers and pipelines: senders are answered once their data is in it.",
        default_factory=IngestConfig,
    )
    shutdown_timeout: Duration = setting(
        Duration(25.0),
        doc="Time to flush everything buffered after SIGTERM; keep it under the pod's grace period (30s).",
    )
    tls_files_check_interval: Duration = setting(
        Duration(60.0),
        doc="How often the TLS files the config names (certificates, keys, CAs) are compared with what they held "
        "when the running pipelines read them. A change reloads the running config, as SIGHUP does but without "
        "reading the config file again, so that certificates rotated in place are taken. `0s`: never (SIGHUP only).",
    )

    @staticmethod
    def explain_unknown(key: str, value: object) -> list[tuple[str, str]] | None:
        if key == "extensions":  # a Collector config's service section
            return [("", NO_EXTENSIONS)]
        return None

    def validate(self) -> Iterator[tuple[str, str]]:
        if not self.pipelines:
            yield "pipelines", "must define at least one pipeline"
        for pipeline_id in self.pipelines:
            problem = pipeline_id_problem(pipeline_id)
            if problem is not None:
                yield f"pipelines.{pipeline_id}", problem
