"""OTLP → Loki: span events become log records, log records become entries of labelled streams.

Stream labels are few and low-cardinality: ``service_name``, ``level``, ``retention`` (the retention class)
and the configured resource attributes. Everything else (trace and span id, severity text, scope name, the
other resource attributes and the record's attributes) goes into structured metadata, within Loki's limits.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber

from agent.exporters._helper.retention import RETENTION_ATTRIBUTE, RetentionClassifier
from agent.exporters.loki.labels import MAX_LABEL_VALUE_BYTES, sanitize_label_name, truncate_utf8
from agent.otlp.anyvalue import any_value_text
from agent.otlp.severity import ERROR_LEVELS, level_of, level_of_text, severity_number_of

MAX_METADATA_ENTRIES = 128  # Loki's max_structured_metadata_entries_count
MAX_METADATA_BYTES = 64 * 1024  # max_structured_metadata_size
_ZERO_TRACE_ID, _ZERO_SPAN_ID = bytes(16), bytes(8)

Labels = tuple[tuple[str, str], ...]
Entry = tuple[int, str, list[tuple[str, str]]]
Streams = dict[Labels, list[Entry]]

_EXCEPTION_EVENT = "exception"
# The attribute tracing-opentelemetry (Rust) gives the span event of a `tracing::error!`/`warn!`/... inside a span.
_EVENT_LEVEL_KEY = "level"
# How far ahead of the agent's clock Loki takes an entry (its creation_grace_period default): later ones are refused.
_FUTURE_GRACE_NS = 10 * 60 * 10**9
_EXCEPTION_LINE_KEYS = ("exception.message", "exception.stacktrace")  # in the line, not repeated as metadata


# --- span events → log records ---------------------------------------------------------------------------------------


def span_events_to_logs(
    request: ExportTraceServiceRequest, mode: str, span_keys: Sequence[str] = ()
) -> ExportLogsServiceRequest | None:
    """Log records for the span events of ``request`` (``mode``: ``all``, or ``exceptions``: exception events and
    events at error level or above), or None. Each carries the span's attributes named in ``span_keys`` besides
    its event's."""
    out = ExportLogsServiceRequest()
    for resource_spans in request.resource_spans:
        target_resource = None
        for scope_spans in resource_spans.scope_spans:
            target_scope = None
            for span in scope_spans.spans:
                for event in span.events:
                    exception = event.name == _EXCEPTION_EVENT
                    level = None if exception else _event_level(event)
                    if mode == "exceptions" and not exception and level not in ERROR_LEVELS:
                        continue
                    if target_resource is None:
                        target_resource = out.resource_logs.add(schema_url=resource_spans.schema_url)
                        target_resource.resource.CopyFrom(resource_spans.resource)
                    if target_scope is None:
                        target_scope = target_resource.scope_logs.add(schema_url=scope_spans.schema_url)
                        target_scope.scope.CopyFrom(scope_spans.scope)
                    record = target_scope.log_records.add()
                    _event_record(record, span, event, exception, level)
                    if span_keys:
                        _add_span_attributes(record, span, span_keys)
    return out if out.resource_logs else None


def _event_level(event: Any) -> str | None:
    """The level an event names in its ``level`` attribute (Rust's tracing-opentelemetry), or None."""
    for kv in event.attributes:
        if kv.key == _EVENT_LEVEL_KEY and kv.value.string_value:
            return level_of_text(kv.value.string_value)
    return None


