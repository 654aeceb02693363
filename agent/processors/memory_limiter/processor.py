"""The ``memory_limiter`` pipeline stage: passes batches on, or refuses them (retryable) while memory is high."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from agent.component import Consumer, CreateSettings, Refused, Signal, consume_with_size
from agent.otlp.signals import SPECS
from agent.processors.memory_limiter.config import MemoryLimiterConfig
from agent.processors.memory_limiter.limiter import MemoryLimiter

REFUSAL = "data refused due to high memory usage"  # the Collector's words, which operators search for
_REMEMBERED_REFUSALS = 64


class MemoryLimiterProcessor:
    """Place it first in a pipeline: a refusal then reaches the receiver before any stage has counted the batch,
    and the receiver refuses the sender (gRPC UNAVAILABLE, HTTP 503, both with a retry delay) until memory is
    below the soft limit again."""

    def __init__(self, limiter: MemoryLimiter, settings: CreateSettings, signal: Signal, next_consumer: Consumer):
        self.limiter = limiter
        self._next = next_consumer
        self._count_items = SPECS[signal].count_items
        self._refused_ids: set[int] = set()
        self._refused = settings.metrics.counter(
            "memory_limiter_refused_items_total",
            "Items refused (retryable) because the agent's memory was above the memory limiter's soft limit.",
            ["processor", "signal"],
        ).labels(settings.component_id, signal.value)

    def consume(self, batch: Message) -> None:
        self._refuse_if_over(batch)
        self._next.consume(batch)

    def consume_sized(self, batch: Message, size: int) -> None:
        self._refuse_if_over(batch)
        consume_with_size(self._next, batch, size)

    def _refuse_if_over(self, batch: Message) -> None:
        if not self.limiter.refusing:
            if self._refused_ids:
                self._refused_ids.clear()
            return
        # The ingest queue offers a refused batch again every 50 ms: counted once, as the sender's one refusal.
        # Ids only: holding the batches would keep memory the limiter is there to free (a connector never offers
        # the same batch twice), at the price of a batch whose id a freed one had going uncounted.
        if id(batch) not in self._refused_ids:
            if len(self._refused_ids) >= _REMEMBERED_REFUSALS:
                self._refused_ids.clear()
            self._refused_ids.add(id(batch))
            self._refused.inc(self._count_items(batch))
        raise Refused(REFUSAL, process_wide=True)  # memory is the process's: every signal is refused meanwhile

    def receivers_stopped(self) -> None:
        self.limiter.stop_refusing("the receivers have stopped: accepted data passes to be flushed")

    async def start(self) -> None:
        await self.limiter.start()

    async def shutdown(self, deadline: float) -> None:
        await self.limiter.shutdown(deadline)


def create(
    config: MemoryLimiterConfig, settings: CreateSettings, signal: Signal, next_consumer: Consumer
) -> MemoryLimiterProcessor:
    shared: Any = settings.shared
    key = f"processors.{settings.component_id}"
    limiter = shared.get(key)
    if limiter is None:
        limiter = shared[key] = MemoryLimiter(config, settings)
    return MemoryLimiterProcessor(limiter, settings, signal, next_consumer)
