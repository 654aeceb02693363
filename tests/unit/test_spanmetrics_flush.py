"""The periodic span-metrics flush builds its request in slices, so thousands of series never stall the loop."""

from __future__ import annotations

import asyncio
import logging

import pytest
from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import agent.connectors.spanmetrics.connector as connector_module
from agent.component import CreateSettings, Kind, Signal
from agent.config.service import ServiceConfig
from agent.connectors.spanmetrics.config import SpanMetricsConfig
from agent.connectors.spanmetrics.connector import SpanMetricsConnector
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.workload import to_request


class Capture:
    def __init__(self) -> None:
        self.batches: list[ExportMetricsServiceRequest] = []

    def consume(self, batch: Message) -> None:
        self.batches.append(batch)  # type: ignore[arg-type]


def make(capture: Capture) -> SpanMetricsConnector:
    settings = CreateSettings(
        "spanmetrics", Kind.CONNECTOR, logging.getLogger("test.flush"), SelfMetrics(), ServiceConfig(), {}
    )
    return SpanMetricsConnector(SpanMetricsConfig(), settings, {Signal.METRICS: capture})


def spans(names: range, prefix: str = "op") -> Message:
    return to_request({"svc": [Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name=f"{prefix}{i}") for i in names]})


def points(request: ExportMetricsServiceRequest, name: str) -> dict[str, float]:
    metric = next(m for m in request.resource_metrics[0].scope_metrics[0].metrics if m.name == name)
    found = {}
    for point in metric.sum.data_points:
        labels = {kv.key: kv.value.string_value for kv in point.attributes}
        found[labels["span.name"]] = point.as_double
    return found


async def test_the_periodic_flush_lets_other_coroutines_run_while_it_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connector_module, "FLUSH_SLICE_SECONDS", 0.0)  # pause every 32 points
    capture = Capture()
    connector = make(capture)
    connector.consume(spans(range(1000)))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while not capture.batches:
            ticks += 1
            await asyncio.sleep(0)

    await asyncio.gather(connector._flush_in_slices(), ticker())
    assert ticks > 10  # the ticker ran between slices, not only once the request was sent
    sent = points(capture.batches[0], "orchestrator.spans")
    assert len(sent) == 1000 and set(sent.values()) == {1.0}


async def test_spans_recorded_during_a_sliced_flush_are_in_it_or_in_the_next_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connector_module, "FLUSH_SLICE_SECONDS", 0.0)
    capture = Capture()
    connector = make(capture)
    connector.consume(spans(range(500)))
    consumed_during = 0

    async def keep_consuming() -> None:
        nonlocal consumed_during
        while not capture.batches:
            connector.consume(spans(range(0, 500, 7)))  # existing series
            if consumed_during < 100:  # and new ones, well below the cardinality limit
                connector.consume(spans(range(consumed_during, consumed_during + 1), prefix="new"))
            consumed_during += 1
            await asyncio.sleep(0)

    await asyncio.gather(connector._flush_in_slices(), keep_consuming())
    during = points(capture.batches[0], "orchestrator.spans")
    assert set(during) >= {f"op{i}" for i in range(500)}
    assert all(1.0 <= value <= 1.0 + consumed_during for value in during.values())
    connector.flush()
    after = points(capture.batches[1], "orchestrator.spans")
    assert after["op0"] == 1.0 + consumed_during and after["op1"] == 1.0
    assert {f"new{i}" for i in range(min(consumed_during, 100))} <= set(after)
    assert consumed_during > 0


def test_a_series_made_during_a_sliced_flush_keeps_its_start_time_in_later_flushes() -> None:
    """Its first point is stamped with the flush's time, earlier than the series; its start was clamped to that
    in the point only, so the next flush sent a later start, which the Prometheus exporter reads as a restart
    (and, in a new series' zero window, adds the first run's total again: a rare error type counted twice)."""
    capture = Capture()
    connector = make(capture)
    connector.consume(spans(range(1)))
    paused = ExportMetricsServiceRequest()
    flush = connector._fill(paused)
    next(flush)  # the flush took its time and paused after its first slice
    connector.consume(spans(range(1), prefix="new"))
    for _ in flush:
        pass
    later = connector.collect()

    def start_of_new(request: ExportMetricsServiceRequest) -> int:
        metric = next(m for m in request.resource_metrics[0].scope_metrics[0].metrics if m.name == "orchestrator.spans")
        [point] = [p for p in metric.sum.data_points if any(kv.value.string_value == "new0" for kv in p.attributes)]
        assert point.start_time_unix_nano <= point.time_unix_nano
        return point.start_time_unix_nano

    assert start_of_new(later) == start_of_new(paused)
