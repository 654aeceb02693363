"""The bounded buffer between a receiver and its pipelines.

A receiver answers the sender as soon as a batch is in this queue, so an ``Export`` call costs decoding and
validation only, never the pipeline's work (span metrics, sampling): the orchestrator is not slowed by the
agent, and Export latency does not grow with the pipeline. The queue is bounded by items and by bytes (as
received), across signals; when it is full the receiver refuses with a retryable answer. One worker per
receiver feeds the pipelines in arrival order, across signals (a log that arrived after its trace's spans is
processed after them, as the tail sampler expects).

Signals are independent, as the Collector's pipelines are: each has its own lane. When a signal's pipelines
refuse (a full sampler buffer, a full sending queue because its backend is down), the worker keeps that lane's
head batch, offers it again after a pause, and meanwhile feeds the other signals; while the lane holds the
refused batch, the receiver refuses new batches of that signal with the pipelines' reason, so the sender
retries later and memory the pipelines cannot take does not pile up here instead. A refusal marked
``process_wide`` (the memory limiter: memory is the process's, not a pipeline's) refuses every signal. The
bounds stay the receiver's: batches a lane took before its pipelines refused count in them until taken; but
while some lane's pipelines refuse, another signal may still hold its share of the bounds (a third with three
signals) beyond them, or a burst taken just before an outage would refuse the healthy signals for all of it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from google.protobuf.message import Message

from agent.component import Consumer, CreateSettings, PermanentError, Refused, Signal, consume_with_size
from agent.config.service import IngestConfig
from agent.otlp.signals import SPECS
from agent.telemetry.logs import RateLimitedLog
from agent.waits import wait_event

# How soon the worker offers a refused batch again: 50 ms, doubling while it stays refused, up to 400 ms. Each
# offer runs the stages before the refusing one again (redaction scans all the text of a batch), which a long
# outage must not turn into a busy loop; a pipeline that takes it again soon waits little.
_REFUSAL_PAUSE = 0.05
_MAX_REFUSAL_PAUSE = 0.4


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

    def memory_refusal(self) -> Refused | None:
        """The refusal a batch would meet now because the process is short of memory (see ``IngestQueue``)."""
        return self._queue.memory_refusal()


class _Entry(NamedTuple):
    seq: int  # arrival number across signals: the worker feeds the oldest head first
    batch: Message
    items: int
    size: int


@dataclass(eq=False)
class _Lane:
    """One signal's accepted batches in arrival order, and the refusal of the one at its head, until it is taken."""

    signal: Signal
    entries: collections.deque[_Entry] = field(default_factory=collections.deque)
    refusal: Refused | None = None
    retry_at: float = 0.0  # monotonic instant before which the refused head is not offered again
    pause: float = 0.0  # the last wait before offering the refused head again
    items: int = 0  # in ``entries``
    bytes: int = 0

    def refusing(self) -> Refused | None:
        """The refusal that still holds: only while the refused batch is here (shutdown may have counted it)."""
        return self.refusal if self.entries else None


