"""The ingest queue: senders are answered at once, pipelines are fed in order, refusals become back-pressure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
from google.protobuf.message import Message

from agent.component import CreateSettings, Kind, PermanentError, Refused, Signal
from agent.config.service import IngestConfig, ServiceConfig
from agent.otlp.signals import count_spans
from agent.pipeline import ingest
from agent.pipeline.ingest import IngestQueue
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.sinks import BatchSink, RefusingSink
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


async def test_a_queue_takes_batches_up_to_exactly_its_bound() -> None:
    first, second = batches(2)
    queue, _ = queue_for(BatchSink(), capacity=count_spans(first) + count_spans(second))
    queue.consume(first)
    queue.consume(second)  # fills it to the item, not one past
    with pytest.raises(Refused):
        queue.consume(batches(1)[0])


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


async def test_a_batch_refused_for_long_is_offered_again_less_and_less_often() -> None:
    """Each offer runs the stages before the refusing one again (redaction scans every text): every 50 ms for a
    whole outage kept a core busy with a few large batches held."""
    pipelines = RefuseThenAccept(refusals=1_000_000)
    queue, _ = queue_for(pipelines)
    await queue.start()
    queue.consume(batches(1)[0])
    await asyncio.sleep(2.0)
    offers = 1_000_000 - pipelines.refusals
    await queue.shutdown(time.monotonic() + 0.1)
    assert 3 <= offers <= 12  # 50 ms doubling to 400 ms; every 50 ms would be 40


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


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (PermanentError("bad data"), "rejected"),  # rejected for good
        (RuntimeError("processor bug"), "RuntimeError"),  # a processor bug must not stop ingestion
    ],
)
async def test_a_batch_the_pipelines_reject_or_fail_on_is_counted_and_the_rest_flow(
    error: Exception, reason: str
) -> None:
    class FailFirst(BatchSink):
        def consume(self, batch: Message) -> None:
            if not hasattr(self, "seen"):
                self.seen = True
                raise error
            super().consume(batch)

    sink = FailFirst()
    queue, metrics = queue_for(sink)
    await queue.start()
    sent = batches(3)
    for batch in sent:
        queue.consume(batch)
    await queue.shutdown(time.monotonic() + 5)
    assert sink.batches == sent[1:]
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_ingest_dropped_items_total", reason=reason) == count_spans(sent[0])
    assert metric_value(text, "otel_sidecar_ingest_dropped_items_total", reason="shutdown_timeout") == 0


async def test_a_refused_batch_that_was_finally_taken_leaves_the_next_refusal_the_shortest_pause() -> None:
    """The pause doubles while a batch stays refused (up to 400 ms); once it is taken, the next refused batch
    waits 50 ms again, not the 400 ms an earlier outage reached."""
    pipelines = RefuseThenAccept(refusals=4)  # pauses of 50, 100, 200 and 400 ms, then taken
    queue, _ = queue_for(pipelines)
    await queue.start()
    first, second = batches(2)
    try:
        queue.consume(first)
        await until(lambda: pipelines.batches == [first])
        pipelines.refusals = 10**9
        queue.consume(second)
        lane = queue.queue._lanes[Signal.TRACES]
        await until(lambda: lane.refusal is not None)  # the second batch's first refusal
        assert lane.pause == ingest._REFUSAL_PAUSE  # 50 ms; 800 ms (capped at 400) had the pause not been reset
    finally:
        await queue.shutdown(time.monotonic() + 0.2)


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


# --- signals are independent: one signal's refusing pipelines do not refuse the others -----------------------------


def a_log(records: int = 1) -> Message:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

    scope = ScopeLogs(log_records=[LogRecord(time_unix_nano=n + 1) for n in range(records)])
    return ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[scope])])


def a_metric() -> Message:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics

    metric = Metric(name="g", gauge=Gauge(data_points=[NumberDataPoint(as_int=1, time_unix_nano=1)]))
    return ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[metric])])]
    )


def three_signal_queue(
    logs: object, traces: object, metrics_sink: object, config: IngestConfig | None = None
) -> tuple[IngestQueue, SelfMetrics]:
    metrics = SelfMetrics()
    settings = CreateSettings("otlp", Kind.RECEIVER, logging.getLogger("t"), metrics, ServiceConfig(), {})
    downstream = {Signal.TRACES: traces, Signal.METRICS: metrics_sink, Signal.LOGS: logs}
    return IngestQueue(settings, downstream, config or IngestConfig()), metrics  # type: ignore[arg-type]


async def until(condition: Callable[[], bool]) -> None:
    """Let the worker run until ``condition`` holds (no time bound asserted: the test's own timeout is the limit)."""
    while not condition():
        await asyncio.sleep(0.01)


class Backend:
    """A pipeline whose exporter queue is full (its backend is down) until ``up`` is set."""

    def __init__(self) -> None:
        self.up = False
        self.offered = 0
        self.batches: list[Message] = []

    def consume(self, batch: Message) -> None:
        self.offered += 1
        if not self.up:
            raise Refused("sending queue is full")
        self.batches.append(batch)


async def test_a_signal_whose_pipelines_refuse_does_not_hold_up_the_other_signals() -> None:
    """Loki is down and the logs exporter's queue is full: logs are refused, traces and metrics flow, as in the
    Collector, where pipelines are independent; the held logs go on once Loki is back, in order."""
    logs, traces, metric_sink = Backend(), BatchSink(), BatchSink()
    queue, metrics = three_signal_queue(logs, traces, metric_sink)
    entrances = queue.consumers()
    await queue.start()
    held = a_log(records=3)
    entrances[Signal.LOGS].consume(held)  # an empty lane takes it; its pipeline refuses it
    await until(lambda: logs.offered > 0)

    sent_spans = batches(2)
    for batch in sent_spans:
        entrances[Signal.TRACES].consume(batch)
    sent_metric = a_metric()
    entrances[Signal.METRICS].consume(sent_metric)
    with pytest.raises(Refused, match="sending queue is full"):  # retryable, with the logs pipeline's reason
        entrances[Signal.LOGS].consume(a_log())
    await until(lambda: len(traces.batches) == 2 and len(metric_sink.batches) == 1)  # fed while logs wait
    assert traces.batches == sent_spans
    assert metric_sink.batches == [sent_metric]
    await until(lambda: logs.offered > 1)  # and the held log is offered again

    logs.up = True
    await until(lambda: logs.batches == [held])
    later = a_log()
    entrances[Signal.LOGS].consume(later)
    await queue.shutdown(time.monotonic() + 5)
    assert logs.batches == [held, later]
    assert metric_value(metrics.render().decode(), "otel_sidecar_ingest_dropped_items_total") == 0


async def post(url: str, body: Message) -> int:
    import aiohttp

    headers = {"Content-Type": "application/x-protobuf"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body.SerializeToString(), headers=headers) as r,
    ):
        return r.status


