"""The persistent sending queue: records on disk survive a restart, damage is skipped and counted."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message

from agent.component import Refused, Signal
from agent.exporters._helper.batcher import merge
from agent.exporters._helper.persistent_queue import PersistentStore, QueueDirectoryBusy, QueueDirectoryUnusable
from agent.exporters._helper.queue import SendingQueue, SendingQueueConfig, StorageConfig
from agent.exporters._helper.retry import RetryableError, RetryConfig
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.workload import Workload
from tests.delivery_doubles import build_config, make_settings
from tests.helpers import metric_value


def batches(n: int, seed: int = 5) -> list[Message]:
    return [request for request, _ in Workload(seed=seed).requests(n)]


def queue_config(directory: Path, **extra: Any) -> SendingQueueConfig:
    raw = {"num_consumers": 1, "storage": {"directory": str(directory), "sync_interval": "0s"}, **extra}
    return build_config(SendingQueueConfig, raw)


class Backend:
    """A push function that fails while ``down`` and records what it got otherwise; ``timing_out``: its failures
    come after the request was sent (the backend may have it)."""

    def __init__(self, down: bool = False, timing_out: bool = False) -> None:
        self.down = down
        self.timing_out = timing_out
        self.received: list[Message] = []

    async def push(self, signal: Signal, batch: Message) -> None:
        if self.down:
            if self.timing_out:
                raise RetryableError("no answer within 5s", reason="timeout", maybe_delivered=True)
            raise RetryableError("backend down", reason="unavailable")
        self.received.append(batch)


FAST_RETRY = RetryConfig(initial_interval=0.01, max_interval=0.05, max_elapsed_time=0)


async def run_until_delivered(queue: SendingQueue, backend: Backend, expected: int, start: bool = True) -> None:
    if start:
        await queue.start()
    deadline = time.monotonic() + 10
    while len(backend.received) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await queue.shutdown(time.monotonic() + 5)


async def queue_while_down(config: SendingQueueConfig, sent: list[Message]) -> None:
    """Offer ``sent`` to a queue whose backend is down, and stop it: the batches stay on disk, undelivered."""
    queue = SendingQueue(make_settings("otlp"), config, Backend(down=True).push, retry=FAST_RETRY)
    await queue.start()
    for batch in sent:
        queue.offer(Signal.TRACES, batch)
    await queue.shutdown(time.monotonic() + 1)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.seg"))


@pytest.mark.parametrize("timing_out", [False, True])
async def test_data_queued_while_the_backend_is_down_is_delivered_after_a_restart(
    tmp_path: Path, timing_out: bool
) -> None:
    sent = batches(5)
    down = Backend(down=True, timing_out=timing_out)
    first = SendingQueue(make_settings("otlp/jaeger"), queue_config(tmp_path), down.push, retry=FAST_RETRY)
    await first.start()
    for batch in sent:
        first.offer(Signal.TRACES, batch)
    await asyncio.sleep(0.2)
    await first.shutdown(time.monotonic() + 2)  # stops at the first failure: everything stays on disk
    assert down.received == []

    metrics = SelfMetrics()
    up = Backend()
    second = SendingQueue(make_settings("otlp/jaeger", metrics), queue_config(tmp_path), up.push, retry=FAST_RETRY)
    await run_until_delivered(second, up, len(sent))
    assert [b.SerializeToString() for b in up.received] == [b.SerializeToString() for b in sent]
    text = metrics.render().decode()
    items = sum(len(ss.spans) for b in sent for rs in b.resource_spans for ss in rs.scope_spans)
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_recovered_items_total") == items
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total") == items
    # The batch being sent when the first queue stopped may have reached the backend only if an attempt timed out
    # after sending; refused connections delivered nothing, so its resend is no duplicate.
    duplicates = metric_value(text, "otel_sidecar_exporter_duplicates_total")
    assert duplicates > 0 if timing_out else duplicates == 0
    assert segments(tmp_path) == [] or all(p.stat().st_size == 0 for p in segments(tmp_path))


async def wait_for_received(backend: Backend, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(backend.received) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def test_a_batch_queued_after_a_restart_is_delivered_after_the_next_restart(tmp_path: Path) -> None:
    """A record written after a restart takes a sequence number after every record on disk: reusing one of them
    (a record never begun is in no acknowledgement), it would share that record's acknowledgements and be skipped
    as delivered."""
    sent = batches(3)
    await queue_while_down(queue_config(tmp_path), sent[:2])
    backend = Backend()
    second = SendingQueue(make_settings("otlp"), queue_config(tmp_path), backend.push, retry=FAST_RETRY)
    await second.start()
    await wait_for_received(backend, 2)
    backend.down = True
    second.offer(Signal.TRACES, sent[2])
    await asyncio.sleep(0.1)
    await second.shutdown(time.monotonic() + 1)
    assert backend.received == sent[:2]

    last = Backend()
    await run_until_delivered(SendingQueue(make_settings("otlp"), queue_config(tmp_path), last.push), last, 1)
    assert last.received == [sent[2]]


async def test_a_batch_queued_after_a_restart_that_could_not_compact_the_ack_log_is_delivered(tmp_path: Path) -> None:
    """The log kept the acknowledgements of records whose segment was emptied in place (the rewrite at start
    failed, as on a full volume): a new record must not take one of their sequence numbers."""
    sent = batches(3)
    first, _, backend = await started_queue(tmp_path, SelfMetrics())
    for batch in sent[:2]:
        first.offer(Signal.TRACES, batch)
    await wait_for_received(backend, 2)
    await asyncio.sleep(0.05)  # the last acknowledgement
    await first.shutdown(time.monotonic() + 1)
    assert backend.received == sent[:2]

    (tmp_path / "otlp" / "acks.log.tmp").mkdir()  # the rewrite's temporary file cannot be written
    await queue_while_down(queue_config(tmp_path), sent[2:])
    (tmp_path / "otlp" / "acks.log.tmp").rmdir()

    last = Backend()
    await run_until_delivered(SendingQueue(make_settings("otlp"), queue_config(tmp_path), last.push), last, 1)
    assert last.received == [sent[2]]


async def test_a_compacted_ack_log_keeps_the_mark_of_a_batch_that_may_have_reached_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is rewritten without its done entries once it grows past a bound: the mark of a batch whose attempt
    timed out after sending must survive it, so that its resend after a restart counts as a possible duplicate."""
    import agent.exporters._helper.persistent_queue as persistent_queue

    monkeypatch.setattr(persistent_queue, "_MAX_ACK_LOG", 0)  # every acknowledgement compacts the log
    stuck, delivered = batches(2)
    received: list[Message] = []

    async def push(signal: Signal, batch: Message) -> None:
        if batch == stuck:
            raise RetryableError("no answer within 5s", reason="timeout", maybe_delivered=True)
        received.append(batch)

    first = SendingQueue(make_settings("otlp"), queue_config(tmp_path, num_consumers=2), push, retry=FAST_RETRY)
    await first.start()
    first.offer(Signal.TRACES, stuck)
    first.offer(Signal.TRACES, delivered)
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)  # the acknowledgement, and the compaction with it
    await first.shutdown(time.monotonic() + 1)
    assert received == [delivered]

    metrics = SelfMetrics()
    backend = Backend()
    await run_until_delivered(
        SendingQueue(make_settings("otlp", metrics), queue_config(tmp_path), backend.push), backend, 1
    )
    assert backend.received == [stuck]
    assert metric_value(metrics.render().decode(), "otel_sidecar_exporter_duplicates_total") == spans_in(stuck)


