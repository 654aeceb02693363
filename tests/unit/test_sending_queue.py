from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import pytest
from google.protobuf.message import Message

from agent.component import CreateSettings, Kind, Refused, Signal
from agent.config.schema import Duration
from agent.config.service import ServiceConfig
from agent.exporters._helper.queue import SendingQueue, SendingQueueConfig
from agent.exporters._helper.retry import PermanentExportError, RetryableError, RetryConfig
from agent.otlp.signals import ExportTraceServiceRequest, count_spans
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.workload import Workload
from tests.helpers import metric_value


def settings(metrics: SelfMetrics) -> CreateSettings:
    return CreateSettings("test", Kind.EXPORTER, logging.getLogger("test"), metrics, ServiceConfig(), {})


def batches(n: int) -> list[Message]:
    return [request for request, _ in Workload(seed=9).requests(n)]


async def send_two_batches(metrics: SelfMetrics, push: Any) -> tuple[str, int, int]:
    """Two batches through a one-worker queue pushing with ``push``, to the end; the metrics and each one's spans."""
    sent = batches(2)
    queue = SendingQueue(settings(metrics), SendingQueueConfig(num_consumers=1), push)
    await queue.start()
    for batch in sent:
        queue.offer(Signal.TRACES, batch)
    await queue.shutdown(time.monotonic() + 5)
    first, second = (count_spans(batch) for batch in sent)
    return metrics.render().decode(), first, second


async def test_a_full_queue_refuses_without_taking_the_batch_and_counts_it() -> None:
    metrics = SelfMetrics()
    gate = asyncio.Event()
    pushed: list[Message] = []

    async def push(signal: Signal, batch: Message) -> None:
        await gate.wait()
        pushed.append(batch)

    queue = SendingQueue(settings(metrics), SendingQueueConfig(queue_size=2, num_consumers=1), push)
    await queue.start()
    first, second, third, fourth = batches(4)
    queue.offer(Signal.TRACES, first)
    await asyncio.sleep(0)  # the worker takes the first batch and waits on the gate
    queue.offer(Signal.TRACES, second)
    queue.offer(Signal.TRACES, third)
    with pytest.raises(Refused):
        queue.offer(Signal.TRACES, fourth)
    gate.set()
    await queue.shutdown(time.monotonic() + 5)
    assert pushed == [first, second, third]
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_enqueue_failed_items_total") > 0
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total") == sum(
        len(ss.spans) for b in pushed for rs in b.resource_spans for ss in rs.scope_spans
    )


async def test_the_byte_bound_refuses_before_the_item_bound() -> None:
    one = batches(1)[0]

    async def push(signal: Signal, batch: Message) -> None:
        await asyncio.sleep(10)

    queue = SendingQueue(
        settings(SelfMetrics()), SendingQueueConfig(queue_size=100, max_bytes=one.ByteSize() * 2), push
    )
    queue.offer(Signal.TRACES, one)
    queue.offer(Signal.TRACES, one)
    with pytest.raises(Refused):
        queue.offer(Signal.TRACES, one)


@pytest.mark.parametrize("bound", ["max_items", "max_bytes"])
async def test_the_fill_ratio_follows_the_tightest_bound_not_the_batch_count(bound: str) -> None:
    """A queue refuses at whichever bound it meets first: with SDK batches of hundreds of spans, the item bound
    fills long before the batch bound, and an alert on batches alone would never fire; with large spans (long
    prompts), the byte bound fills first."""
    metrics = SelfMetrics()
    one = batches(1)[0]
    items = sum(len(ss.spans) for rs in one.resource_spans for ss in rs.scope_spans)
    limit = 2 * items if bound == "max_items" else 2 * one.ByteSize()

    async def push(signal: Signal, batch: Message) -> None:
        await asyncio.sleep(10)

    config = SendingQueueConfig(queue_size=1000, **{bound: limit})  # type: ignore[arg-type]
    queue = SendingQueue(settings(metrics), config, push)
    queue.offer(Signal.TRACES, one)
    fill = metric_value(metrics.render().decode(), "otel_sidecar_exporter_queue_fill_ratio", exporter="test")
    assert fill == pytest.approx(0.5)


async def test_shutdown_drains_everything_queued_before_returning() -> None:
    pushed: list[Message] = []

    async def push(signal: Signal, batch: Message) -> None:
        await asyncio.sleep(0.01)
        pushed.append(batch)

    queue = SendingQueue(settings(SelfMetrics()), SendingQueueConfig(queue_size=50), push)
    await queue.start()
    offered = batches(20)
    for batch in offered:
        queue.offer(Signal.TRACES, batch)
    await queue.shutdown(time.monotonic() + 5)
    assert sorted(id(b) for b in pushed) == sorted(id(b) for b in offered)
    with pytest.raises(Refused):
        queue.offer(Signal.TRACES, offered[0])