def _event_record(record: Any, span: Any, event: Any, exception: bool, level: str | None) -> None:
    timestamp = event.time_unix_nano or span.start_time_unix_nano
    record.time_unix_nano = timestamp
    record.observed_time_unix_nano = timestamp
    record.trace_id = span.trace_id
    record.span_id = span.span_id
    record.flags = span.flags & 0xFF
    if exception:
        record.severity_number = SeverityNumber.SEVERITY_NUMBER_ERROR
        record.severity_text = "ERROR"
        record.body.string_value = exception_line(event.attributes)
        record.attributes.extend(kv for kv in event.attributes if kv.key not in _EXCEPTION_LINE_KEYS)
    else:
        # A `tracing::error!` inside a span is an event named after its message, at its own level: labelled
        # `info`, a query for the orchestrator's errors would miss it. The level is the label, not metadata too.
        shown = level or "info"
        record.severity_number = severity_number_of(shown)
        record.severity_text = shown.upper()
        record.body.string_value = event.name
        record.attributes.extend(kv for kv in event.attributes if level is None or kv.key != _EVENT_LEVEL_KEY)
    record.attributes.append(KeyValue(key="span.name", value=AnyValue(string_value=span.name)))
    record.attributes.append(KeyValue(key="event.name", value=AnyValue(string_value=event.name)))


def _add_span_attributes(record: Any, span: Any, span_keys: Sequence[str]) -> None:
    """The span's attributes named in ``span_keys``, under names the record does not have yet: the event's own
    value wins, and of two keys naming one metadata entry (``correlation.id``, ``correlation_id``) the one first
    in ``span_keys`` does (the operator's order, not the instrumentation's), where joining them would make
    ``req-7f3a;req-7f3a``, which a query for ``req-7f3a`` misses."""
    wanted: dict[str, KeyValue] = {}
    for kv in span.attributes:
        if kv.key in span_keys:
            wanted.setdefault(kv.key, kv)  # a key repeated in one span: its first value, as OTLP readers take
    if not wanted:
        return
    taken = {sanitize_label_name(kv.key) for kv in record.attributes}
    for key in span_keys:
        kv = wanted.get(key)
        if kv is not None and (name := sanitize_label_name(key)) not in taken:
            taken.add(name)
            record.attributes.append(kv)


def _part_identical_entries(entries: list[Entry]) -> None:
    """Loki keeps one of two entries of a stream with the same time and line (which is what makes a retried push
    harmless): two distinct records alike but for their metadata (two tasks logging "Executing step" in one
    microsecond, with their own correlation ids) would lose one. Each further variant of a (time, line) moves
    1 ns on per variant; a true duplicate keeps its time, and Loki keeps one, as before. Done once per batch, so
    a retried push repeats its entries exactly. ``entries`` is in time order."""
    if not any(a[0] == b[0] and a[1] == b[1] for a, b in itertools.pairwise(entries)):
        return  # the usual case: one pass, nothing to part
    variants: dict[tuple[int, str], list[list[tuple[str, str]]]] = {}
    for index, (timestamp, line, metadata) in enumerate(entries):
        known = variants.setdefault((timestamp, line), [])
        offset = next((n for n, seen in enumerate(known) if seen == metadata), len(known))
        if offset == len(known):
            known.append(metadata)
        if offset:
            entries[index] = (timestamp + offset, line, metadata)
    entries.sort(key=lambda entry: entry[0])


def exception_line(attributes: Iterable[KeyValue]) -> str:
    """``Type: message`` then the stack trace on the following lines, as a reader of the log expects."""
    found = {kv.key: any_value_text(kv.value) for kv in attributes if kv.key.startswith("exception.")}
    head = ": ".join(part for part in (found.get("exception.type", ""), found.get("exception.message", "")) if part)
    stacktrace = found.get("exception.stacktrace", "")
    return f"{head or 'exception'}\n{stacktrace}" if stacktrace else head or "exception"


# --- log records → streams -------------------------------------------------------------------------------------------