class DeliversPart:
    """A push that delivers a batch's first resource and leaves the rest in it, failing: as the loadbalancing
    exporter does when one gateway takes its part and another is down."""

    def __init__(self) -> None:
        self.received: list[Message] = []

    async def push(self, signal: Signal, batch: Message) -> None:
        if not self.received:
            self.received.append(type(batch)(resource_spans=batch.resource_spans[:1]))
            del batch.resource_spans[0]
        raise RetryableError("a gateway is down", reason="unavailable")


async def test_a_record_partly_delivered_before_a_shutdown_counts_as_a_possible_duplicate_after_the_restart(
    tmp_path: Path,
) -> None:
    """A record is stored whole: the part the backend already took is sent again after the restart."""
    batch = merge(batches(3))
    assert len(batch.resource_spans) > 1
    items = sum(len(ss.spans) for rs in batch.resource_spans for ss in rs.scope_spans)
    partly = DeliversPart()
    first = SendingQueue(make_settings("loadbalancing"), queue_config(tmp_path), partly.push, retry=FAST_RETRY)
    await first.start()
    first.offer(Signal.TRACES, batch)
    while not partly.received:
        await asyncio.sleep(0.01)
    await first.shutdown(time.monotonic() + 2)  # ends the retry wait: the record stays on disk

    metrics = SelfMetrics()
    up = Backend()
    second = SendingQueue(make_settings("loadbalancing", metrics), queue_config(tmp_path), up.push)
    await run_until_delivered(second, up, 1)
    assert up.received and up.received[0].resource_spans[0] == partly.received[0].resource_spans[0]
    # The whole record counts (an upper bound, as after a crash): the queue knows records, not their parts.
    assert metric_value(metrics.render().decode(), "otel_sidecar_exporter_duplicates_total") == items


async def test_delivered_records_are_not_sent_again_after_a_restart(tmp_path: Path) -> None:
    sent = batches(3)
    backend = Backend()
    first = SendingQueue(make_settings("loki"), queue_config(tmp_path), backend.push)
    await first.start()
    for batch in sent:
        first.offer(Signal.TRACES, batch)
    await run_until_delivered(first, backend, len(sent), start=False)
    again = Backend()
    second = SendingQueue(make_settings("loki"), queue_config(tmp_path), again.push)
    await second.start()
    await asyncio.sleep(0.1)
    await second.shutdown(time.monotonic() + 1)
    assert len(backend.received) == len(sent)
    assert again.received == []


async def test_a_truncated_segment_tail_is_skipped_and_counted(tmp_path: Path) -> None:
    sent = batches(3)
    await queue_while_down(queue_config(tmp_path), sent)
    (segment,) = [p for p in segments(tmp_path) if p.stat().st_size]
    segment.write_bytes(segment.read_bytes()[:-10])  # a write torn by a crash

    metrics = SelfMetrics()
    backend = Backend()
    second = SendingQueue(make_settings("otlp", metrics), queue_config(tmp_path), backend.push)
    await run_until_delivered(second, backend, 2)
    assert [b.SerializeToString() for b in backend.received] == [b.SerializeToString() for b in sent[:2]]
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_errors_total", reason="truncated") == 1


async def test_a_corrupt_record_is_skipped_and_the_records_around_it_are_delivered(tmp_path: Path) -> None:
    sent = batches(6)
    config = queue_config(tmp_path, storage={"directory": str(tmp_path), "segment_mib": 1, "sync_interval": "0s"})
    await queue_while_down(config, sent[:3])
    (damaged,) = [p for p in segments(tmp_path) if p.stat().st_size]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip a byte inside the second record
    damaged.write_bytes(bytes(data))

    metrics = SelfMetrics()
    backend = Backend(down=True)
    second = SendingQueue(make_settings("otlp", metrics), config, backend.push, retry=FAST_RETRY)
    await second.start()
    for batch in sent[3:]:
        second.offer(Signal.TRACES, batch)
    backend.down = False
    deadline = time.monotonic() + 10
    while len(backend.received) < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await second.shutdown(time.monotonic() + 2)
    received = [b.SerializeToString() for b in backend.received]
    assert sent[0].SerializeToString() in received
    assert sent[1].SerializeToString() not in received  # the damaged one
    assert sent[2].SerializeToString() in received  # found again after the damage by its magic and CRC
    assert all(b.SerializeToString() in received for b in sent[3:])
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_errors_total", reason="corrupt") == 1