async def test_a_refusing_logs_pipeline_refuses_logs_only_and_the_receiver_counts_them() -> None:
    """Over HTTP: logs get 503 and are counted as back-pressure; traces and metrics get 200."""
    from agent.config.schema import HostPort
    from agent.receivers.otlp import GrpcConfig, HttpConfig, OtlpReceiver, OtlpReceiverConfig
    from tests.helpers import free_port

    logs, traces, metric_sink = RefusingSink(), BatchSink(), BatchSink()
    queue, metrics = three_signal_queue(logs, traces, metric_sink)
    http_port = free_port()
    config = OtlpReceiverConfig(
        grpc=GrpcConfig(endpoint=HostPort(f"127.0.0.1:{free_port()}")),
        http=HttpConfig(endpoint=HostPort(f"127.0.0.1:{http_port}")),
    )
    settings = CreateSettings("otlp", Kind.RECEIVER, logging.getLogger("t"), metrics, ServiceConfig(), {})
    receiver = OtlpReceiver(config, settings, queue.consumers())
    await queue.start()
    await receiver.start()
    url = f"http://127.0.0.1:{http_port}/v1"
    try:
        assert await post(f"{url}/logs", a_log()) == 200
        await until(lambda: logs.offered > 0)
        assert await post(f"{url}/logs", a_log(records=2)) == 503
        span_batch = batches(1)[0]
        assert await post(f"{url}/traces", span_batch) == 200
        assert await post(f"{url}/metrics", a_metric()) == 200
    finally:
        await receiver.shutdown(time.monotonic() + 1)
        await queue.shutdown(time.monotonic() + 0.2)
    text = metrics.render().decode()
    refused = "otel_sidecar_receiver_refused_items_total"
    assert metric_value(text, refused, signal="logs", reason="backpressure") == 2
    assert metric_value(text, refused, signal="traces") == 0
    assert metric_value(text, refused, signal="metrics") == 0
    accepted = "otel_sidecar_receiver_accepted_items_total"
    assert metric_value(text, accepted, signal="traces") == count_spans(span_batch)
    assert len(traces.batches) == 1
    assert len(metric_sink.batches) == 1