async def test_what_cannot_be_sent_by_the_deadline_is_counted_as_undelivered() -> None:
    metrics = SelfMetrics()

    async def push(signal: Signal, batch: Message) -> None:
        await asyncio.sleep(60)

    queue = SendingQueue(settings(metrics), SendingQueueConfig(queue_size=10, num_consumers=1), push)
    await queue.start()
    offered = batches(3)
    for batch in offered:
        queue.offer(Signal.TRACES, batch)
    await asyncio.sleep(0)
    await queue.shutdown(time.monotonic() + 0.2)
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="shutdown_timeout") > 0
    # The push under way had sent its batch: the backend may hold it, so it is not counted as surely lost.
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="unconfirmed") == count_spans(
        offered[0]
    )
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="shutdown") == 0
    assert len(queue) == 0


@pytest.mark.parametrize("maybe_delivered", [False, True])
async def test_a_batch_waiting_to_be_retried_at_the_deadline_is_unconfirmed_only_after_an_unknown_outcome(
    maybe_delivered: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused (a backend down), it was not delivered; after an attempt that timed out once sent, it may be."""
    metrics = SelfMetrics()
    attempts = 0

    async def push(signal: Signal, batch: Message) -> None:
        nonlocal attempts
        attempts += 1
        raise RetryableError("failed", reason="timeout", maybe_delivered=maybe_delivered)

    queue = SendingQueue(
        settings(metrics), SendingQueueConfig(num_consumers=1), push, retry=RetryConfig(initial_interval=Duration(30))
    )
    await queue.start()
    (batch,) = batches(1)
    queue.offer(Signal.TRACES, batch)
    while not attempts:
        await asyncio.sleep(0.01)
    with caplog.at_level(logging.ERROR):
        await queue.shutdown(time.monotonic() + 0.2)
    text = metrics.render().decode()
    spans = count_spans(batch)
    unconfirmed, undelivered = (spans, 0) if maybe_delivered else (0, spans)
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="unconfirmed") == unconfirmed
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="shutdown") == undelivered
    logged = [r.unconfirmed_items for r in caplog.records if hasattr(r, "unconfirmed_items")]
    assert logged == ([{"traces": spans}] if maybe_delivered else [])


async def test_batches_given_up_while_flushing_at_shutdown_are_logged_whole(caplog: pytest.LogCaptureFixture) -> None:
    """Drop warnings are rate-limited; those of the last batches a shutdown flush gives up were never written."""
    metrics = SelfMetrics()

    async def push(signal: Signal, batch: Message) -> None:
        raise PermanentExportError("refused")

    queue = SendingQueue(settings(metrics), SendingQueueConfig(num_consumers=1), push)
    await queue.start()
    offered = batches(5)
    with caplog.at_level(logging.WARNING):
        for batch in offered:
            queue.offer(Signal.TRACES, batch)
        await queue.shutdown(time.monotonic() + 5)
    summaries = [r.dropped_items for r in caplog.records if hasattr(r, "dropped_items")]
    dropped = metric_value(metrics.render().decode(), "otel_sidecar_exporter_send_failed_items_total")
    assert summaries == [{"traces": {"rejected": sum(count_spans(b) for b in offered)}}]
    assert dropped == sum(count_spans(b) for b in offered)
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 1  # the rest rate-limited


class FirstCallFails:
    """A push whose first call raises ``error`` (or, without one, answers ``rejected`` items); later calls deliver."""

    def __init__(self, error: Exception | None = None, rejected: int = 0) -> None:
        self.error = error
        self.rejected = rejected
        self.calls = 0

    async def __call__(self, signal: Signal, batch: Message) -> int:
        self.calls += 1
        if self.calls > 1:
            return 0
        if self.error is not None:
            raise self.error
        return self.rejected


async def test_a_failing_push_is_counted_and_the_worker_keeps_going() -> None:
    metrics = SelfMetrics()
    push = FirstCallFails(OSError("disk full"))
    queue = SendingQueue(settings(metrics), SendingQueueConfig(num_consumers=1), push)
    await queue.start()
    for batch in batches(3):
        queue.offer(Signal.TRACES, batch)
    await queue.shutdown(time.monotonic() + 5)
    text = metrics.render().decode()
    assert push.calls == 3
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="OSError") > 0


async def test_a_backend_claiming_to_reject_more_than_it_was_sent_counts_at_most_the_batch() -> None:
    """A partial success with rejected_spans above the request's spans (a buggy backend) must not break the
    counters (a negative increment) nor stop the worker."""
    metrics = SelfMetrics()
    push = FirstCallFails(rejected=10**6)
    text, first, second = await send_two_batches(metrics, push)
    assert push.calls == 2
    assert metric_value(text, "otel_sidecar_exporter_rejected_items_total") == first
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total") == second


@pytest.mark.parametrize(("timed_out", "reason"), [(True, "unconfirmed"), (False, "retries_exhausted")])
async def test_a_batch_given_up_after_an_attempt_timed_out_is_counted_as_unconfirmed(
    timed_out: bool, reason: str
) -> None:
    """A backend that stores the data but answers too late: the items may be there, and are not called lost."""

    metrics = SelfMetrics()
    attempts = 0

    async def push(signal: Signal, batch: Message) -> None:
        nonlocal attempts
        attempts += 1
        raise RetryableError("late", reason="timeout" if timed_out else "unavailable", maybe_delivered=timed_out)

    retry = RetryConfig(initial_interval=0.01, max_interval=0.01, randomization_factor=0, max_elapsed_time=0.05)
    queue = SendingQueue(settings(metrics), SendingQueueConfig(num_consumers=1), push, retry=retry)
    await queue.start()
    (batch,) = batches(1)
    items = sum(len(ss.spans) for rs in batch.resource_spans for ss in rs.scope_spans)
    queue.offer(Signal.TRACES, batch)
    await queue.shutdown(time.monotonic() + 5)
    text = metrics.render().decode()
    assert attempts > 1
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason=reason) == items


async def test_a_batch_given_up_logs_how_often_it_was_tried(caplog: pytest.LogCaptureFixture) -> None:
    """The drop line carries the retries' account (attempts, time, why no more), between the reason and the error."""
    metrics = SelfMetrics()

    async def push(signal: Signal, batch: Message) -> None:
        raise RetryableError("down", reason="unavailable")

    retry = RetryConfig(initial_interval=0.01, max_interval=0.01, randomization_factor=0, max_elapsed_time=0.05)
    queue = SendingQueue(settings(metrics), SendingQueueConfig(num_consumers=1), push, retry=retry)
    await queue.start()
    with caplog.at_level(logging.WARNING):
        queue.offer(Signal.TRACES, batches(1)[0])
        await queue.shutdown(time.monotonic() + 5)
    (line,) = [r.getMessage() for r in caplog.records if "giving up on the batch" in r.getMessage()]
    given_up = r"giving up on the batch \(retries_exhausted\) after \d+ attempts in [\d.]+s: the next retry would pass"
    assert re.search(given_up, line), line


async def test_merged_exports_stay_under_max_bytes_and_a_larger_request_is_split_to_fit() -> None:
    """A gRPC receiver refuses a message over 4 MiB whole: merging must not build one, nor pass one on."""
    from agent.exporters._helper.batcher import BatchConfig

    metrics = SelfMetrics()
    sizes: list[int] = []

    async def push(signal: Signal, batch: Message) -> None:
        sizes.append(batch.ByteSize())

    requests = batches(12)
    for request in requests:  # ~40 KB each
        for span in (s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans):
            span.attributes.add(key="payload").value.string_value = "x" * 2000
    large = sum(r.ByteSize() for r in requests[:6])
    merged_limit = requests[0].ByteSize() * 3
    batch = BatchConfig(min_size=100_000, max_bytes=merged_limit, flush_timeout=0.05)  # type: ignore[arg-type]
    queue = SendingQueue(settings(metrics), SendingQueueConfig(num_consumers=1), push, batch=batch)
    await queue.start()
    for request in requests:
        queue.offer(Signal.TRACES, request)
    big = ExportTraceServiceRequest()
    for request in requests[:6]:
        big.resource_spans.extend(request.resource_spans)
    queue.offer(Signal.TRACES, big)  # one request of twice the limit
    await queue.shutdown(time.monotonic() + 10)
    assert big.ByteSize() == large > merged_limit
    assert max(sizes) <= merged_limit  # split by each span's own size
    text = metrics.render().decode()
    spans = sum(len(ss.spans) for r in [*requests, big] for rs in r.resource_spans for ss in rs.scope_spans)
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total") == spans


async def test_a_request_of_small_and_large_spans_is_split_by_each_spans_size() -> None:
    """A split by item count in proportion to the size would put the large spans together in one part over the
    limit, which a backend refuses whole, small spans included."""
    from agent.exporters._helper.batcher import BatchConfig

    received: list[Message] = []

    async def push(signal: Signal, batch: Message) -> None:
        received.append(batch)

    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for index in range(1000):
        spans.add(trace_id=bytes(15) + bytes([1]), span_id=index.to_bytes(8, "big"), name="small")
    for index in range(10):
        big = spans.add(trace_id=bytes(15) + bytes([2]), span_id=(5000 + index).to_bytes(8, "big"), name="big")
        big.attributes.add(key="prompt").value.string_value = "x" * 100_000
    limit = 250_000
    batch = BatchConfig(max_bytes=limit, flush_timeout=0.01)  # type: ignore[arg-type]
    queue = SendingQueue(settings(SelfMetrics()), SendingQueueConfig(num_consumers=1), push, batch=batch)
    await queue.start()
    queue.offer(Signal.TRACES, request)
    await queue.shutdown(time.monotonic() + 10)
    assert all(part.ByteSize() <= limit for part in received), [part.ByteSize() for part in received]
    ids = sorted(span.span_id for part in received for rs in part.resource_spans for ss in rs.scope_spans
                 for span in ss.spans)  # fmt: skip
    assert ids == sorted(span.span_id for span in spans)  # every span once


async def test_batches_of_different_signals_are_never_merged_into_one_export() -> None:
    """A worker gathering a traces batch up to min_size must stop at a logs batch behind it: merged, the logs would
    go out inside a traces request (or the merge fail), and both batches would be lost."""
    from agent.exporters._helper.batcher import BatchConfig
    from agent.otlp.signals import ExportLogsServiceRequest

    metrics = SelfMetrics()
    pushed: list[tuple[Signal, Message]] = []

    async def push(signal: Signal, batch: Message) -> None:
        pushed.append((signal, batch))

    (traces,) = batches(1)
    spans = sum(len(ss.spans) for rs in traces.resource_spans for ss in rs.scope_spans)
    logs = ExportLogsServiceRequest()
    records = logs.resource_logs.add().scope_logs.add().log_records
    for index in range(3):
        records.add(time_unix_nano=index + 1).body.string_value = f"line {index}"
    batch = BatchConfig(min_size=100_000, flush_timeout=0.05)  # type: ignore[arg-type]
    queue = SendingQueue(settings(metrics), SendingQueueConfig(num_consumers=1), push, batch=batch)
    await queue.start()
    queue.offer(Signal.TRACES, traces)
    queue.offer(Signal.LOGS, logs)  # queued behind the traces before the worker gathers
    await queue.shutdown(time.monotonic() + 5)
    assert [(signal, type(request)) for signal, request in pushed] == [
        (Signal.TRACES, ExportTraceServiceRequest),
        (Signal.LOGS, ExportLogsServiceRequest),
    ]
    assert pushed[0][1].SerializeToString() == traces.SerializeToString()
    assert pushed[1][1].SerializeToString() == logs.SerializeToString()
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total", signal="traces") == spans
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total", signal="logs") == 3
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total") == 0


async def test_a_request_larger_than_max_items_is_taken_into_an_empty_queue() -> None:
    """Refused by the item bound however empty the queue, it could never be sent: the sender would retry it for
    ever. Into a queue that holds something, it is refused as usual."""
    metrics = SelfMetrics()
    one = batches(1)[0]
    items = sum(len(ss.spans) for rs in one.resource_spans for ss in rs.scope_spans)
    assert items > 1

    async def push(signal: Signal, batch: Message) -> None:
        await asyncio.sleep(10)

    queue = SendingQueue(settings(metrics), SendingQueueConfig(queue_size=100, max_items=items - 1), push)
    queue.offer(Signal.TRACES, one)  # larger than the whole bound, into an empty queue
    assert len(queue) == 1
    with pytest.raises(Refused):
        queue.offer(Signal.TRACES, one)
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_enqueue_failed_items_total") == items


async def test_a_failed_batch_counts_at_most_its_settled_items_as_rejected() -> None:
    """A retryable failure may carry what earlier parts of the batch had rejected (loadbalancing, loki): a claim
    above the settled items (a buggy backend) must not break the counters (a negative increment), and what was not
    settled is counted as failed, not lost from every counter."""
    metrics = SelfMetrics()
    push = FirstCallFails(RetryableError("a gateway is down", reason="unavailable", rejected=10**6, settled=2))
    text, first, second = await send_two_batches(metrics, push)
    assert push.calls == 2
    assert metric_value(text, "otel_sidecar_exporter_rejected_items_total") == 2
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="unavailable") == first - 2
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total") == first - 2
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total") == second