async def test_a_segment_with_no_readable_record_is_set_aside_not_deleted(tmp_path: Path) -> None:
    """Another version's format (after a downgrade) or damage throughout: deleting the file would lose its records
    for good, so it is kept under another name, out of the queue, and the queue goes on."""
    sent = batches(2)
    await queue_while_down(queue_config(tmp_path), sent[:1])
    (segment,) = [p for p in segments(tmp_path) if p.stat().st_size]
    original = segment.read_bytes()
    segment.write_bytes(b"OSQ2" + original[4:])  # a format this version cannot read

    backend = Backend()
    second = SendingQueue(make_settings("otlp"), queue_config(tmp_path), backend.push, retry=FAST_RETRY)
    await second.start()
    second.offer(Signal.TRACES, sent[1])
    await run_until_delivered(second, backend, 1, start=False)
    assert [b.SerializeToString() for b in backend.received] == [sent[1].SerializeToString()]
    kept = segment.with_suffix(".damaged")
    assert kept.read_bytes() == b"OSQ2" + original[4:]


async def test_the_queue_is_bounded_by_bytes_on_disk(tmp_path: Path) -> None:
    one = batches(1)[0]
    config = queue_config(tmp_path, max_bytes=one.ByteSize() * 3)
    queue = SendingQueue(make_settings("otlp"), config, Backend(down=True).push, retry=FAST_RETRY)
    await queue.start()
    accepted = 0
    with pytest.raises(Refused):
        for _ in range(10):
            queue.offer(Signal.TRACES, batches(1)[0])
            accepted += 1
    assert 2 <= accepted <= 3
    await queue.shutdown(time.monotonic() + 1)


async def test_the_queue_bound_in_items_counts_what_a_restart_found_on_disk(tmp_path: Path) -> None:
    sent = batches(2)
    await queue_while_down(queue_config(tmp_path), sent)
    config = queue_config(tmp_path, max_items=sum(spans_in(b) for b in sent))  # full with what is on disk
    queue = SendingQueue(make_settings("otlp"), config, Backend(down=True).push, retry=FAST_RETRY)
    await queue.start()
    try:
        with pytest.raises(Refused):
            queue.offer(Signal.TRACES, batches(1, seed=9)[0])
    finally:
        await queue.shutdown(time.monotonic() + 1)


async def test_segments_are_deleted_once_everything_in_them_is_delivered(tmp_path: Path) -> None:
    config = queue_config(tmp_path, storage={"directory": str(tmp_path), "segment_mib": 1, "sync_interval": "50ms"})
    backend = Backend()
    queue = SendingQueue(make_settings("otlp"), config, backend.push)
    await queue.start()
    big = batches(200, seed=8)
    for batch in big:
        queue.offer(Signal.TRACES, batch)
    deadline = time.monotonic() + 10
    while len(backend.received) < len(big) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await queue.shutdown(time.monotonic() + 2)
    assert len(backend.received) == len(big)
    assert len(segments(tmp_path)) <= 1  # only the last, active segment may remain


async def test_a_segment_whose_records_were_all_delivered_while_it_was_written_is_deleted_at_rotation(
    tmp_path: Path,
) -> None:
    """With a backend that keeps up, every record is done before its segment fills: the segment must still go
    when the next one starts, or the files (and the queue's byte count) grow until it refuses data."""
    config = queue_config(tmp_path, storage={"directory": str(tmp_path), "segment_mib": 1, "sync_interval": "50ms"})
    backend = Backend()
    queue = SendingQueue(make_settings("otlp"), config, backend.push)
    await queue.start()
    sent = batches(120, seed=8)
    for batch in sent:  # 40 KB more each (a long prompt), so that 120 of them fill several 1 MiB segments
        batch.resource_spans[0].resource.attributes.add(key="pad", value={"string_value": "x" * 40_000})
    for index, batch in enumerate(sent):
        queue.offer(Signal.TRACES, batch)
        deadline = time.monotonic() + 5
        while len(backend.received) <= index and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
    written = sum(b.ByteSize() for b in sent)
    assert written > 3 * 1024 * 1024  # several rotations
    assert len(segments(tmp_path)) == 1  # the active one
    await queue.shutdown(time.monotonic() + 2)
    assert len(backend.received) == len(sent)


async def test_a_delivered_segment_that_could_not_be_emptied_in_place_is_deleted_at_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Emptying the active segment once its records are done failed (a disk error): it fills with delivered
    records, and must go when the next one starts, or the files grow until the queue refuses data."""
    import agent.exporters._helper.persistent_queue as persistent_queue

    def failing_ftruncate(fd: int, length: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(persistent_queue.os, "ftruncate", failing_ftruncate)
    config = queue_config(tmp_path, storage={"directory": str(tmp_path), "segment_mib": 1, "sync_interval": "50ms"})
    backend = Backend()
    queue = SendingQueue(make_settings("otlp"), config, backend.push)
    await queue.start()
    sent = batches(40, seed=8)
    for batch in sent:  # 40 KB more each, so that 40 of them fill a 1 MiB segment
        batch.resource_spans[0].resource.attributes.add(key="pad", value={"string_value": "x" * 40_000})
    for index, batch in enumerate(sent):
        queue.offer(Signal.TRACES, batch)
        await wait_for_received(backend, index + 1)
    assert len(segments(tmp_path)) == 1  # the active one
    await queue.shutdown(time.monotonic() + 2)
    assert len(backend.received) == len(sent)


async def test_two_agents_cannot_share_a_queue_directory(tmp_path: Path) -> None:
    config = StorageConfig(directory=str(tmp_path))
    first = PersistentStore(tmp_path / "otlp", config, make_settings("otlp"))
    await first.open()
    second = PersistentStore(tmp_path / "otlp", config, make_settings("otlp"))
    with pytest.raises(QueueDirectoryBusy, match="in use by another agent") as raised:
        await second.open()
    assert str(raised.value).startswith("sending_queue.storage.directory: ")  # the agent prefixes the exporter
    await first.close()


async def test_a_directory_that_cannot_be_made_names_the_setting(tmp_path: Path) -> None:
    """The start failed with "[Errno 2] No such file or directory: '/proc/q'" after the exporter's path, which
    said nothing of sending_queue.storage.directory (pass 152)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    store = PersistentStore(blocker / "otlp", StorageConfig(directory=str(blocker)), make_settings("otlp"))
    with pytest.raises(QueueDirectoryUnusable) as raised:
        await store.open()
    assert str(raised.value) == f"sending_queue.storage.directory: cannot use {blocker / 'otlp'}: Not a directory"