async def test_a_memory_limiter_refusal_refuses_every_signal() -> None:
    """Memory is the process's: while the limiter refuses one signal's batch, every signal is refused, even one
    whose pipeline has no limiter, as before signals were independent (the first batch into an empty queue is
    taken, every later one refused)."""
    from agent.processors.memory_limiter.processor import MemoryLimiterProcessor

    class Limiter:
        refusing = True

    limiter = Limiter()
    settings = CreateSettings(
        "memory_limiter", Kind.PROCESSOR, logging.getLogger("t"), SelfMetrics(), ServiceConfig(), {}
    )
    traces = BatchSink()
    limited = MemoryLimiterProcessor(limiter, settings, Signal.TRACES, traces)  # type: ignore[arg-type]
    logs, metric_sink = BatchSink(), BatchSink()
    queue, _ = three_signal_queue(logs, limited, metric_sink)
    entrances = queue.consumers()
    await queue.start()
    first_spans, later_spans = batches(2)
    entrances[Signal.TRACES].consume(first_spans)
    await until(
        lambda: metric_value(settings.metrics.render().decode(), "otel_sidecar_memory_limiter_refused_items_total") > 0
    )
    for signal, batch in ((Signal.TRACES, later_spans), (Signal.LOGS, a_log()), (Signal.METRICS, a_metric())):
        with pytest.raises(Refused, match="high memory usage"):
            entrances[signal].consume(batch)
    # A receiver asks before it reads or decodes a request: decoding one only to refuse it would about double what
    # each request in flight holds, while memory is short (a cgroup OOM kill at 64 senders of 2.5 MB requests).
    from agent.receivers.otlp.core import ExportHandler, Failure, RequestFailed

    receiver = CreateSettings("otlp", Kind.RECEIVER, logging.getLogger("t"), SelfMetrics(), ServiceConfig(), {})
    handler = ExportHandler(receiver, entrances, retry_after=1.0)
    with pytest.raises(RequestFailed) as refused:
        handler.refuse_if_short_of_memory(Signal.LOGS, "grpc")
    assert refused.value.failure is Failure.REFUSED and "high memory usage" in refused.value.message
    failed = "otel_sidecar_receiver_failed_requests_total"
    assert metric_value(receiver.metrics.render().decode(), failed, signal="logs", reason="backpressure") == 1

    limiter.refusing = False
    await until(lambda: traces.batches == [first_spans])
    handler.refuse_if_short_of_memory(Signal.LOGS, "grpc")  # memory is back: nothing to refuse
    later_log = a_log()
    entrances[Signal.LOGS].consume(later_log)
    await queue.shutdown(time.monotonic() + 5)
    assert logs.batches == [later_log]