async def test_the_items_held_are_those_queued_and_those_being_sent() -> None:
    """What a second SIGTERM reports lost: queued requests, and those a worker is pushing."""
    release = asyncio.Event()

    async def push(signal: Signal, batch: Message) -> None:
        await release.wait()

    queue = SendingQueue(settings(SelfMetrics()), SendingQueueConfig(queue_size=10, num_consumers=1), push)
    await queue.start()
    offered = batches(3)
    for batch in offered:
        queue.offer(Signal.TRACES, batch)
    await asyncio.sleep(0.01)  # the worker takes the first and waits in its push
    assert len(queue) == 2
    assert queue.held_items() == sum(count_spans(batch) for batch in offered)
    release.set()
    await queue.shutdown(time.monotonic() + 5)
    assert queue.held_items() == 0


async def test_duplicates_count_one_copy_per_attempt_that_may_have_reached_the_backend() -> None:
    """Three attempts closed unanswered after the backend stored them, then a success: the backend holds four
    copies of each span, three of them extra (pass 90: the counter said one)."""
    metrics = SelfMetrics()
    attempts = 0

    async def stores_then_closes_three_times(signal: Signal, batch: Message) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise RetryableError("connection closed after the request", reason="connection", maybe_delivered=True)

    [batch] = batches(1)
    queue = SendingQueue(
        settings(metrics),
        SendingQueueConfig(num_consumers=1),
        stores_then_closes_three_times,
        retry=RetryConfig(initial_interval=0.01, max_interval=0.01),
    )
    await queue.start()
    queue.offer(Signal.TRACES, batch)
    await queue.shutdown(time.monotonic() + 5)
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total") == count_spans(batch)
    assert metric_value(text, "otel_sidecar_exporter_duplicates_total") == 3 * count_spans(batch)


