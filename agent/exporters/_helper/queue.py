"""The sending path of an exporter: bounded queue → batching → retry → timeout → push.

``offer`` never blocks: when the queue is full by batches, items or bytes it raises :class:`Refused`, which
the receivers turn into a retryable answer for the sender. Workers take requests off the queue, merge them
up to the batch size (waiting at most ``flush_timeout`` for more), and push them through the retry sender.
Every item ends in exactly one counter: sent, failed (by reason), or still queued.

The queue lives in memory, or on disk when ``storage.directory`` is set (see ``persistent_queue``): then data
accepted survives a crash and is delivered after the restart, and shutdown leaves what it cannot deliver on
disk instead of dropping it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from google.protobuf.message import Message

from agent.component import CreateSettings, Refused, Signal
from agent.config.schema import Duration, setting
from agent.exporters._helper.batcher import BatchConfig, merge, split
from agent.exporters._helper.retry import (
    ExportAborted,
    PermanentExportError,
    RetryableError,
    RetryConfig,
    RetryingSender,
    SendProgress,
)
from agent.otlp.signals import SPECS
from agent.telemetry.logs import RateLimitedLog
from agent.waits import wait_event

SEND_FAILED_DOC = "Items an exporter gave up on."
DUPLICATES_DOC = (
    "Items sent again after an attempt whose outcome was unknown (a timeout, or a crash between sending and "
    "recording the result), once per such attempt: each is a copy the backend may hold (at-least-once)."
)


@dataclass(frozen=True)
class StorageConfig:
    directory: str = setting(
        "",
        doc="Keep the queue on disk in this directory (a subdirectory per exporter): accepted data survives a "
        "crash and is delivered after the restart. Empty keeps the queue in memory.",
    )
    segment_mib: int = setting(8, doc="Size at which a queue file is closed and a new one begun.", minimum=1)
    sync_interval: Duration = setting(
        Duration(0.2),
        doc="How often queue files are fsync'd. Every request is written to the OS before it is acknowledged "
        "(survives a crash of the agent); fsync also covers a crash of the machine. 0 fsyncs every write.",
    )


@dataclass(frozen=True)
class SendingQueueConfig:
    queue_size: int = setting(1000, doc="Most batches held waiting for export.", minimum=1)
    max_items: int = setting(
        200_000, doc="Most items (spans, log records, data points) held waiting for export.", minimum=1
    )
    max_bytes: int = setting(
        64 * 1024 * 1024,
        doc="Most bytes (serialized size) held waiting for export; with `storage`, the size of the queue files.",
        minimum=1,
    )
    num_consumers: int = setting(2, doc="Concurrent exports.", minimum=1, maximum=64)
    storage: StorageConfig = setting(doc="Persistent queue.", default_factory=StorageConfig)


@dataclass
class QueueEntry:
    """One accepted request. ``batch`` is None while a persistent entry's payload is still on disk."""

    signal: Signal
    items: int
    size: int
    batch: Message | None
    enqueued: float
    seq: int = 0
    maybe_duplicate: bool = False


class MemoryStore:
    """The in-memory queue: a deque."""

    persistent = False

    def __init__(self) -> None:
        self._entries: collections.deque[QueueEntry] = collections.deque()
        self.items = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def put(self, signal: Signal, batch: Message, items: int, size: int) -> None:
        self._entries.append(QueueEntry(signal, items, size, batch, time.monotonic()))
        self.items += items
        self.bytes += size

    def peek(self) -> QueueEntry | None:
        return self._entries[0] if self._entries else None

    def pop(self) -> QueueEntry:
        entry = self._entries.popleft()
        self.items -= entry.items
        self.bytes -= entry.size
        return entry

    def load(self, entry: QueueEntry) -> Message:
        assert entry.batch is not None
        return entry.batch

    def begin(self, entries: list[QueueEntry]) -> None:
        return None

    def unbegin(self, entries: list[QueueEntry]) -> None:
        return None

    def ack(self, entries: list[QueueEntry]) -> None:
        return None

    def unacked(self) -> int:
        return len(self._entries)

    def drain(self) -> list[QueueEntry]:
        left = list(self._entries)
        self._entries.clear()
        self.items = self.bytes = 0
        return left


