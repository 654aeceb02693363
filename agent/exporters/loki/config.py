"""Configuration of the ``loki`` exporter."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from agent.config.schema import Duration, Url, setting
from agent.exporters._helper.batcher import BatchConfig
from agent.exporters._helper.headers import credential_problems, header_problems
from agent.exporters._helper.queue import SendingQueueConfig
from agent.exporters._helper.retry import RetryConfig
from agent.exporters._helper.tls import TlsClientConfig, plain_http_problem
from agent.exporters.loki.labels import FIXED_LABELS, MAX_LABELS, sanitize_label_name

_TENANT = re.compile(r"^[A-Za-z0-9!\-_.*'()]{1,150}$")


@dataclass(frozen=True)
class LokiExporterConfig:
    endpoint: Url = setting(doc="Loki's push URL, its path included: `http://loki:3100/loki/api/v1/push`.")
    encoding: Literal["protobuf", "json"] = setting(
        "protobuf", doc="`protobuf` (snappy-compressed, what Loki's own clients send) or `json`."
    )
    compression: Literal["none", "gzip"] = setting("none", doc="gzip for `json` bodies (protobuf is always snappy).")
    tenant_id: str = setting("", doc="Sent as `X-Scope-OrgID` (needed when Loki runs with `auth_enabled`).")
    headers: dict[str, str] = setting(doc="Extra request headers.", default_factory=dict, secret=True)
    tls: TlsClientConfig = setting(doc="TLS client settings (for `https://`).", default_factory=TlsClientConfig)
    timeout: Duration = setting(Duration(10.0), doc="Time one push may take.", positive=True)
    label_resource_attributes: list[str] = setting(
        doc="Resource attributes added as stream labels besides `service_name`, `level` and `retention` "
        "(`deployment.environment` becomes `deployment_environment`). Keep them few and low-cardinality; "
        "every other attribute goes to structured metadata.",
        default_factory=list,
    )
    max_line_bytes: int = setting(
        256 * 1024, doc="Longer lines are truncated with a marker (Loki's `max_line_size` default).", minimum=64
    )
    span_events: Literal["all", "exceptions", "none"] = setting(
        "all",
        doc="Span events of the traces this exporter receives, sent as log lines linked by trace and span id: "
        "`all`, only `exceptions` (exception events, and events whose `level` attribute is error or above, as "
        "Rust's tracing-opentelemetry records `tracing::error!`), or `none`.",
    )
    span_event_attributes: list[str] = setting(
        doc="Attributes of a span copied onto the log lines of its events (structured metadata, as the event's own "
        "attributes), so that a query by an orchestrator's correlation id finds its exceptions too. Of two keys "
        "naming one metadata entry (`correlation.id` and `correlation_id`), the one first in this list wins.",
        default_factory=lambda: ["correlation_id", "correlation.id", "workflow_id", "workflow.id"],
    )
    retention_classes: list[str] = setting(
        doc="Retention classes this exporter receives; empty receives every class (Loki keeps each for as long "
        "as its `retention_stream` on the `retention` label says).",
        default_factory=list,
    )
    retry_on_failure: RetryConfig = setting(doc="Retries of retryable failures.", default_factory=RetryConfig)
    sending_queue: SendingQueueConfig = setting(
        doc="Bounded (optionally persistent) queue in front of the network.", default_factory=SendingQueueConfig
    )
    batch: BatchConfig = setting(doc="Batching by size and time.", default_factory=BatchConfig)

    def validate(self) -> Iterator[tuple[str, str]]:
        if urllib.parse.urlsplit(str(self.endpoint)).path in ("", "/"):
            # Loki answers 404 at its root, and every batch would be dropped as rejected at run time.
            yield "endpoint", "needs the push path, as in http://loki:3100/loki/api/v1/push"
        if self.compression == "gzip" and self.encoding != "json":
            yield "compression", "gzip applies to encoding: json (protobuf bodies are snappy-compressed)"
        yield from header_problems(self.headers, grpc=False)
        yield from credential_problems(self.endpoint, self.headers, grpc=False)
        if str(self.endpoint).lower().startswith("http://") and self.tls.given_for_tls():
            yield "endpoint", plain_http_problem(self.tls.given_for_tls())
        if self.tenant_id and not _TENANT.match(self.tenant_id):
            yield "tenant_id", "must be 1-150 characters of letters, digits and !-_.*'()"
        if len(self.label_resource_attributes) > MAX_LABELS - len(FIXED_LABELS):
            yield (
                "label_resource_attributes",
                f"at most {MAX_LABELS - len(FIXED_LABELS)} (Loki allows {MAX_LABELS} labels per stream, "
                f"{len(FIXED_LABELS)} are fixed)",
            )
        seen = dict.fromkeys(FIXED_LABELS, "a fixed label")
        for index, attribute in enumerate(self.label_resource_attributes):
            label = sanitize_label_name(attribute)
            if label in seen:
                yield f"label_resource_attributes[{index}]", f"label {label} clashes with {seen[label]}"
            seen[label] = attribute