async def test_a_record_whose_payload_no_longer_decodes_is_dropped_and_counted(tmp_path: Path) -> None:
    metrics = SelfMetrics()
    store = PersistentStore(tmp_path, StorageConfig(directory=str(tmp_path)), make_settings("otlp", metrics))
    await store.open()
    store.put(Signal.TRACES, batches(1)[0], 3, 0)
    entry = store.pop()
    assert entry.segment is not None
    with open(entry.segment.path, "r+b") as handle:  # damage the payload after it was accepted
        handle.seek(entry.offset + entry.length - 3)
        handle.write(b"\xff\xff\xff")
    with pytest.raises(ValueError, match="changed on disk"):
        store.load(entry)
    await store.close()
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_errors_total", reason="corrupt") == 1


def spans_in(batch: Message) -> int:
    return sum(len(ss.spans) for rs in batch.resource_spans for ss in rs.scope_spans)  # type: ignore[attr-defined]


async def test_a_failed_fsync_refuses_the_sender_and_leaves_nothing_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender is told to retry, so the queue must not also deliver the request (a duplicate)."""
    import agent.exporters._helper.persistent_queue as persistent_queue

    backend = Backend()
    queue = SendingQueue(make_settings("otlp", SelfMetrics()), queue_config(tmp_path), backend.push)
    await queue.start()

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(persistent_queue.os, "fsync", failing_fsync)
    with pytest.raises(Refused, match="cannot write the persistent queue"):
        queue.offer(Signal.TRACES, batches(1)[0])
    monkeypatch.undo()
    assert len(queue) == 0
    await asyncio.sleep(0.2)
    await queue.shutdown(time.monotonic() + 2)
    assert backend.received == []
    assert sum(path.stat().st_size for path in segments(tmp_path)) == 0  # the record was taken back


async def test_a_disk_error_while_sending_is_counted_and_the_worker_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = SelfMetrics()
    backend = Backend()
    queue = SendingQueue(make_settings("otlp", metrics), queue_config(tmp_path), backend.push)
    await queue.start()
    real = PersistentStore.begin
    failures = iter([OSError(28, "No space left on device")])

    def begin_failing_once(self: PersistentStore, entries: Any) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        real(self, entries)

    monkeypatch.setattr(PersistentStore, "begin", begin_failing_once)
    first, *rest = batches(3)
    queue.offer(Signal.TRACES, first)
    await asyncio.sleep(0.1)
    for batch in rest:
        queue.offer(Signal.TRACES, batch)
    await run_until_delivered(queue, backend, 2, start=False)
    assert len(backend.received) == 2
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="OSError") == spans_in(first)
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total") == sum(spans_in(b) for b in rest)


async def test_the_items_of_a_record_that_no_longer_decodes_are_counted_as_failed(tmp_path: Path) -> None:
    metrics = SelfMetrics()
    backend = Backend()
    queue = SendingQueue(make_settings("otlp", metrics), queue_config(tmp_path), backend.push)
    await queue.start()
    for worker in queue._workers:  # hold the worker back while the record is damaged on disk
        worker.cancel()
    await asyncio.gather(*queue._workers, return_exceptions=True)
    batch = batches(1)[0]
    queue.offer(Signal.TRACES, batch)
    entry = queue._store.peek()
    assert entry is not None and entry.segment is not None
    with open(entry.segment.path, "r+b") as handle:
        handle.seek(entry.offset + entry.length - 3)
        handle.write(b"\xff\xff\xff")
    queue._workers = [asyncio.create_task(queue._work())]
    await asyncio.sleep(0.2)
    await queue.shutdown(time.monotonic() + 2)
    text = metrics.render().decode()
    assert backend.received == []
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="corrupt") == spans_in(batch)


async def test_the_periodic_fsync_survives_a_moment_without_file_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """os.dup failing (EMFILE) once must not end the periodic sync for good: it is logged and tried again."""
    import agent.exporters._helper.persistent_queue as persistent_queue

    store = PersistentStore(
        tmp_path,
        build_config(StorageConfig, {"directory": str(tmp_path), "sync_interval": "10ms"}),
        make_settings("otlp", SelfMetrics()),
    )
    await store.open()
    synced: list[int] = []
    real_dup, failures = persistent_queue.os.dup, [1]

    def dup_once_failing(fd: int) -> int:
        if failures:
            failures.pop()
            raise OSError(24, "Too many open files")
        return real_dup(fd)

    monkeypatch.setattr(persistent_queue.os, "dup", dup_once_failing)
    monkeypatch.setattr(persistent_queue.os, "fsync", lambda fd: synced.append(fd))
    store.put(Signal.TRACES, batches(1)[0], 1, 100)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if synced:
            break
    await store.close()
    assert synced, "the sync task stopped after the failure"
    assert any("cannot fsync the persistent queue" in r.getMessage() for r in caplog.records)


async def test_delivered_records_leave_the_active_segment_so_a_small_bound_keeps_taking_data(tmp_path: Path) -> None:
    """max_bytes (or the volume) smaller than a segment: the segment being written never filled, so delivered
    records stayed in the byte bound and on disk, and the idle queue refused data for good."""
    one = batches(1)[0]
    config = queue_config(tmp_path, max_bytes=one.ByteSize() * 3)  # segment_mib: 8 by default
    backend = Backend()
    queue = SendingQueue(make_settings("otlp"), config, backend.push)
    await queue.start()
    sent = batches(12, seed=9)
    for index, batch in enumerate(sent):
        queue.offer(Signal.TRACES, batch)  # refused (raises) if delivered data still counted
        deadline = time.monotonic() + 5
        while len(backend.received) <= index and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # the last ack
    assert queue._store.bytes == 0
    # The gauges follow the ack too: after an outage, QueueNearlyFull must stop firing once the queue drained.
    assert metric_value(queue._settings.metrics.render().decode(), "otel_sidecar_exporter_queue_bytes") == 0
    assert [path.stat().st_size for path in segments(tmp_path)] == [0]
    await queue.shutdown(time.monotonic() + 2)
    assert len(backend.received) == len(sent)


async def started_queue(directory: Path, metrics: SelfMetrics) -> tuple[SendingQueue, PersistentStore, Backend]:
    backend = Backend()
    queue = SendingQueue(make_settings("otlp", metrics), queue_config(directory), backend.push)
    await queue.start()
    store = queue._store
    assert isinstance(store, PersistentStore)
    return queue, store, backend


async def test_a_full_disk_under_the_ack_log_costs_no_batch(tmp_path: Path) -> None:
    """The acknowledgement log's writes fail (a full disk, here /dev/full): the batches still go to the backend
    and count as sent, and the failed writes are counted; giving them up would lose data the backend can take."""
    metrics = SelfMetrics()
    queue, store, backend = await started_queue(tmp_path, metrics)
    os.close(store._acks_fd)
    store._acks_fd = os.open("/dev/full", os.O_WRONLY)
    sent = batches(3)
    for batch in sent:
        queue.offer(Signal.TRACES, batch)
    deadline = time.monotonic() + 5
    while len(backend.received) < len(sent) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total") == sum(spans_in(b) for b in sent)
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total") == 0
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_errors_total", reason="ack_log") >= 3
    os.close(store._acks_fd)
    store._acks_fd = os.open(store._dir / "acks.log", os.O_WRONLY | os.O_APPEND)
    await queue.shutdown(time.monotonic() + 2)


async def test_an_ack_log_that_cannot_be_rewritten_costs_no_batch_and_no_record_is_acked_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rewrite of a grown ack log fails (a full disk; here its temporary file's name is taken by a directory).
    That failure escaped ack(): the delivered batch was acked again as failed, its emptied segment counted one
    live record too few, and a later record was then truncated away while still queued."""
    import agent.exporters._helper.persistent_queue as persistent_queue

    monkeypatch.setattr(persistent_queue, "_MAX_ACK_LOG", 0)  # every ack rewrites the log
    metrics = SelfMetrics()
    queue, store, backend = await started_queue(tmp_path, metrics)
    (store._dir / "acks.log.tmp").mkdir()
    sent = batches(6, seed=3)
    for batch in sent:
        queue.offer(Signal.TRACES, batch)
        deadline = time.monotonic() + 5
        while len(backend.received) < sent.index(batch) + 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # the last ack
    live = [segment.live for segment in store._segments]
    await queue.shutdown(time.monotonic() + 2)
    text = metrics.render().decode()
    assert backend.received == sent
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total") == 0
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_errors_total", reason="corrupt") == 0
    assert live == [0]  # each record acked once, whatever failed
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_errors_total", reason="ack_log") >= len(sent)