class _Outcome(enum.Enum):
    SENT = "sent"
    DROPPED = "dropped"
    ABORTED = "aborted"


@dataclass
class _Group:
    """Requests a worker took to send as one export; ``items`` is what is not yet counted as sent or failed."""

    entries: list[QueueEntry]
    items: int = 0
    # The request being pushed and its items before the push, which may deliver part of it and leave only the
    # rest in it (loadbalancing): what a cut-short push delivered is counted as sent, not lost.
    sending: Message | None = None
    sending_items: int = 0
    progress: SendProgress = field(default_factory=SendProgress)  # of the push of ``sending``

    def __post_init__(self) -> None:
        self.items = sum(e.items for e in self.entries)

    def settle_partial_delivery(self, signal: Signal, settled_of: SettledOf | None) -> tuple[int, int]:
        """Items the request being pushed had delivered, and had refused for good, when the push was cut short
        (taken off ``items``): what a push took out of the request (loadbalancing), or what ``settled_of`` says
        (loki, whose pushes of one batch go one by one)."""
        if self.sending is None:
            return 0, 0
        delivered = max(self.sending_items - SPECS[signal].count_items(self.sending), 0)
        rejected = 0
        if settled_of is not None:
            settled, rejected = settled_of(self.sending)
            delivered += settled - rejected
        self.items -= delivered + rejected
        self.sending = None
        return delivered, rejected

    def unsettled(self, settled_of: SettledOf | None) -> int:
        """``items`` less what the push under way has already settled, as ``settle_partial_delivery`` counts it.
        Loadbalancing takes a part out of the request at the end of an attempt: while one is under way, the parts
        gateways have already taken still count."""
        if self.sending is None:
            return self.items
        delivered = max(self.sending_items - SPECS[self.entries[0].signal].count_items(self.sending), 0)
        if settled_of is not None:
            delivered += settled_of(self.sending)[0]
        return max(self.items - delivered, 0)

    def append(self, entry: QueueEntry) -> None:
        self.entries.append(entry)
        self.items += entry.items


Push = Callable[[Signal, Message], Awaitable["int | None"]]
# Of a request being pushed: the items the backend already settled, and how many of those it refused for good.
SettledOf = Callable[[Message], tuple[int, int]]


