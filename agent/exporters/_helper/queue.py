"""A bounded sending queue between the pipeline and an exporter's network (or disk) I/O.

``offer`` never blocks: when the queue is full by items or bytes it raises :class:`Refused`, which the
receivers turn into a retryable answer for the sender. Workers take batches off the queue and push them;
at shutdown they drain the queue until the deadline and report whatever is left, with counts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf.message import Message

from agent.component import CreateSettings, Refused, Signal
from agent.config.schema import setting
from agent.otlp.signals import SPECS
from agent.telemetry.logs import RateLimitedLog


@dataclass(frozen=True)
class SendingQueueConfig:
    queue_size: int = setting(1000, doc="Most batches held waiting for export.", minimum=1)
    max_bytes: int = setting(64 * 1024 * 1024, doc="Most bytes (serialized size) held waiting for export.", minimum=1)
    num_consumers: int = setting(2, doc="Concurrent exports.", minimum=1, maximum=64)


@dataclass
class _Entry:
    signal: Signal
    batch: Message
    items: int
    size: int


Push = Callable[[Signal, Message], Awaitable[None]]


class SendingQueue:
    """Owns the bounded queue and the workers that call ``push`` for each batch."""

    def __init__(self, settings: CreateSettings, config: SendingQueueConfig, push: Push) -> None:
        self._settings = settings
        self._config = config
        self._push = push
        self._entries: collections.deque[_Entry] = collections.deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self._log = RateLimitedLog(settings.logger)
        cid = settings.component_id
        m = settings.metrics
        self._sent = m.counter("exporter_sent_items_total", "Items exported successfully.", ["exporter", "signal"])
        self._failed = m.counter(
            "exporter_send_failed_items_total", "Items an exporter gave up on.", ["exporter", "signal", "reason"]
        )
        self._enqueue_failed = m.counter(
            "exporter_enqueue_failed_items_total",
            "Items refused because the sending queue was full (the sender was told to retry).",
            ["exporter", "signal"],
        )
        m.gauge("exporter_queue_capacity", "Sending queue capacity in batches.", ["exporter"]).labels(cid).set(
            config.queue_size
        )
        self._queue_size = m.gauge("exporter_queue_size", "Batches waiting in the sending queue.", ["exporter"]).labels(
            cid
        )
        self._queue_bytes = m.gauge("exporter_queue_bytes", "Bytes waiting in the sending queue.", ["exporter"]).labels(
            cid
        )
        self._latency = m.histogram("exporter_send_duration_seconds", "Time to export one batch.", ["exporter"]).labels(
            cid
        )

    def offer(self, signal: Signal, batch: Message) -> None:
        spec = SPECS[signal]
        items = spec.count_items(batch)
        if self._closed:
            self._enqueue_failed.labels(self._settings.component_id, signal.value).inc(items)
            raise Refused(f"exporter {self._settings.component_id} is shutting down")
        size = batch.ByteSize()
        if len(self._entries) >= self._config.queue_size or self._bytes + size > self._config.max_bytes:
            self._enqueue_failed.labels(self._settings.component_id, signal.value).inc(items)
            raise Refused(f"sending queue of {self._settings.component_id} is full")
        self._entries.append(_Entry(signal, batch, items, size))
        self._bytes += size
        self._update_gauges()
        self._idle.clear()
        self._ready.set()

    async def start(self) -> None:
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._config.num_consumers)]

    async def shutdown(self, deadline: float) -> None:
        """Stop accepting, drain the queue until ``deadline``, then stop the workers; report what is left."""
        self._closed = True
        if not self._workers:
            return
        remaining = deadline - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(remaining, 0.0))
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self._report_abandoned()

    def __len__(self) -> int:
        return len(self._entries)

    async def _work(self) -> None:
        while True:
            if not self._entries:
                self._ready.clear()
                if self._in_flight == 0:
                    self._idle.set()
                await self._ready.wait()
                continue
            entry = self._entries.popleft()
            self._bytes -= entry.size
            self._update_gauges()
            self._in_flight += 1
            try:
                await self._send(entry)
            finally:
                self._in_flight -= 1

    async def _send(self, entry: _Entry) -> None:
        cid, signal = self._settings.component_id, entry.signal.value
        started = time.perf_counter()
        try:
            await self._push(entry.signal, entry.batch)
        except asyncio.CancelledError:
            self._failed.labels(cid, signal, "shutdown").inc(entry.items)
            raise
        except Exception as exc:  # an exporter bug or I/O failure must not kill the worker
            self._failed.labels(cid, signal, type(exc).__name__).inc(entry.items)
            self._log.warning(
                f"send:{type(exc).__name__}",
                f"export failed, {entry.items} {SPECS[entry.signal].item_name} dropped: {exc}",
                exporter=cid,
                signal=signal,
            )
            return
        finally:
            self._latency.observe(time.perf_counter() - started)
        self._sent.labels(cid, signal).inc(entry.items)

    def _report_abandoned(self) -> None:
        if not self._entries:
            return
        counts: dict[str, int] = collections.Counter()
        for entry in self._entries:
            counts[entry.signal.value] += entry.items
            self._failed.labels(self._settings.component_id, entry.signal.value, "shutdown_timeout").inc(entry.items)
        self._entries.clear()
        self._bytes = 0
        self._update_gauges()
        self._settings.logger.error(
            "shutdown deadline reached with data still queued; it was not delivered",
            extra={"exporter": self._settings.component_id, "undelivered_items": dict(counts)},
        )

    def _update_gauges(self) -> None:
        self._queue_size.set(len(self._entries))
        self._queue_bytes.set(self._bytes)