async def test_a_shutdown_during_an_outage_keeps_the_duplicate_mark_a_crash_left(tmp_path: Path) -> None:
    """Run 1 hands a record to the backend and is killed before the answer; run 2 finds the backend down and is
    stopped; run 3 delivers. The record was marked 'maybe delivered' by run 1, and run 2's failed attempt, which
    reached nothing, must not erase that mark."""
    received: list[Message] = []
    hang = asyncio.Event()

    async def stores_and_hangs(signal: Signal, batch: Message) -> None:
        received.append(batch)
        await hang.wait()

    first = SendingQueue(make_settings("otlp"), queue_config(tmp_path), stores_and_hangs, retry=FAST_RETRY)
    await first.start()
    first.offer(Signal.TRACES, batches(1)[0])
    while not received:
        await asyncio.sleep(0.01)
    for worker in first._workers:  # killed: no acknowledgement is written
        worker.cancel()
    await asyncio.gather(*first._workers, return_exceptions=True)
    await first._store.close()

    down = SendingQueue(make_settings("otlp"), queue_config(tmp_path), Backend(down=True).push, retry=FAST_RETRY)
    await down.start()
    await asyncio.sleep(0.2)
    await down.shutdown(time.monotonic() + 1)

    metrics = SelfMetrics()
    backend = Backend()
    last = SendingQueue(make_settings("otlp", metrics), queue_config(tmp_path), backend.push, retry=FAST_RETRY)
    await run_until_delivered(last, backend, 1)
    assert len(received) + len(backend.received) == 2  # the backend has it twice ...
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_duplicates_total") == spans_in(backend.received[0])  # ... said