class StreamMapper:
    """Groups the log records of export requests into Loki streams; cheap per record, no per-record objects
    beyond the entry tuple."""

    def __init__(self, label_attributes: list[str], classifier: RetentionClassifier, max_line_bytes: int) -> None:
        self._label_attributes = {attribute: sanitize_label_name(attribute) for attribute in label_attributes}
        self._classifier = classifier
        self._max_line_bytes = max_line_bytes
        self._names: dict[str, str] = {}
        self.truncated_lines = 0
        self.dropped_metadata = 0
        self.truncated_metadata = 0
        self.retimed_entries = 0  # lines whose own time was too far ahead for Loki

    def streams(self, request: ExportLogsServiceRequest) -> Streams:
        streams: Streams = {}
        now = time.time_ns()
        for resource_logs in request.resource_logs:
            service, resource_class, resource_labels, resource_metadata = self._resource(resource_logs.resource)
            for scope_logs in resource_logs.scope_logs:
                scope_metadata = list(resource_metadata)
                if scope_logs.scope.name:
                    scope_metadata.append(("scope_name", scope_logs.scope.name))
                for record in scope_logs.log_records:
                    retention_class = resource_class or self._classifier.of(record.attributes)
                    labels = tuple(
                        sorted(
                            (
                                ("service_name", service),
                                ("level", level_of(record.severity_number, record.severity_text)),
                                ("retention", retention_class),
                                *resource_labels,
                            )
                        )
                    )
                    timestamp = self._timestamp(record, now)
                    entry = (timestamp, self._line(record.body), self._metadata(record, scope_metadata))
                    streams.setdefault(labels, []).append(entry)
        for entries in streams.values():
            entries.sort(key=lambda entry: entry[0])  # Loki wants each stream in time order
            _part_identical_entries(entries)
        return streams

    def _resource(self, resource: Any) -> tuple[str, str | None, list[tuple[str, str]], list[tuple[str, str]]]:
        service = "unknown_service"
        labels: dict[str, str] = {}  # by name: a key repeated in the resource (invalid OTLP) gives one label
        metadata: list[tuple[str, str]] = []
        for kv in resource.attributes:
            key = kv.key
            if key == "service.name":
                service = truncate_utf8(any_value_text(kv.value), MAX_LABEL_VALUE_BYTES) or service
            elif key == RETENTION_ATTRIBUTE:
                continue
            elif key in self._label_attributes:
                value = truncate_utf8(any_value_text(kv.value), MAX_LABEL_VALUE_BYTES)
                if value:
                    labels[self._label_attributes[key]] = value
            else:
                metadata.append((self._name(key), any_value_text(kv.value)))
        has_class = any(kv.key == RETENTION_ATTRIBUTE for kv in resource.attributes)
        return service, self._classifier.of(resource.attributes) if has_class else None, list(labels.items()), metadata

    def _timestamp(self, record: Any, now: int) -> int:
        """The record's time; its observed time, else now, when it has none or one Loki would refuse as more than
        its grace period ahead (a sender's clock running fast): the line is kept at about when it came."""
        latest = now + _FUTURE_GRACE_NS
        if record.time_unix_nano > latest:
            self.retimed_entries += 1
        for timestamp in (record.time_unix_nano, record.observed_time_unix_nano):
            if timestamp and timestamp <= latest:
                return timestamp
        return now

    def _line(self, body: AnyValue) -> str:
        line = any_value_text(body)
        if len(line) * 4 <= self._max_line_bytes:  # cannot be over the limit: skip encoding
            return line
        raw = line.encode()
        if len(raw) <= self._max_line_bytes:
            return line
        self.truncated_lines += 1
        return _cut(raw, self._max_line_bytes)

    def _metadata(self, record: Any, shared: list[tuple[str, str]]) -> list[tuple[str, str]]:
        metadata: list[tuple[str, str]] = []
        # All-zero ids mean none (OTLP): they would link the line to a trace that does not exist.
        if record.trace_id and record.trace_id != _ZERO_TRACE_ID:
            metadata.append(("trace_id", record.trace_id.hex()))
        if record.span_id and record.span_id != _ZERO_SPAN_ID:
            metadata.append(("span_id", record.span_id.hex()))
        if record.severity_text:
            metadata.append(("severity_text", record.severity_text))
        if record.event_name:
            metadata.append(("event_name", record.event_name))
        own = len(metadata)
        for kv in record.attributes:
            if kv.key != RETENTION_ATTRIBUTE:  # the stream's label already
                metadata.append((self._name(kv.key), any_value_text(kv.value)))
        records_end = len(metadata)
        metadata.extend(shared)
        if len({name for name, _ in metadata}) != len(metadata):
            metadata = self._one_of_each_name(metadata, own, records_end)
        return self._within_limits(metadata)

    def _one_of_each_name(self, metadata: list[tuple[str, str]], first: int, end: int) -> list[tuple[str, str]]:
        """One entry per name: the agent's own entries (``metadata[:first]``) win; the record's attributes
        (``metadata[first:end]``) whose keys clean up to the same name (``a.b`` and ``a_b``) are joined with
        ``;``, as the Prometheus exporter joins colliding labels; a resource attribute gives way to the record's
        own. A record attribute losing to one of the agent's entries is counted as dropped metadata."""
        merged = dict(metadata[:first])
        own = set(merged)
        for index in range(first, len(metadata)):
            name, value = metadata[index]
            if name not in merged:
                merged[name] = value
            elif index >= end:
                continue  # the resource's, under a name the record or the agent already gave
            elif name in own:
                self.dropped_metadata += 1
            else:
                merged[name] = f"{merged[name]};{value}"
        return list(merged.items())

    def _within_limits(self, metadata: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if len(metadata) <= MAX_METADATA_ENTRIES:
            characters = sum(len(name) + len(value) for name, value in metadata)
            if characters * 4 <= MAX_METADATA_BYTES:  # cannot be over Loki's limit, which counts bytes: skip encoding
                return metadata
        # In order, so ids and the record's own entries claim the room first; an entry that does not fit waits,
        # not the end cut off: one large attribute must not take the small ones after it along. What room is left
        # then goes to the entries that waited, each cut as a line is (a traceback keeps its beginning).
        kept: list[tuple[str, str] | None] = []
        waiting: list[tuple[int, str, str]] = []
        over_count: list[tuple[str, str]] = []  # fitting, but past the 128 places: they take any a waiting one frees
        room = MAX_METADATA_BYTES
        for name, value in metadata:
            size = len(name.encode()) + len(value.encode())
            if len(kept) >= MAX_METADATA_ENTRIES:
                over_count.append((name, value))
            elif size <= room:
                kept.append((name, value))
                room -= size
            elif _cut_to(value, room - len(name.encode())) is not None:
                waiting.append((len(kept), name, value))  # its place among the entries, held for it
                kept.append(None)
            else:
                self.dropped_metadata += 1
        for index, name, value in waiting:
            cut = _cut_to(value, room - len(name.encode()))
            if cut is None:  # the entries after it took the room: its place goes to one past the 128 that fits
                kept[index] = None
                self.dropped_metadata += 1
                continue
            kept[index] = (name, cut)
            room -= len(name.encode()) + len(cut.encode())
            self.truncated_metadata += 1
        result = [entry for entry in kept if entry is not None]
        for name, value in over_count:
            size = len(name.encode()) + len(value.encode())
            if len(result) < MAX_METADATA_ENTRIES and size <= room:
                result.append((name, value))
                room -= size
            else:
                self.dropped_metadata += 1
        return result

    def _name(self, key: str) -> str:
        name = self._names.get(key)
        if name is None:
            if len(self._names) > 10_000:  # attribute keys are few; never let a flood of odd ones grow this
                self._names.clear()
            name = self._names[key] = sanitize_label_name(key)
        return name


_SHORTEST_CUT_VALUE = 256  # bytes kept of a value cut to fit: less than this says too little to be worth an entry


def _cut_to(value: str, room: int) -> str | None:
    """``value`` cut to ``room`` bytes as a line is; None when too little of it would be left."""
    raw = value.encode()
    if room - len(_marker(len(raw))) < _SHORTEST_CUT_VALUE:
        return None
    return _cut(raw, room)


def _cut(raw: bytes, limit: int) -> str:
    """``raw`` (UTF-8) within ``limit`` bytes, cut at a character boundary and ending with ``…[truncated N
    bytes]``. The marker names the bytes really removed; its longest form (all of them) sets the room it takes."""
    kept = raw[: limit - len(_marker(len(raw)))].decode("utf-8", "ignore")
    return f"{kept}…[truncated {len(raw) - len(kept.encode())} bytes]"


def _marker(removed: int) -> bytes:
    return f"…[truncated {removed} bytes]".encode()