async def test_a_burst_held_by_a_refusing_signal_leaves_the_other_signals_their_share_of_the_bounds() -> None:
    """Traces filled the queue just before their backend went down: the held batches counted against every
    signal, so logs were refused as "queue full" for the whole outage though their own pipeline was idle."""
    traces, logs, metric_sink = Backend(), BatchSink(), BatchSink()
    metrics = SelfMetrics()
    settings = CreateSettings("otlp", Kind.RECEIVER, logging.getLogger("t"), metrics, ServiceConfig(), {})
    downstream = {Signal.TRACES: traces, Signal.METRICS: metric_sink, Signal.LOGS: logs}
    queue = IngestQueue(settings, downstream, IngestConfig(queue_items=600))  # type: ignore[arg-type]
    entrances = queue.consumers()
    burst = batches(60)  # 484 spans: the queue is nearly full
    for batch in burst:
        entrances[Signal.TRACES].consume(batch)
    await queue.start()
    await until(lambda: traces.offered > 0)  # the traces pipeline refuses: the burst stays held
    with pytest.raises(Refused):
        entrances[Signal.TRACES].consume(burst[0])  # more traces: refused, with their pipeline's reason
    sent = [a_log(records=150) for _ in range(4)]
    for log in sent:
        entrances[Signal.LOGS].consume(log)  # each within a third of the bound, taken before the next comes
        await until(lambda: not queue._lanes[Signal.LOGS].entries)
    await until(lambda: len(logs.batches) == 4)
    assert logs.batches == sent
    with pytest.raises(Refused, match="is full"):
        for _ in range(10):  # beyond their share, logs are refused again: the memory stays bounded
            entrances[Signal.LOGS].consume(a_log(records=150))
    traces.up = True
    await queue.shutdown(time.monotonic() + 5)


async def traces_held_by_their_refusing_backend(config: IngestConfig, size: int) -> tuple[IngestQueue, BatchSink]:
    """A queue whose traces lane holds one batch of ``size`` bytes its pipeline refuses; logs flow to the sink."""
    traces, logs = Backend(), BatchSink()
    queue, _ = three_signal_queue(logs, traces, BatchSink(), config)
    queue.consumers()[Signal.TRACES].consume_sized(batches(1)[0], size)  # type: ignore[attr-defined]
    await queue.start()
    await until(lambda: traces.offered > 0)
    return queue, logs


async def test_beside_a_refusing_signal_another_signals_share_of_the_bounds_counts_bytes_too() -> None:
    """1 MiB of queue, 900 KiB held by refused traces: logs may hold a third of the bytes (341 KiB), not more."""
    queue, logs = await traces_held_by_their_refusing_backend(IngestConfig(queue_mib=1), 900 * 1024)
    entrance = queue.consumers()[Signal.LOGS]
    taken = [a_log(), a_log()]
    try:
        entrance.consume_sized(taken[0], 200 * 1024)  # type: ignore[attr-defined]
        # Before the worker runs: the logs lane holds 200 KiB, a handful of items.
        with pytest.raises(Refused, match="is full"):
            entrance.consume_sized(a_log(), 200 * 1024)  # type: ignore[attr-defined]
        entrance.consume_sized(taken[1], 100 * 1024)  # type: ignore[attr-defined]
        await until(lambda: len(logs.batches) == 2)
    finally:
        await queue.shutdown(time.monotonic() + 0.1)
    assert logs.batches == taken


async def test_beside_a_refusing_signal_an_empty_lane_takes_a_batch_larger_than_its_share() -> None:
    """A batch larger than a third of the bounds could otherwise never be taken while the traces are held."""
    queue, logs = await traces_held_by_their_refusing_backend(IngestConfig(queue_mib=1), 900 * 1024)
    large = a_log()
    entrance = queue.consumers()[Signal.LOGS]
    try:
        entrance.consume_sized(large, 500 * 1024)  # type: ignore[attr-defined]
        with pytest.raises(Refused, match="is full"):  # taken alone: the lane now holds more than its share
            entrance.consume_sized(a_log(), 1024)  # type: ignore[attr-defined]
        await until(lambda: logs.batches == [large])
    finally:
        await queue.shutdown(time.monotonic() + 0.1)