@pytest.mark.parametrize("garbage", [b"\xff" * 18, b"Z" + (7).to_bytes(8, "little"), b"S" + b"\xff" * 8])
async def test_garbage_in_the_ack_log_is_skipped_and_counted_and_new_data_is_still_taken(
    tmp_path: Path, garbage: bytes
) -> None:
    sent = batches(3)
    await queue_while_down(queue_config(tmp_path), sent[:2])
    (acks,) = tmp_path.rglob("acks.log")
    with open(acks, "ab") as handle:
        handle.write(garbage)  # 0xFF bytes: an entry with seq 2**64 - 1

    metrics = SelfMetrics()
    backend = Backend()
    second = SendingQueue(make_settings("otlp", metrics), queue_config(tmp_path), backend.push)
    await second.start()
    second.offer(Signal.TRACES, sent[2])  # raised struct.error ("argument out of range") for every batch
    await run_until_delivered(second, backend, 3, start=False)
    assert [b.SerializeToString() for b in backend.received] == [b.SerializeToString() for b in sent]
    text = metrics.render().decode()
    assert (
        metric_value(text, "otel_sidecar_exporter_persistent_queue_errors_total", reason="corrupt") == len(garbage) // 9
    )


async def test_the_queue_directory_and_files_are_the_owners_only(tmp_path: Path) -> None:
    """Queued telemetry can hold prompts (capture_content) or what redaction does not know: not for other users."""
    metrics = SelfMetrics()
    queue, store, backend = await started_queue(tmp_path / "queue", metrics)
    backend.down = True
    queue.offer(Signal.TRACES, batches(1)[0])
    await asyncio.sleep(0.05)
    await queue.shutdown(time.monotonic() + 0.5)
    assert (store._dir.stat().st_mode & 0o777) == 0o700
    files = [path for path in store._dir.iterdir() if path.is_file()]
    assert {path.name for path in files} >= {"acks.log", "lock"} and any(path.suffix == ".seg" for path in files)
    assert all((path.stat().st_mode & 0o777) == 0o600 for path in files), [oct(p.stat().st_mode) for p in files]


async def test_a_queue_larger_than_a_segment_is_written_to_several_and_read_back_in_order(tmp_path: Path) -> None:
    """While the backend is down the queue grows past segment_mib: a new segment is begun each time one fills,
    and after a restart the records of every segment are delivered, in the order they were accepted."""
    config = queue_config(tmp_path, storage={"directory": str(tmp_path), "segment_mib": 1, "sync_interval": "0s"})
    sent = batches(100, seed=8)
    for batch in sent:  # 40 KB more each (a long prompt), so that 100 of them fill several 1 MiB segments
        batch.resource_spans[0].resource.attributes.add(key="pad", value={"string_value": "x" * 40_000})
    await queue_while_down(config, sent)
    assert sum(b.ByteSize() for b in sent) > 3 * 1024 * 1024
    assert len(segments(tmp_path)) >= 3
    largest = max(b.ByteSize() for b in sent) + 21  # a record: its payload after a 21-byte header
    assert all(path.stat().st_size < 1024 * 1024 + largest for path in segments(tmp_path))  # closed once full

    backend = Backend()
    second = SendingQueue(make_settings("otlp"), config, backend.push)
    await run_until_delivered(second, backend, len(sent))
    assert [b.SerializeToString() for b in backend.received] == [b.SerializeToString() for b in sent]


async def test_a_record_delivered_before_a_restart_is_not_sent_again_while_the_rest_of_its_segment_is(
    tmp_path: Path,
) -> None:
    """The segment still holds the delivered record (its neighbours are not done): the ack log says it is done,
    so only the others are sent after the restart."""
    sent = batches(3)
    received: list[Message] = []

    async def delivers_the_first_only(signal: Signal, batch: Message) -> None:
        if received:
            raise RetryableError("backend down", reason="unavailable")
        received.append(batch)

    first = SendingQueue(make_settings("otlp"), queue_config(tmp_path), delivers_the_first_only, retry=FAST_RETRY)
    await first.start()
    for batch in sent:
        first.offer(Signal.TRACES, batch)
    await asyncio.sleep(0.2)
    await first.shutdown(time.monotonic() + 1)
    assert received == [sent[0]]
    assert [path.stat().st_size > 0 for path in segments(tmp_path)] == [True]  # all three still on disk

    metrics = SelfMetrics()
    backend = Backend()
    second = SendingQueue(make_settings("otlp", metrics), queue_config(tmp_path), backend.push)
    await run_until_delivered(second, backend, 2)
    assert [b.SerializeToString() for b in backend.received] == [b.SerializeToString() for b in sent[1:]]
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_recovered_items_total") == sum(
        spans_in(b) for b in sent[1:]
    )


async def test_a_torn_last_entry_of_the_ack_log_is_ignored_at_start(tmp_path: Path) -> None:
    """A crash in the middle of writing an acknowledgement leaves part of a 9-byte entry: the agent must still
    start, take the record as not done (it is sent again), and go on writing whole entries after it."""
    sent = batches(3)
    await queue_while_down(queue_config(tmp_path), sent)
    (acks,) = tmp_path.rglob("acks.log")
    with open(acks, "ab") as handle:
        handle.write(b"A" + (1).to_bytes(8, "little")[:2])  # the first 3 bytes of "record 1 is done"

    metrics = SelfMetrics()
    backend = Backend()
    second = SendingQueue(make_settings("otlp", metrics), queue_config(tmp_path), backend.push)
    await run_until_delivered(second, backend, len(sent))
    assert [b.SerializeToString() for b in backend.received] == [b.SerializeToString() for b in sent]
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_errors_total") == 0
    assert acks.stat().st_size % 9 == 0  # later entries are back on the log's grid

    again = Backend()
    third = SendingQueue(make_settings("otlp"), queue_config(tmp_path), again.push)
    await third.start()
    await asyncio.sleep(0.1)
    await third.shutdown(time.monotonic() + 1)
    assert again.received == []  # the acknowledgements written after the torn entry were read back


