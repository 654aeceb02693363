"""The ``redaction`` pipeline stage for traces, logs and metrics: rules applied in place, counted per rule."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from google.protobuf.message import Message

from agent.component import Consumer, CreateSettings, Signal
from agent.processors.redaction.config import RedactionConfig
from agent.processors.redaction.rules import CONTENT_RULE, Redactor

# What a GenAI message event (gen_ai.user.message ...) keeps when its content is removed.
_MESSAGE_EVENT_METADATA = frozenset({"gen_ai.system", "gen_ai.provider.name", "role", "index", "finish_reason", "id"})


class RedactionProcessor:
    """Redacts every batch before passing it on; never refuses or holds data itself."""

    def __init__(self, config: RedactionConfig, settings: CreateSettings, signal: Signal, next_consumer: Consumer):
        self._redactor = Redactor(config)
        self._signal = signal
        self._next = next_consumer
        self._cid = settings.component_id
        self._redacted = settings.metrics.counter(
            "redaction_total",
            "Values redacted, by rule: key:<pattern> (attribute keys), a credential shape (openai_key, "
            "bearer_token, ...) or content (prompt and completion content removed).",
            ["processor", "rule"],
        )

    def consume(self, batch: Message) -> None:
        counts: Counter[str] = Counter()
        if self._signal is Signal.TRACES:
            self._traces(batch, counts)
        elif self._signal is Signal.LOGS:
            self._logs(batch, counts)
        else:
            self._metrics(batch, counts)
        for rule, count in counts.items():
            self._redacted.labels(self._cid, rule).inc(count)
        self._next.consume(batch)

    async def start(self) -> None:
        return None

    async def shutdown(self, deadline: float) -> None:
        return None

    def _traces(self, batch: Any, counts: Counter[str]) -> None:
        redactor = self._redactor
        clean = redactor.clean_texts
        for scope_spans in self._scopes(batch.resource_spans, "scope_spans", counts):
            for span in scope_spans.spans[:]:  # a slice builds the wrappers faster than the iterator
                redactor.attributes(span.attributes, counts)
                name = span.name
                if name not in clean:
                    masked = redactor.mask_text(name, counts)
                    if masked is not name:
                        span.name = masked
                # Asking first: most spans have no status, and reading one would build a Status wrapper.
                if span.HasField("status") and span.status.message:
                    span.status.message = redactor.mask_text(span.status.message, counts)
                events, links = span.events, span.links
                if events:
                    for event in events:
                        self._span_event(event, counts)
                if links:
                    for link in links:
                        redactor.attributes(link.attributes, counts)

    def _scopes(self, resources: Any, scope_field: str, counts: Counter[str]) -> Iterator[Any]:
        """Every scope entry of ``resources``, once the resource's and the scope's own attributes are redacted."""
        redactor = self._redactor
        for resource in resources:
            redactor.attributes(resource.resource.attributes, counts)
            for scope in getattr(resource, scope_field):
                instrumentation = scope.scope
                redactor.attributes(instrumentation.attributes, counts)
                # Shown as Loki metadata and Prometheus labels: masked as any text, once per scope.
                _mask_fields(redactor, instrumentation, ("name", "version"), counts)
                yield scope

    def _span_event(self, event: Any, counts: Counter[str]) -> None:
        """An event's name (it becomes a Loki log line) and attributes; a GenAI message event's content goes."""
        redactor = self._redactor
        name = event.name
        if redactor.is_content_event(name):
            _keep_metadata_only(event.attributes, _MESSAGE_EVENT_METADATA, counts)
        masked = redactor.mask_text(name, counts)
        if masked is not name:
            event.name = masked
        redactor.attributes(event.attributes, counts)

    def _logs(self, batch: Any, counts: Counter[str]) -> None:
        redactor = self._redactor
        for scope_logs in self._scopes(batch.resource_logs, "scope_logs", counts):
            for record in scope_logs.log_records:
                if self._is_content_event(record):
                    self._drop_event_content(record, counts)
                else:
                    redactor.value(record.body, counts)
                redactor.attributes(record.attributes, counts)
                _mask_fields(redactor, record, ("event_name", "severity_text"), counts)  # Loki shows both

    def _metrics(self, batch: Any, counts: Counter[str]) -> None:
        """Resource, scope, metric metadata and data point attributes, and the attributes exemplars carry: an
        application's own metrics can label with a header, a command line or a prompt, and Prometheus serves every
        label."""
        redactor = self._redactor
        for scope_metrics in self._scopes(batch.resource_metrics, "scope_metrics", counts):
            for metric in scope_metrics.metrics:
                if metric.metadata:  # the metric's own key-values, written out whole by the file exporter
                    redactor.attributes(metric.metadata, counts)
                if metric.description:  # Prometheus's HELP line
                    _mask_fields(redactor, metric, ("description",), counts)
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                for point in getattr(metric, kind).data_points:
                    redactor.attributes(point.attributes, counts)
                    for exemplar in getattr(point, "exemplars", ()):
                        redactor.attributes(exemplar.filtered_attributes, counts)

    @staticmethod
    def _drop_event_content(record: Any, counts: Counter[str]) -> None:
        """A GenAI message event as a log record: its body and every attribute but the metadata go."""
        if record.HasField("body"):
            record.ClearField("body")
            counts[CONTENT_RULE] += 1
        _keep_metadata_only(record.attributes, _MESSAGE_EVENT_METADATA | {"event.name"}, counts)

    def _is_content_event(self, record: Any) -> bool:
        if record.event_name:
            return self._redactor.is_content_event(record.event_name)
        for kv in record.attributes:
            if kv.key == "event.name":
                return self._redactor.is_content_event(kv.value.string_value)
        return False


def _mask_fields(redactor: Redactor, message: Any, fields: tuple[str, ...], counts: Counter[str]) -> None:
    for field in fields:
        text = getattr(message, field)
        if text:
            masked = redactor.mask_text(text, counts)
            if masked is not text:
                setattr(message, field, masked)


def _keep_metadata_only(attributes: Any, metadata: frozenset[str], counts: Counter[str]) -> None:
    """Remove every attribute of a GenAI message event but its metadata (the rest is message content)."""
    kept = [kv for kv in attributes if kv.key in metadata]
    if len(kept) != len(attributes):
        counts[CONTENT_RULE] += len(attributes) - len(kept)
        del attributes[:]
        attributes.extend(kept)


def create(config: RedactionConfig, settings: CreateSettings, signal: Signal, next_consumer: Consumer) -> Any:
    return RedactionProcessor(config, settings, signal, next_consumer)
