"""Per-signal facts about the OTLP export messages: types, item counts, id validation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from agent.component import Signal

TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8
# The fewest bytes a span with valid ids takes in a request: its own tag and length (2), its trace id (2 + 16) and
# span id (2 + 8). OTLP/JSON spells the ids in hex, so a JSON span takes more.
MIN_VALID_SPAN_BYTES = 30
DENSE_CHECK_ITEMS = 10_000


def count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def count_log_records(request: ExportLogsServiceRequest) -> int:
    return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)


def count_data_points(request: ExportMetricsServiceRequest) -> int:
    total = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


_ZERO_TRACE_ID = bytes(TRACE_ID_BYTES)
_ZERO_SPAN_ID = bytes(SPAN_ID_BYTES)


def _check_span_ids(spans: Sequence[Message]) -> list[int]:
    """Indexes of spans whose ids cannot be right; one tight loop, as this runs for every span received.

    An all-zero parent span id is cleared on the way: it means "no parent" (pdata, and so a Collector, reads it as
    absent; some SDKs write it), and every later stage tells a root span by its empty parent id.
    """
    bad = []
    for index, span in enumerate(spans):
        trace_id, span_id, parent_id = span.trace_id, span.span_id, span.parent_span_id
        if (
            len(trace_id) != TRACE_ID_BYTES
            or len(span_id) != SPAN_ID_BYTES
            or trace_id == _ZERO_TRACE_ID
            or span_id == _ZERO_SPAN_ID
            or len(parent_id) not in (0, SPAN_ID_BYTES)
        ):
            bad.append(index)
            continue
        if parent_id == _ZERO_SPAN_ID:
            span.ClearField("parent_span_id")
        links = span.links
        if links and not all(_context_ids_valid(link) for link in links):
            bad.append(index)  # a backend decoding it strictly (pdata) would reject the whole export for it
    return bad


def _context_ids_valid(message: Message) -> bool:
    """The trace and span ids of a link, a log record or an exemplar: each empty or of its length. Absent ids are
    valid: the spec has SDKs record a link with an invalid context when it has attributes, a log record or an
    exemplar may have none, and senders built on the Collector's pdata (a Collector, Alloy, Jaeger v2) leave an
    all-zero id out of the wire."""
    return len(message.trace_id) in (0, TRACE_ID_BYTES) and len(message.span_id) in (0, SPAN_ID_BYTES)


def _remove_at(items: Any, bad: list[int]) -> int:
    """Remove ``items[i]`` for each index in ``bad`` (a repeated message field); return how many."""
    if len(bad) == len(items):  # a request of items without ids: no set of millions of indexes
        del items[:]
    elif bad:
        skip = set(bad)
        keep = [item for index, item in enumerate(items) if index not in skip]
        del items[:]
        items.extend(keep)
    return len(bad)


def reject_invalid_spans(request: ExportTraceServiceRequest) -> int:
    """Remove spans whose ids cannot be right (trace id not 16 non-zero bytes, span id not 8); return how many.
    An all-zero parent span id is cleared (the span is a root)."""
    return sum(
        _remove_at(ss.spans, _check_span_ids(ss.spans)) for rs in request.resource_spans for ss in rs.scope_spans
    )


def reject_invalid_log_records(request: ExportLogsServiceRequest) -> int:
    """Remove log records with a trace id that is not 16 bytes or a span id that is not 8; return how many."""
    rejected = 0
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            records = sl.log_records
            rejected += _remove_at(records, [i for i, record in enumerate(records) if not _context_ids_valid(record)])
    return rejected


def reject_invalid_data_points(request: ExportMetricsServiceRequest) -> int:
    """Remove data points with an exemplar whose trace id is not empty or 16 bytes, or span id not empty or 8;
    return how many. A backend decoding strictly (pdata) would reject the whole export for one, and the exporter
    merges requests of many senders. Points without exemplars (most) cost one attribute read."""
    rejected = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is None or kind == "summary":  # summary points carry no exemplars
                    continue
                points = getattr(metric, kind).data_points
                bad = [
                    index
                    for index, point in enumerate(points)
                    if (exemplars := point.exemplars) and not all(_context_ids_valid(e) for e in exemplars)
                ]
                rejected += _remove_at(points, bad)
    return rejected


@dataclass(frozen=True)
class SignalSpec:
    signal: Signal
    request_type: type[Message]
    response_type: type[Message]
    partial_success_type: type[Message]
    rejected_field: str
    item_name: str
    count_items: Callable[[Message], int]
    reject_invalid: Callable[[Message], int]
    http_path: str
    grpc_service: str
    invalid_reason: str = ""
    min_valid_item_bytes: int = 0  # 0: an item can be valid however small (a log record, a data point)

    def too_dense(self, items: int, size: int) -> str | None:
        """Why a request of ``size`` bytes cannot hold ``items`` valid items, or None.

        Such a request (16 MiB of 2-byte spans: 8 million of them) would cost seconds of id checks on the event
        loop and gigabytes of memory only to reject nearly every item one by one. A few thousand items cost little
        to check, and their invalid ones are rejected one by one, through partial success, as in any request."""
        if not self.min_valid_item_bytes or items <= DENSE_CHECK_ITEMS or items * self.min_valid_item_bytes <= size:
            return None
        return (
            f"{items} {self.item_name} in {size} bytes: one with valid ids takes at least "
            f"{self.min_valid_item_bytes} bytes, so at least {items - size // self.min_valid_item_bytes} of them "
            f"have none; the request is refused whole"
        )

    def response(self, rejected: int = 0, message: str = "") -> Message:
        """An export response; ``partial_success`` stays unset on full success, as the spec asks."""
        response = self.response_type()
        if rejected or message:
            partial = self.partial_success_type(error_message=message)
            setattr(partial, self.rejected_field, rejected)
            response.partial_success.CopyFrom(partial)
        return response


SPECS: dict[Signal, SignalSpec] = {
    Signal.TRACES: SignalSpec(
        Signal.TRACES,
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
        ExportTracePartialSuccess,
        "rejected_spans",
        "spans",
        count_spans,
        reject_invalid_spans,
        "/v1/traces",
        "opentelemetry.proto.collector.trace.v1.TraceService",
        "trace id must be 16 bytes (not all zero) and span id 8 bytes, in the span and in its links",
        MIN_VALID_SPAN_BYTES,
    ),
    Signal.METRICS: SignalSpec(
        Signal.METRICS,
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
        ExportMetricsPartialSuccess,
        "rejected_data_points",
        "data points",
        count_data_points,
        reject_invalid_data_points,
        "/v1/metrics",
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        "an exemplar's trace id must be empty or 16 bytes and its span id empty or 8 bytes",
    ),
    Signal.LOGS: SignalSpec(
        Signal.LOGS,
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
        ExportLogsPartialSuccess,
        "rejected_log_records",
        "log records",
        count_log_records,
        reject_invalid_log_records,
        "/v1/logs",
        "opentelemetry.proto.collector.logs.v1.LogsService",
        "trace id must be empty or 16 bytes and span id empty or 8 bytes",
    ),
}