async def test_a_torn_last_entry_is_cut_off_when_the_ack_log_cannot_be_rewritten_at_start(tmp_path: Path) -> None:
    """On a full volume the log is appended to as it is: the entries written after a torn one must still be read
    back whole, or the delivered records are sent again after the next restart."""
    sent = batches(2)
    await queue_while_down(queue_config(tmp_path), sent)
    (acks,) = tmp_path.rglob("acks.log")
    with open(acks, "ab") as handle:
        handle.write(b"A" + (1).to_bytes(8, "little")[:2])  # a crash in the middle of an entry
    (acks.parent / "acks.log.tmp").mkdir()  # the rewrite's temporary file cannot be written
    backend = Backend()
    await run_until_delivered(SendingQueue(make_settings("otlp"), queue_config(tmp_path), backend.push), backend, 2)
    (acks.parent / "acks.log.tmp").rmdir()
    assert backend.received == sent

    metrics = SelfMetrics()
    again = Backend()
    third = SendingQueue(make_settings("otlp", metrics), queue_config(tmp_path), again.push)
    await third.start()
    await asyncio.sleep(0.1)
    await third.shutdown(time.monotonic() + 1)
    assert again.received == []
    assert metric_value(metrics.render().decode(), "otel_sidecar_exporter_persistent_queue_errors_total") == 0


async def test_acknowledging_the_same_records_twice_changes_nothing_the_second_time(tmp_path: Path) -> None:
    """The sending queue acks a group again when delivering it failed after a first ack: the second must not
    count the records done twice (a neighbour's record would be taken for done and its segment emptied)."""
    store = PersistentStore(
        tmp_path,
        build_config(StorageConfig, {"directory": str(tmp_path), "sync_interval": "0s"}),
        make_settings("otlp", SelfMetrics()),
    )
    await store.open()
    first, second = batches(2)
    store.put(Signal.TRACES, first, spans_in(first), 0)
    store.put(Signal.TRACES, second, spans_in(second), 0)
    entry = store.pop()
    store.ack([entry])
    state = (len(store), store.items, store.bytes, store.unacked(), [s.live for s in store._segments])
    assert state[3] == 1 and state[2] > 0
    store.ack([entry])
    assert (len(store), store.items, store.bytes, store.unacked(), [s.live for s in store._segments]) == state
    await store.close()

    reopened = PersistentStore(
        tmp_path,
        build_config(StorageConfig, {"directory": str(tmp_path), "sync_interval": "0s"}),
        make_settings("otlp", SelfMetrics()),
    )
    await reopened.open()
    left = reopened.pop()
    assert left.seq == 2 and reopened.load(left).SerializeToString() == second.SerializeToString()
    assert reopened.peek() is None
    await reopened.close()


async def test_a_persistent_queue_holds_nothing_only_memory_would_lose(tmp_path: Path) -> None:
    backend = Backend(down=True)
    queue = SendingQueue(make_settings("otlp"), queue_config(tmp_path), backend.push, retry=FAST_RETRY)
    await queue.start()
    for batch in batches(3):
        queue.offer(Signal.TRACES, batch)
    await asyncio.sleep(0.05)
    assert len(queue) > 0
    assert queue.held_items() == 0  # on disk, sent after a restart
    await queue.shutdown(time.monotonic() + 0.2)


async def test_a_restart_on_a_full_volume_opens_the_queue_and_delivers_what_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The volume filled while batches waited (pass 90): opening rewrote the ack log, which failed, so the agent
    could not start (and a SIGHUP stopped a running one). Now the log is appended to as it is, a segment that
    cannot be begun is begun at the next put, and the queue delivers what it holds, which frees the space."""
    sent = batches(4)
    await queue_while_down(queue_config(tmp_path), sent)
    directory = tmp_path / "otlp"
    (directory / "acks.log.tmp").mkdir()  # the rewrite's temporary file cannot be written, as on a full volume
    begin_segment = PersistentStore._start_segment
    full = True

    def start_segment(store: PersistentStore) -> None:
        if full:
            raise OSError(28, "No space left on device")
        begin_segment(store)

    monkeypatch.setattr(PersistentStore, "_start_segment", start_segment)
    metrics = SelfMetrics()
    backend = Backend()
    queue = SendingQueue(make_settings("otlp", metrics), queue_config(tmp_path), backend.push)
    await queue.start()
    with pytest.raises(Refused):  # nothing can be written yet: the sender is refused, retryably
        queue.offer(Signal.TRACES, batches(1, seed=9)[0])
    full = False
    queue.offer(Signal.TRACES, batches(1, seed=9)[0])  # a segment begun now
    await run_until_delivered(queue, backend, len(sent) + 1, start=False)
    assert backend.received[: len(sent)] == sent
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_errors_total", reason="ack_log") == 1
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_errors_total", reason="segment") >= 1


async def test_a_delivered_segment_that_cannot_be_removed_is_counted_and_the_queue_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing a delivered segment failed (an immutable file, a read-only remount) after its descriptor was
    closed, and the closed descriptor stayed on the list (pass 90): the byte bound shrank for good and the next
    close() failed before releasing the directory's lock, so a reload could not open the queue again."""
    config = queue_config(tmp_path, storage={"directory": str(tmp_path), "segment_mib": 1, "sync_interval": "0s"})
    sent = batches(60, seed=8)
    for batch in sent:  # 40 KB more each, so that they fill two 1 MiB segments
        batch.resource_spans[0].resource.attributes.add(key="pad", value={"string_value": "x" * 40_000})
    await queue_while_down(config, sent)
    assert len(segments(tmp_path)) >= 3
    unlink = Path.unlink

    def refuse_segments(path: Path, missing_ok: bool = False) -> None:
        if path.suffix == ".seg":
            raise PermissionError(1, "Operation not permitted", str(path))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse_segments)
    metrics = SelfMetrics()
    backend = Backend()
    queue = SendingQueue(make_settings("otlp", metrics), config, backend.push)
    await queue.start()
    store = queue._store
    assert isinstance(store, PersistentStore)
    deadline = time.monotonic() + 10
    while len(backend.received) < len(sent) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)  # the last ack
    assert backend.received == sent
    assert store.bytes == sum(segment.size for segment in store._segments)  # the bound counts live segments only
    await queue.shutdown(time.monotonic() + 2)
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_errors_total", reason="delete") >= 2
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total") == 0

    # The lock was released, and the files left behind hold nothing to send again.
    again = Backend()
    second = SendingQueue(make_settings("otlp"), config, again.push)
    await second.start()
    await asyncio.sleep(0.2)
    await second.shutdown(time.monotonic() + 2)
    assert again.received == []


