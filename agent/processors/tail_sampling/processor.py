"""The ``tail_sampling`` processor as a pipeline stage: one instance per pipeline, one sampler per component id.

The same component id in the traces and the logs pipeline shares one :class:`TailSampler` (kept in
``settings.shared``), so a log record can wait for the decision on its trace.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from agent.component import Consumer, CreateSettings, Signal
from agent.processors.tail_sampling.config import TailSamplingConfig
from agent.processors.tail_sampling.sampler import Clock, TailSampler


class TailSamplingProcessor:
    """Consumer of one signal; ``start``/``shutdown`` act on the shared sampler (both are idempotent there)."""

    def __init__(self, sampler: TailSampler, signal: Signal) -> None:
        self.sampler = sampler
        self.signal = signal
        self._consume = sampler.consume_spans if signal is Signal.TRACES else sampler.consume_logs

    def consume(self, batch: Message) -> None:
        self._consume(batch)

    def consume_sized(self, batch: Message, size: int) -> None:
        """``consume`` with the request's size as received, which spares measuring it."""
        self._consume(batch, size)

    async def start(self) -> None:
        await self.sampler.start()

    async def shutdown(self, deadline: float) -> None:
        await self.sampler.shutdown(deadline)

    def held_items(self) -> int:
        return self.sampler.held_items(self.signal)

    @property
    def took_over(self) -> bool:
        return self.sampler.took_over

    def take_over_from(self, previous: TailSamplingProcessor) -> None:
        self.sampler.take_over_from(previous.sampler)


def create(
    config: TailSamplingConfig,
    settings: CreateSettings,
    signal: Signal,
    next_consumer: Consumer,
    *,
    clock: Clock | None = None,
) -> TailSamplingProcessor:
    shared: Any = settings.shared
    sampler = shared.get(settings.component_id)
    if sampler is None:
        sampler = TailSampler(config, settings, clock) if clock else TailSampler(config, settings)
        shared[settings.component_id] = sampler
    sampler.attach(signal, next_consumer)
    return TailSamplingProcessor(sampler, signal)