class SendingQueue:
    """Owns the bounded queue and the workers that push batches.

    ``push(signal, batch)`` returns normally on success, optionally with the number of items the backend
    rejected in a partial-success answer; it raises ``RetryableError`` or ``PermanentExportError`` (see
    ``retry``). ``retry``, ``timeout`` and ``batch`` are optional so plain exporters (``file``) keep the
    simple behaviour: one attempt per request, failures counted.
    """

    def __init__(
        self,
        settings: CreateSettings,
        config: SendingQueueConfig,
        push: Push,
        *,
        retry: RetryConfig | None = None,
        timeout: float | None = None,
        batch: BatchConfig | None = None,
        settled_of: SettledOf | None = None,
    ) -> None:
        self._settings = settings
        self._settled_of = settled_of
        self._config = config
        self._batch = batch if batch is not None and batch.enabled else None
        self._retry_enabled = retry is not None and retry.enabled
        self._sender = RetryingSender(settings, retry, timeout, push)
        self._aborted_maybe_delivered = False  # of the last push shutdown interrupted
        self._store = self._make_store(settings, config)
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight: list[_Group] = []  # taken by the workers, not yet settled
        self._workers: list[asyncio.Task[None]] = []
        self._opened = False
        self._closed = False
        self._stop_taking = False
        self._log = RateLimitedLog(settings.logger)
        # Items given up while the shutdown flush ran, by signal and reason: their warnings are rate-limited, and
        # the last ones of a flush would otherwise never be written (logged whole when the flush ends).
        self._dropped_closing: collections.Counter[tuple[str, str]] = collections.Counter()
        self._init_metrics()

    @staticmethod
    def _make_store(settings: CreateSettings, config: SendingQueueConfig) -> MemoryStore:
        if not config.storage.directory:
            return MemoryStore()
        from agent.exporters._helper.persistent_queue import PersistentStore, queue_directory

        directory = queue_directory(config.storage.directory, settings.component_id)
        return PersistentStore(directory, config.storage, settings)  # type: ignore[return-value]

    def _init_metrics(self) -> None:
        cid = self._settings.component_id
        m = self._settings.metrics
        self._sent = m.counter("exporter_sent_items_total", "Items exported successfully.", ["exporter", "signal"])
        self._failed = m.counter("exporter_send_failed_items_total", SEND_FAILED_DOC, ["exporter", "signal", "reason"])
        self._rejected = m.counter(
            "exporter_rejected_items_total",
            "Items the backend refused for good (a permanent error answer, or the rejected part of a partial success).",
            ["exporter", "signal"],
        )
        self._duplicates = m.counter("exporter_duplicates_total", DUPLICATES_DOC, ["exporter", "signal"])
        self._enqueue_failed = m.counter(
            "exporter_enqueue_failed_items_total",
            "Items refused because the sending queue was full (the sender was told to retry).",
            ["exporter", "signal"],
        )
        m.gauge("exporter_queue_capacity", "Sending queue capacity in batches.", ["exporter"]).labels(cid).set(
            self._config.queue_size
        )
        self._queue_size = m.gauge("exporter_queue_size", "Batches waiting in the sending queue.", ["exporter"]).labels(
            cid
        )
        self._queue_bytes = m.gauge("exporter_queue_bytes", "Bytes waiting in the sending queue.", ["exporter"]).labels(
            cid
        )
        self._in_flight_items = m.gauge(
            "exporter_in_flight_items",
            "Items the consumers took from the sending queue and have not settled: being sent, or waiting to be sent"
            " again after a failure (not in exporter_queue_size).",
            ["exporter"],
        ).labels(cid)
        self._queue_fill = m.gauge(
            "exporter_queue_fill_ratio",
            "How full the sending queue is by its tightest bound (batches, items or bytes): at 1 it refuses data.",
            ["exporter"],
        ).labels(cid)
        self._latency = m.histogram("exporter_send_duration_seconds", "Time to export one batch.", ["exporter"]).labels(
            cid
        )

    # --- intake ----------------------------------------------------------------------------------------------------

    def offer(self, signal: Signal, batch: Message) -> None:
        items = SPECS[signal].count_items(batch)
        if self._closed or (self._store.persistent and not self._opened):
            self._refuse(signal, items, f"exporter {self._settings.component_id} is not running")
        size = batch.ByteSize()
        store, config = self._store, self._config
        # A request larger than a whole bound is still taken into an empty queue, or it could never be sent.
        full = len(store) >= config.queue_size or (
            len(store) > 0 and (store.items + items > config.max_items or store.bytes + size > config.max_bytes)
        )
        if full:
            self._refuse(signal, items, f"sending queue of {self._settings.component_id} is full")
        try:
            store.put(signal, batch, items, size)
        except OSError as exc:  # a full or broken disk under a persistent queue: the sender keeps the data
            self._refuse(signal, items, f"cannot write the persistent queue: {exc.strerror or exc}")
        self._update_gauges()
        self._idle.clear()
        self._ready.set()

    def _refuse(self, signal: Signal, items: int, reason: str) -> None:
        self._enqueue_failed.labels(self._settings.component_id, signal.value).inc(items)
        raise Refused(reason)

    # --- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._store.open()
        self._opened = True
        self._update_gauges()
        if len(self._store):
            self._idle.clear()
            self._ready.set()
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._config.num_consumers)]

    @property
    def closing(self) -> bool:
        """Shutting down: a batch failing now may not be retried before the deadline."""
        return self._closed

    async def shutdown(self, deadline: float) -> None:
        """Stop accepting, drain until ``deadline``, stop the workers; report what is left.

        A persistent queue stops draining at the first failure (its data is safe on disk); a memory queue
        keeps retrying until the deadline, then counts what it could not deliver.
        """
        if self._closed:
            return
        self._closed = True
        self._ready.set()  # wake workers waiting to fill a batch: nothing more will come
        if self._store.persistent:
            self._sender.interrupt()
        if self._workers:
            await wait_event(self._idle, deadline - time.monotonic())
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
        self._report_dropped_closing()
        self._report_left()
        await self._store.close()

    def __len__(self) -> int:
        return len(self._store)

    def held_items(self) -> int:
        """Items only memory holds, queued or being sent: what the process exiting now would lose. None with a
        persistent queue, whose records stay on disk until delivered."""
        if self._store.persistent:
            return 0
        return self._store.items + sum(group.unsettled(self._settled_of) for group in self._in_flight)

    # --- workers ---------------------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            while self._stop_taking or self._store.peek() is None:
                self._check_idle()
                self._ready.clear()
                await self._ready.wait()
            group = _Group([self._store.pop()])
            self._in_flight.append(group)
            try:
                if self._batch is not None:
                    await self._gather_more(group)
                self._update_gauges()
                await self._deliver(group)
            except asyncio.CancelledError:
                self._abandon(group)
                raise
            except Exception as exc:  # a broken disk or an exporter bug must not stop this worker for good
                self._fail(group, exc)
            finally:
                self._in_flight.remove(group)
                self._update_gauges()  # a persistent store's bytes fall at the ack, not at the pop
                self._check_idle()

    def parts_in_flight(self) -> list[Message]:
        """The requests the workers are pushing now, retries included: only these can be pushed again, so an
        exporter's state for any other request (given up, delivered, cut by the shutdown) is no longer needed."""
        return [group.sending for group in self._in_flight if group.sending is not None]

    def _check_idle(self) -> None:
        if not self._in_flight and (len(self._store) == 0 or self._stop_taking):
            self._idle.set()

    async def _gather_more(self, group: _Group) -> None:
        """Add queued requests of the same signal until ``min_size`` items, waiting at most ``flush_timeout``."""
        assert self._batch is not None
        min_size, max_size, max_bytes = self._batch.min_size, self._batch.max_size, self._batch.max_bytes
        first = group.entries[0]
        items, size = first.items, first.size
        deadline = first.enqueued + self._batch.flush_timeout
        while items < min_size:
            following = self._store.peek()
            if following is not None:
                if (
                    following.signal is not first.signal
                    or (max_size and items + following.items > max_size)
                    or (max_bytes and size + following.size > max_bytes)
                ):
                    return
                group.append(self._store.pop())
                items += following.items
                size += following.size
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return
            self._ready.clear()
            await wait_event(self._ready, remaining)

    async def _deliver(self, group: _Group) -> None:
        entries = group.entries
        signal = entries[0].signal
        batches = self._load(entries)
        if not batches:
            self._store.ack(entries)
            return
        self._store.begin(entries)
        merged = merge(batches)
        parts = self._parts(signal, merged, group)
        group.items = sum(SPECS[signal].count_items(p) for p in parts)  # what loaded (corrupt records excluded)
        delivered = True
        for index, part in enumerate(parts):
            part_items = SPECS[signal].count_items(part)  # before the push, which may cut the part down
            group.sending, group.sending_items, group.progress = part, part_items, SendProgress()
            outcome = await self._send_part(signal, part, group.progress)
            if outcome is _Outcome.ABORTED:
                if self._store.persistent:
                    self._stop_taking = True  # the rest stays on disk for the next start
                    # A push may have delivered some of the part before the abort, leaving only the rest in it
                    # (loadbalancing: a gateway took its share); the records are resent whole after the restart.
                    cut_down = SPECS[signal].count_items(part) < part_items
                    if index == 0 and not self._aborted_maybe_delivered and not cut_down:
                        # Nothing reached the backend this time, so the resend is no duplicate of this attempt;
                        # records an earlier run may have delivered (before a crash) keep their mark.
                        self._store.unbegin([e for e in entries if not e.maybe_duplicate])
                    group.items = 0
                    return
                self._count_partly_sent(signal, group)
                self._count_failed(signal, group.items, "shutdown")
                group.items = 0
                delivered = False
                break
            group.sending = None
            delivered = delivered and outcome is _Outcome.SENT
            group.items -= part_items
            self._update_gauges()  # in_flight_items: a batch split into parts settles part by part
        duplicates = sum(e.items for e in entries if e.maybe_duplicate)
        if duplicates and delivered:  # re-sent after a restart; the first send may have reached the backend
            self._duplicates.labels(self._settings.component_id, signal.value).inc(duplicates)
        self._store.ack(entries)

    def _count_sent(self, signal: Signal, items: int) -> None:
        """Never creates the series at zero: a sent counter that appears reads as a first delivery (the
        OtelSidecarExporterRetrying alert takes it for one), and giving a batch up delivers nothing."""
        if items > 0:
            self._sent.labels(self._settings.component_id, signal.value).inc(items)

    def _fail(self, group: _Group, exc: Exception) -> None:
        """``_deliver`` raised: count what the group had not settled as failed and take it off the queue (a
        persistent store that cannot record that keeps it on disk, to be sent again after a restart)."""
        signal = group.entries[0].signal
        if group.items:
            self._count_failed(signal, group.items, type(exc).__name__)
            group.items = 0
        self._log.warning(
            f"deliver:{type(exc).__name__}",
            f"the sending queue could not deliver a batch: {exc!r}",
            exporter=self._settings.component_id,
        )
        with contextlib.suppress(Exception):
            self._store.ack(group.entries)

    def _count_partly_sent(self, signal: Signal, group: _Group) -> None:
        delivered, rejected = group.settle_partial_delivery(signal, self._settled_of)
        if rejected:
            self._rejected.labels(self._settings.component_id, signal.value).inc(rejected)
        self._count_sent(signal, delivered)

    def _parts(self, signal: Signal, merged: Message, group: _Group) -> list[Message]:
        """``merged`` cut to ``batch.max_size`` items and ``batch.max_bytes`` bytes."""
        if self._batch is None:
            return [merged]
        limit = self._batch.max_size
        max_bytes = self._batch.max_bytes if sum(e.size for e in group.entries) > self._batch.max_bytes else 0
        if group.items > 1 and (max_bytes or (limit and group.items > limit)):
            return split(signal, merged, limit, max_bytes)
        return [merged]

    def _abandon(self, group: _Group) -> None:
        """A worker was cancelled at the shutdown deadline holding ``group``: count what it did not deliver, and
        apart from it what the backend may have stored (an attempt under way, or an earlier one that timed out)."""
        if not self._store.persistent and group.items:
            signal = group.entries[0].signal
            unconfirmed = self._unconfirmed_items(signal, group)
            self._count_partly_sent(signal, group)
            unconfirmed = min(unconfirmed, group.items)
            undelivered = group.items - unconfirmed
            extra: dict[str, object] = {"exporter": self._settings.component_id}
            if undelivered:
                self._count_failed(signal, undelivered, "shutdown")
                extra["undelivered_items"] = {signal.value: undelivered}
            if unconfirmed:
                self._count_failed(signal, unconfirmed, "unconfirmed")
                extra["unconfirmed_items"] = {signal.value: unconfirmed}
            message = "shutdown deadline reached while sending; the batch was not delivered"
            if unconfirmed:
                message = (
                    "shutdown deadline reached while sending; the backend had not answered, "
                    "and may have stored what it was sent (unconfirmed_items)"
                )
            self._settings.logger.error(message, extra=extra)
            group.items = 0

    def _unconfirmed_items(self, signal: Signal, group: _Group) -> int:
        """Items of the push under way (not yet settled) that the backend may hold: those an earlier attempt sent
        and had no answer for, or what the attempt cut short was sending (as its push reported it)."""
        progress = group.progress
        if group.sending is None:
            return 0
        left = SPECS[signal].count_items(group.sending)
        if self._settled_of is not None:
            left -= self._settled_of(group.sending)[0]
        if progress.maybe_delivered:
            return max(left, 0)
        if progress.attempting:
            return max(left if progress.at_risk is None else min(progress.at_risk, left), 0)
        return 0

    def _load(self, group: list[QueueEntry]) -> list[Message]:
        loaded = []
        for entry in group:
            try:
                loaded.append(self._store.load(entry))
            except ValueError as exc:  # a persistent record that no longer decodes
                self._count_failed(entry.signal, entry.items, "corrupt")
                self._log.warning("load", f"queued request dropped: {exc}", exporter=self._settings.component_id)
        return loaded

    async def _send_part(self, signal: Signal, part: Message, progress: SendProgress) -> _Outcome:
        """Push one request through the retry sender and count the outcome."""
        cid = self._settings.component_id
        items = SPECS[signal].count_items(part)
        started = time.perf_counter()
        try:
            rejected, copies = await self._sender.send(signal, part, progress)
        except ExportAborted as aborted:
            self._aborted_maybe_delivered = aborted.maybe_delivered
            return _Outcome.ABORTED
        except PermanentExportError as exc:
            self._rejected.labels(cid, signal.value).inc(items)
            self._drop(signal, items, exc.reason, f"the backend rejected the batch: {exc}")
        except RetryableError as exc:
            reason = "retries_exhausted" if self._retry_enabled else exc.reason
            if exc.maybe_delivered:
                # An attempt timed out after sending: the backend may hold the batch, even several times.
                reason = "unconfirmed"
            # A push that delivers part of a batch leaves only the rest in it (loadbalancing), or says how much of it
            # is settled (loki): count what is left, and what the parts already delivered had rejected.
            undelivered = max(SPECS[signal].count_items(part) - exc.settled, 0)
            rejected = min(exc.rejected, items - undelivered)
            self._count_sent(signal, items - undelivered - rejected)
            if rejected:
                self._rejected.labels(cid, signal.value).inc(rejected)
            given_up = f" {exc.given_up}" if exc.given_up else ""
            self._drop(signal, undelivered, reason, f"giving up on the batch ({reason}){given_up}: {exc}")
        except Exception as exc:  # an exporter bug must not kill the worker
            self._drop(signal, items, type(exc).__name__, f"export failed: {exc!r}")
        else:
            rejected = min(rejected, items)  # a backend may claim more than it was sent
            self._count_sent(signal, items - rejected)
            if rejected:
                self._rejected.labels(cid, signal.value).inc(rejected)
            if copies:  # items earlier attempts may have delivered, sent again: once per such attempt
                self._duplicates.labels(cid, signal.value).inc(copies)
            return _Outcome.SENT
        finally:
            self._latency.observe(time.perf_counter() - started)
        return _Outcome.DROPPED

    def _drop(self, signal: Signal, items: int, reason: str, message: str) -> None:
        """Data given up is lost: an error, as the Collector's "Exporting failed. Dropping data." is, where a retry
        is a warning."""
        self.count_given_up(signal, items, reason)
        self._log.error(
            f"drop:{signal}:{reason}",
            f"{message}; {items} {SPECS[signal].item_name} dropped",
            exporter=self._settings.component_id,
            signal=signal.value,
            reason=reason,
        )

    def _count_failed(self, signal: Signal, items: int, reason: str) -> None:
        self._failed.labels(self._settings.component_id, signal.value, reason).inc(items)

    def count_given_up(self, signal: Signal, items: int, reason: str) -> None:
        """Count items given up by a push that drops part of a batch itself (a gateway's refusal); they go into the
        flush's summary like the queue's own drops."""
        self._failed.labels(self._settings.component_id, signal.value, reason).inc(items)
        if self._closed:
            self._dropped_closing[(signal.value, reason)] += items

    def _report_dropped_closing(self) -> None:
        if not self._dropped_closing:
            return
        dropped: dict[str, dict[str, int]] = {}
        for (signal, reason), items in self._dropped_closing.items():
            dropped.setdefault(signal, {})[reason] = items
        self._settings.logger.error(
            "items given up while flushing before a shutdown or reload (each reason counted in "
            "otel_sidecar_exporter_send_failed_items_total)",
            extra={"exporter": self._settings.component_id, "dropped_items": dropped},
        )
        self._dropped_closing.clear()

    def _report_left(self) -> None:
        if self._store.persistent:
            left = self._store.unacked()
            if left:
                self._settings.logger.info(
                    "data left in the persistent queue; it is delivered after the next start",
                    extra={"exporter": self._settings.component_id, "batches": left},
                )
            return
        if not len(self._store):
            return
        counts: dict[str, int] = collections.Counter()
        for entry in self._store.drain():
            counts[entry.signal.value] += entry.items
            self._failed.labels(self._settings.component_id, entry.signal.value, "shutdown_timeout").inc(entry.items)
        self._update_gauges()
        self._settings.logger.error(
            "shutdown deadline reached with data still queued; it was not delivered",
            extra={"exporter": self._settings.component_id, "undelivered_items": dict(counts)},
        )

    def _update_gauges(self) -> None:
        store, config = self._store, self._config
        self._queue_size.set(len(store))
        self._queue_bytes.set(store.bytes)
        self._in_flight_items.set(sum(group.unsettled(self._settled_of) for group in self._in_flight))
        self._queue_fill.set(
            max(len(store) / config.queue_size, store.items / config.max_items, store.bytes / config.max_bytes)
        )