async def test_a_delivered_damaged_segment_that_cannot_be_set_aside_is_not_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its records all acked, its tail damaged, and its rename to *.damaged refused: the rewrite of the ack log
    left its acks out, so the next start sent its records again (pass 92)."""
    import struct

    await queue_while_down(queue_config(tmp_path), batches(3))
    [segment] = [path for path in segments(tmp_path) if path.stat().st_size]
    with open(tmp_path / "otlp" / "acks.log", "ab") as log:  # delivered before a crash took the unlink
        log.write(b"".join(struct.pack("<cQ", b"A", seq) for seq in (1, 2, 3)))
    with open(segment, "ab") as data:
        data.write(b"\x00garbage tail" * 3)
    rename = Path.rename

    def refuse_segments(path: Path, target: Any) -> Path:
        if path.suffix == ".seg":
            raise PermissionError(1, "Operation not permitted", str(path))
        return rename(path, target)

    monkeypatch.setattr(Path, "rename", refuse_segments)
    for _ in range(2):
        backend = Backend()
        queue = SendingQueue(make_settings("otlp"), queue_config(tmp_path), backend.push, retry=FAST_RETRY)
        await queue.start()
        await asyncio.sleep(0.2)
        await queue.shutdown(time.monotonic() + 2)
        assert backend.received == []
    assert segment.exists()


async def test_an_open_that_fails_releases_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while recovering kept the lock and descriptors: the reload's fallback to the previous config
    then found the directory 'in use by another agent' and the agent exited (pass 92)."""
    await queue_while_down(queue_config(tmp_path), batches(2))

    def unusable(store: PersistentStore) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(PersistentStore, "_open_ack_log", unusable)
        failing = SendingQueue(make_settings("otlp"), queue_config(tmp_path), Backend().push)
        with pytest.raises(OSError, match="Input/output error"):
            await failing.start()
    backend = Backend()
    await run_until_delivered(SendingQueue(make_settings("otlp"), queue_config(tmp_path), backend.push), backend, 2)
    assert len(backend.received) == 2


async def test_a_queue_opening_while_its_lock_is_probed_waits_the_probe_out(tmp_path: Path) -> None:
    """The check for abandoned queue directories takes a lock for a moment: an agent opening its queue then was
    refused as if another agent held the directory."""
    import fcntl

    await queue_while_down(queue_config(tmp_path), batches(1))
    probe = os.open(tmp_path / "otlp" / "lock", os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    asyncio.get_running_loop().call_later(0.05, os.close, probe)
    backend = Backend()
    await run_until_delivered(SendingQueue(make_settings("otlp"), queue_config(tmp_path), backend.push), backend, 1)
    assert len(backend.received) == 1


async def test_a_full_disk_under_the_active_segment_is_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A segment write that fails (a full volume, here /dev/full) refuses the sender, as documented, and is
    counted in persistent_queue_errors_total{reason="segment"} and logged: otherwise the operator sees only
    enqueue_failed_items_total, which reads as a full queue, and nothing in the agent's log says the disk is full."""
    metrics = SelfMetrics()
    queue, store, _backend = await started_queue(tmp_path, metrics)
    assert store._active is not None
    os.close(store._active.fd)
    store._active.fd = os.open("/dev/full", os.O_WRONLY)
    with caplog.at_level("WARNING"), pytest.raises(Refused, match="No space left on device"):
        queue.offer(Signal.TRACES, batches(1)[0])
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_persistent_queue_errors_total", reason="segment") >= 1
    assert any("disk" in record.getMessage() for record in caplog.records)
    store._active.fd = os.open(store._active.path, os.O_RDWR | os.O_APPEND)
    await queue.shutdown(time.monotonic() + 2)


async def test_a_second_unreadable_segment_does_not_overwrite_the_one_set_aside_before(tmp_path: Path) -> None:
    """A segment set aside as ``*.damaged`` is kept for the operator ("rather than deleted"). The queue's next
    segment may take the same number (its sequence restarts from the acknowledgement log), so a second unreadable
    segment of that name, set aside at a later start, must not replace the first one."""
    await queue_while_down(queue_config(tmp_path), batches(1))
    (segment,) = [p for p in segments(tmp_path) if p.stat().st_size]
    first = b"first damage, nothing readable " * 40
    for path in segments(tmp_path):
        path.unlink()
    for path in tmp_path.rglob("acks.log"):
        path.write_bytes(b"")
    segment.write_bytes(first)  # nothing readable, no acknowledgements: set aside at the next start
    await queue_while_down(queue_config(tmp_path), [])
    assert segment.with_suffix(".damaged").read_bytes() == first
    assert segment.exists()  # the new queue began a segment of the same name
    segment.write_bytes(b"second damage, nothing readable " * 40)
    await queue_while_down(queue_config(tmp_path), [])
    kept = sorted(p.read_bytes() for p in tmp_path.rglob("*.damaged*"))
    assert first in kept, "the segment set aside first was overwritten"


def test_a_segment_set_aside_takes_the_first_name_not_taken(tmp_path: Path) -> None:
    """Set aside at a third start, a segment of a number set aside twice before keeps both earlier ones."""
    from agent.exporters._helper.persistent_queue import _free_name

    damaged = tmp_path / "00000001.damaged"
    assert _free_name(damaged) == damaged
    damaged.write_bytes(b"first")
    assert _free_name(damaged) == tmp_path / "00000001.damaged.1"
    (tmp_path / "00000001.damaged.1").write_bytes(b"second")
    assert _free_name(damaged) == tmp_path / "00000001.damaged.2"