async def test_the_items_the_consumers_hold_are_shown_apart_from_the_queue() -> None:
    """In an outage the consumers hold the batches they retry: the queue gauge reads empty, the in-flight one
    holds them, and both fall to zero once they are delivered."""
    metrics, release = SelfMetrics(), asyncio.Event()

    async def push(signal: Signal, batch: Message) -> None:
        if not release.is_set():
            raise RetryableError("backend down", reason="unavailable")

    config = SendingQueueConfig(queue_size=10, num_consumers=2)
    retry = RetryConfig(initial_interval=0.01, max_interval=0.01, max_elapsed_time=60)
    queue = SendingQueue(settings(metrics), config, push, retry=retry)
    await queue.start()
    offered = batches(2)
    for batch in offered:
        queue.offer(Signal.TRACES, batch)
    await asyncio.sleep(0.05)  # both consumers took a batch and are retrying it

    def gauge(name: str) -> float | None:
        return metric_value(metrics.render().decode(), f"otel_sidecar_exporter_{name}", exporter="test")

    assert gauge("queue_size") == 0
    assert gauge("in_flight_items") == sum(count_spans(batch) for batch in offered)
    release.set()
    await queue.shutdown(time.monotonic() + 5)
    assert gauge("in_flight_items") == 0
    assert gauge("queue_size") == 0


