"""The bounded buffer between a receiver and its pipelines.

A receiver answers the sender as soon as a batch is in this queue, so an ``Export`` call costs decoding and
validation only, never the pipeline's work (span metrics, sampling): the orchestrator is not slowed by the
agent, and Export latency does not grow with the pipeline. The queue is bounded by items and by bytes (as
received); when it is full the receiver refuses with a retryable answer. One worker per receiver feeds the
pipelines in arrival order, across signals (a log that arrived after its trace's spans is processed after
them, as the tail sampler expects); when they refuse (a full sampler buffer), the worker waits and offers the
same batch again, and while they refuse, the receiver refuses new requests with their reason: the sender
retries later, and memory the pipelines cannot take (a memory limiter says the process is too big, a sampler
buffer is full) does not pile up in the queue instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Mapping

from google.protobuf.message import Message

from agent.component import Consumer, CreateSettings, PermanentError, Refused, Signal, consume_with_size
from agent.config.service import IngestConfig
from agent.otlp.signals import SPECS
from agent.telemetry.logs import RateLimitedLog

_REFUSAL_PAUSE = 0.05  # how soon the worker offers a refused batch again (seconds)


class _SignalEntrance:
    """The ``Consumer`` a receiver calls for one signal; ``consume_sized`` when it knows the request's size."""

    __slots__ = ("_queue", "_signal")

    def __init__(self, queue: IngestQueue, signal: Signal) -> None:
        self._queue = queue
        self._signal = signal

    def consume(self, batch: Message) -> None:
        self._queue.offer(self._signal, batch, batch.ByteSize())

    def consume_sized(self, batch: Message, size: int) -> None:
        self._queue.offer(self._signal, batch, size)


class IngestQueue:
    """Takes batches at once (or refuses when full) and feeds each signal's pipelines from one task, in order."""

    def __init__(self, settings: CreateSettings, downstream: Mapping[Signal, Consumer], config: IngestConfig) -> None:
        self._settings = settings
        self._downstream = dict(downstream)
        self._capacity = config.queue_items
        self._capacity_bytes = config.queue_mib * 1024 * 1024
        self._entries: collections.deque[tuple[Signal, Message, int, int]] = collections.deque()
        self._items = 0
        self._bytes = 0
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._pipelines_refusal: str | None = None  # why the pipelines refused the batch at the head, until taken
        self._log = RateLimitedLog(settings.logger)
        cid = settings.component_id
        m = settings.metrics
        self._queued = m.gauge("ingest_queue_items", "Items accepted and waiting for the pipelines.", ["receiver"])
        self._queued = self._queued.labels(cid)
        m.gauge("ingest_queue_capacity", "Ingest queue capacity in items.", ["receiver"]).labels(cid).set(
            self._capacity
        )
        self._dropped = m.counter(
            "ingest_dropped_items_total",
            "Accepted items the pipelines rejected for good or could not take before the shutdown deadline.",
            ["receiver", "signal", "reason"],
        )

    def consumers(self) -> dict[Signal, Consumer]:
        """What the receiver is given: one entrance per signal that has pipelines."""
        return {signal: _SignalEntrance(self, signal) for signal in self._downstream}

    def offer(self, signal: Signal, batch: Message, size: int) -> None:
        """Queue ``batch`` (``size`` bytes as received) or refuse it; a batch is always taken into an empty queue,
        or one larger than a bound could never be sent."""
        items = SPECS[signal].count_items(batch)
        if self._closing:
            raise Refused("the agent is shutting down")
        if self._entries and (self._items + items > self._capacity or self._bytes + size > self._capacity_bytes):
            raise Refused(f"ingest queue of {self._settings.component_id} is full")
        if self._pipelines_refusal is not None and self._entries:
            raise Refused(self._pipelines_refusal)
        self._entries.append((signal, batch, items, size))
        self._items += items
        self._bytes += size
        self._queued.set(self._items)
        self._idle.clear()
        self._ready.set()

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._work())

    async def shutdown(self, deadline: float) -> None:
        """Feed everything queued to the pipelines (their receivers have stopped), then stop; count what is left."""
        self._closing = True
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), max(deadline - time.monotonic(), 0.0))
        finally:
            worker.cancel()  # even when this shutdown itself is cancelled, nothing may keep feeding the pipelines
            self._count_left()

    def _count_left(self) -> None:
        if not self._entries:
            return
        left: collections.Counter[str] = collections.Counter()
        for signal, _, items, _ in self._entries:
            left[signal.value] += items
            self._dropped.labels(self._settings.component_id, signal.value, "shutdown_timeout").inc(items)
        self._settings.logger.error(
            "shutdown deadline reached before the pipelines took every accepted item",
            extra={"receiver": self._settings.component_id, "items": dict(left)},
        )
        self._entries.clear()
        self._items = 0
        self._bytes = 0
        self._queued.set(0)

    async def _work(self) -> None:
        while True:
            if not self._entries:
                self._ready.clear()
                self._idle.set()
                await self._ready.wait()
                continue
            signal, batch, items, size = self._entries[0]
            try:
                # Stages that bound their memory by bytes take the size the receiver measured (the wire size).
                consume_with_size(self._downstream[signal], batch, size)
            except Refused as refused:
                self._pipelines_refusal = refused.reason
                await asyncio.sleep(_REFUSAL_PAUSE)  # the pipelines are full: wait, then offer the same batch
                continue
            except PermanentError as exc:
                self._drop(signal, items, "rejected", f"the pipeline rejected a batch: {exc}")
            except Exception as exc:  # a processor bug must not stop ingestion
                self._drop(signal, items, type(exc).__name__, f"the pipeline failed on a batch: {exc!r}")
            self._pipelines_refusal = None
            self._entries.popleft()
            self._items -= items
            self._bytes -= size
            self._queued.set(self._items)
            await asyncio.sleep(0)  # let receivers answer between batches

    def _drop(self, signal: Signal, items: int, reason: str, message: str) -> None:
        self._dropped.labels(self._settings.component_id, signal.value, reason).inc(items)
        self._log.warning(f"drop:{reason}", message, receiver=self._settings.component_id, items=items)