class IngestQueue:
    """Takes batches at once (or refuses when full) and feeds each signal's pipelines from one task, in order."""

    def __init__(self, settings: CreateSettings, downstream: Mapping[Signal, Consumer], config: IngestConfig) -> None:
        self._settings = settings
        self._downstream = dict(downstream)
        self._capacity = config.queue_items
        self._capacity_bytes = config.queue_mib * 1024 * 1024
        self._lanes = {signal: _Lane(signal) for signal in self._downstream}
        self._arrivals = itertools.count()
        self._batches = 0  # in every lane
        self._items = 0
        self._bytes = 0
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
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
        lane = self._lanes[signal]
        over = self._items + items > self._capacity or self._bytes + size > self._capacity_bytes
        if self._batches and over and not self._within_share_beside_refused_lanes(lane, items, size):
            raise Refused(f"ingest queue of {self._settings.component_id} is full")
        refusal = self._refusal_for(signal)
        if refusal is not None:
            raise Refused(refusal.reason)
        lane.entries.append(_Entry(next(self._arrivals), batch, items, size))
        lane.items += items
        lane.bytes += size
        self._batches += 1
        self._items += items
        self._bytes += size
        self._queued.set(self._items)
        self._idle.clear()
        self._ready.set()

    def _within_share_beside_refused_lanes(self, lane: _Lane, items: int, size: int) -> bool:
        """Whether ``lane`` may take a batch past the bounds: another lane holds batches its pipelines refuse, and
        this one stays within its share of the bounds (or is empty: a batch larger than a share is taken alone)."""
        if not any(other is not lane and other.refusing() is not None for other in self._lanes.values()):
            return False
        shares = len(self._lanes)
        return not lane.entries or (
            lane.items + items <= self._capacity // shares and lane.bytes + size <= self._capacity_bytes // shares
        )

    def memory_refusal(self) -> Refused | None:
        """A process-wide refusal (the memory limiter's) in force, if any: a receiver asks before it reads or decodes
        a request, which would otherwise about double what each request in flight holds while memory is short."""
        if self._closing:
            return None
        for lane in self._lanes.values():
            refusal = lane.refusing()
            if refusal is not None and refusal.process_wide:
                return refusal
        return None

    def _refusal_for(self, signal: Signal) -> Refused | None:
        """Why a new ``signal`` batch is refused: its own pipelines refuse, or any signal's say the process is
        short of memory. Another signal's full pipeline is no reason: that would stop healthy pipelines too."""
        return self._lanes[signal].refusing() or self.memory_refusal()

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._work())

    def held_items(self) -> int:
        return self._items

    async def shutdown(self, deadline: float) -> None:
        """Feed everything queued to the pipelines (their receivers have stopped), then stop; count what is left."""
        self._closing = True
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            await wait_event(self._idle, deadline - time.monotonic())
        finally:
            worker.cancel()  # even when this shutdown itself is cancelled, nothing may keep feeding the pipelines
            self._count_left()

    def _count_left(self) -> None:
        if not self._batches:
            return
        left: collections.Counter[str] = collections.Counter()
        for lane in self._lanes.values():
            for entry in lane.entries:
                left[lane.signal.value] += entry.items
                self._dropped.labels(self._settings.component_id, lane.signal.value, "shutdown_timeout").inc(
                    entry.items
                )
            lane.entries.clear()
            lane.items = lane.bytes = 0
        self._settings.logger.error(
            "shutdown deadline reached before the pipelines took every accepted item",
            extra={"receiver": self._settings.component_id, "items": dict(left)},
        )
        self._batches = 0
        self._items = 0
        self._bytes = 0
        self._queued.set(0)

    async def _work(self) -> None:
        while True:
            if not self._batches:
                self._ready.clear()
                self._idle.set()
                await self._ready.wait()
                continue
            lane = self._next_lane()
            if lane is None:
                await self._wait_for_retry_or_arrival()
                continue
            self._feed(lane)
            await asyncio.sleep(0)  # let receivers answer between batches

    def _next_lane(self) -> _Lane | None:
        """The lane whose head arrived first, among those not waiting to offer a refused head again."""
        now = time.monotonic()
        first: _Lane | None = None
        for lane in self._lanes.values():
            if lane.entries and lane.retry_at <= now and (first is None or lane.entries[0].seq < first.entries[0].seq):
                first = lane
        return first

    async def _wait_for_retry_or_arrival(self) -> None:
        """Every lane with batches was refused: sleep until the first may be offered again, or until a new batch
        arrives (its signal's pipelines may well take it)."""
        soonest = min(lane.retry_at for lane in self._lanes.values() if lane.entries)
        self._ready.clear()
        await wait_event(self._ready, soonest - time.monotonic())

    def _feed(self, lane: _Lane) -> None:
        """Offer ``lane``'s head to its pipelines; keep it to offer again if they refuse, else take it off."""
        entry = lane.entries[0]
        try:
            # Stages that bound their memory by bytes take the size the receiver measured (the wire size).
            consume_with_size(self._downstream[lane.signal], entry.batch, entry.size)
        except Refused as refused:
            lane.refusal = refused
            # The pipelines are full: offer it again later, backing off while they stay so.
            lane.pause = min(max(lane.pause * 2, _REFUSAL_PAUSE), _MAX_REFUSAL_PAUSE)
            lane.retry_at = time.monotonic() + lane.pause
            return
        except PermanentError as exc:
            self._drop(lane.signal, entry.items, "rejected", f"the pipeline rejected a batch: {exc}")
        except Exception as exc:  # a processor bug must not stop ingestion
            self._drop(lane.signal, entry.items, type(exc).__name__, f"the pipeline failed on a batch: {exc!r}")
        lane.refusal = None
        lane.pause = 0.0
        lane.entries.popleft()
        lane.items -= entry.items
        lane.bytes -= entry.size
        self._batches -= 1
        self._items -= entry.items
        self._bytes -= entry.size
        self._queued.set(self._items)

    def _drop(self, signal: Signal, items: int, reason: str, message: str) -> None:
        self._dropped.labels(self._settings.component_id, signal.value, reason).inc(items)
        self._log.warning(f"drop:{reason}", message, receiver=self._settings.component_id, items=items)
