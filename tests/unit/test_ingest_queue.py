"""The ingest queue: senders are answered at once, pipelines are fed in order, refusals become back-pressure."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from google.protobuf.message import Message

from agent.component import CreateSettings, Kind, PermanentError, Refused, Signal
from agent.config.service import IngestConfig, ServiceConfig
from agent.otlp.signals import count_spans
from agent.pipeline.ingest import IngestQueue
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.sinks import BatchSink
from agent.testing.workload import Workload
from tests.helpers import metric_value


class Ingest:
    """An ingest queue with the traces entrance a receiver would be given."""

    def __init__(self, downstream: object, capacity: int, metrics: SelfMetrics) -> None:
        settings = CreateSettings("otlp", Kind.RECEIVER, logging.getLogger("t"), metrics, ServiceConfig(), {})
        self.queue = IngestQueue(settings, {Signal.TRACES: downstream}, IngestConfig(queue_items=capacity))  # type: ignore[dict-item]
        self.entrance = self.queue.consumers()[Signal.TRACES]

    def consume(self, batch: Message) -> None:
        self.entrance.consume(batch)

    async def start(self) -> None:
        await self.queue.start()

    async def shutdown(self, deadline: float) -> None:
        await self.queue.shutdown(deadline)


def queue_for(downstream: object, capacity: int = 10_000) -> tuple[Ingest, SelfMetrics]:
    metrics = SelfMetrics()
    return Ingest(downstream, capacity, metrics), metrics


def batches(n: int) -> list[Message]:
    return [request for request, _ in Workload(seed=5).requests(n)]


class RefuseThenAccept:
    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.batches: list[Message] = []

    def consume(self, batch: Message) -> None:
        if self.refusals:
            self.refusals -= 1
            raise Refused("sampler buffer full")
        self.batches.append(batch)


async def test_batches_are_taken_at_once_and_reach_the_pipelines_in_order() -> None:
    sink = BatchSink()
    queue, _ = queue_for(sink)
    await queue.start()
    sent = batches(20)
    for batch in sent:
        queue.consume(batch)
    assert sink.batches == []  # the sender was answered before any pipeline work
    await queue.shutdown(time.monotonic() + 5)
    assert sink.batches == sent


async def test_a_full_queue_refuses_so_that_the_sender_retries() -> None:
    sent = batches(3)
    queue, _ = queue_for(BatchSink(), capacity=count_spans(sent[0]) + 1)
    queue.consume(sent[0])
    with pytest.raises(Refused):
        queue.consume(sent[1])


async def test_a_batch_larger_than_the_queue_is_still_taken_when_the_queue_is_empty() -> None:
    queue, _ = queue_for(BatchSink(), capacity=1)
    queue.consume(batches(1)[0])


async def test_the_queue_is_also_bounded_by_the_bytes_received() -> None:
    """A few requests carrying large prompts: far from the item bound, stopped by the byte bound."""
    settings = CreateSettings("otlp", Kind.RECEIVER, logging.getLogger("t"), SelfMetrics(), ServiceConfig(), {})
    queue = IngestQueue(settings, {Signal.TRACES: BatchSink()}, IngestConfig(queue_mib=1))  # type: ignore[dict-item]
    entrance = queue.consumers()[Signal.TRACES]
    one, two, three = batches(3)
    entrance.consume_sized(one, 600 * 1024)  # type: ignore[attr-defined]
    with pytest.raises(Refused, match="full"):
        entrance.consume_sized(two, 600 * 1024)  # type: ignore[attr-defined]
    entrance.consume_sized(three, 100 * 1024)  # type: ignore[attr-defined]


async def test_refusals_by_the_pipelines_hold_the_batch_until_taken_and_nothing_is_lost() -> None:
    pipelines = RefuseThenAccept(refusals=3)
    queue, _ = queue_for(pipelines)
    await queue.start()
    sent = batches(5)
    for batch in sent:
        queue.consume(batch)
    await asyncio.sleep(0.3)
    await queue.shutdown(time.monotonic() + 5)
    assert pipelines.batches == sent


async def test_while_the_pipelines_refuse_new_batches_are_refused_at_once_with_their_reason() -> None:
    class Switch:
        def __init__(self) -> None:
            self.refusing = True
            self.batches: list[Message] = []

        def consume(self, batch: Message) -> None:
            if self.refusing:
                raise Refused("data refused due to high memory usage")
            self.batches.append(batch)

    pipelines = Switch()
    queue, _ = queue_for(pipelines)
    await queue.start()
    first, second, third = batches(3)
    queue.consume(first)
    await asyncio.sleep(0.01)  # the worker offers it and is refused
    # Queueing more would only grow memory the pipelines are refusing to take (a memory limiter) or to buffer.
    with pytest.raises(Refused, match="high memory usage"):
        queue.consume(second)
    pipelines.refusing = False
    await asyncio.sleep(0.2)  # the worker's next offer is taken
    queue.consume(third)
    await queue.shutdown(time.monotonic() + 5)
    assert pipelines.batches == [first, third]


async def test_a_batch_the_pipelines_reject_for_good_is_counted_and_the_rest_flow() -> None:
    class RejectFirst(BatchSink):
        def consume(self, batch: Message) -> None:
            if not hasattr(self, "seen"):
                self.seen = True
                raise PermanentError("bad data")
            super().consume(batch)

    sink = RejectFirst()
    queue, metrics = queue_for(sink)
    await queue.start()
    sent = batches(3)
    for batch in sent:
        queue.consume(batch)
    await queue.shutdown(time.monotonic() + 5)
    assert sink.batches == sent[1:]
    dropped = metric_value(metrics.render().decode(), "otel_sidecar_ingest_dropped_items_total", reason="rejected")
    assert dropped == count_spans(sent[0])


async def test_what_the_pipelines_never_take_before_the_deadline_is_counted() -> None:
    pipelines = RefuseThenAccept(refusals=10**9)
    queue, metrics = queue_for(pipelines)
    await queue.start()
    sent = batches(2)
    for batch in sent:
        queue.consume(batch)
    await queue.shutdown(time.monotonic() + 0.2)
    text = metrics.render().decode()
    expected = sum(count_spans(b) for b in sent)
    assert metric_value(text, "otel_sidecar_ingest_dropped_items_total", reason="shutdown_timeout") == expected
    with pytest.raises(Refused):
        queue.consume(sent[0])


async def test_signals_reach_their_pipelines_in_the_order_they_arrived() -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

    order: list[str] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def consume(self, batch: Message) -> None:
            order.append(self.name)

    metrics = SelfMetrics()
    settings = CreateSettings("otlp", Kind.RECEIVER, logging.getLogger("t"), metrics, ServiceConfig(), {})
    queue = IngestQueue(settings, {Signal.TRACES: Recorder("spans"), Signal.LOGS: Recorder("log")}, IngestConfig())
    entrances = queue.consumers()
    await queue.start()
    log = ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[LogRecord()])])])
    entrances[Signal.TRACES].consume(batches(1)[0])
    entrances[Signal.LOGS].consume(log)
    entrances[Signal.TRACES].consume(batches(1)[0])
    await queue.shutdown(time.monotonic() + 5)
    assert order == ["spans", "log", "spans"]


class SizedSink:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def consume(self, batch: Message) -> None:
        raise AssertionError("a stage that takes sizes is given them")

    def consume_sized(self, batch: Message, size: int) -> None:
        self.sizes.append(size)


async def test_the_size_a_receiver_measured_reaches_stages_that_take_it() -> None:
    sink = SizedSink()
    queue, _ = queue_for(sink)
    await queue.start()
    queue.entrance.consume_sized(batches(1)[0], 12_345)
    await queue.shutdown(time.monotonic() + 5)
    assert sink.sizes == [12_345]