async def test_the_in_flight_gauge_falls_as_each_part_of_a_split_batch_is_delivered() -> None:
    from agent.exporters._helper.batcher import BatchConfig

    metrics, release, pushed = SelfMetrics(), asyncio.Event(), []

    async def push(signal: Signal, batch: Message) -> None:
        if pushed:
            await release.wait()  # the backend stalls after the first part
        pushed.append(count_spans(batch))

    request = ExportTraceServiceRequest()
    for part in batches(6):
        request.resource_spans.extend(part.resource_spans)
    limit = request.ByteSize() // 3 + 1
    batch = BatchConfig(max_bytes=limit, flush_timeout=0.01)  # type: ignore[arg-type]
    queue = SendingQueue(settings(metrics), SendingQueueConfig(num_consumers=1), push, batch=batch)
    await queue.start()
    queue.offer(Signal.TRACES, request)
    await asyncio.sleep(0.1)  # the first part delivered, the second waiting on the backend
    text = metrics.render().decode()
    assert len(pushed) == 1
    assert (
        metric_value(text, "otel_sidecar_exporter_in_flight_items", exporter="test") == count_spans(request) - pushed[0]
    )
    release.set()
    await queue.shutdown(time.monotonic() + 5)
    assert metric_value(metrics.render().decode(), "otel_sidecar_exporter_in_flight_items", exporter="test") == 0
