"""Fan-out of one batch to several consumers, honouring the ownership rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from agent.component import Consumer


@dataclass(frozen=True)
class Target:
    consumer: Consumer
    mutates: bool


class FanOut:
    """Give every target the batch; a target that mutates gets its own copy unless nobody else sees the original.

    If a later target refuses, earlier ones keep what they took and the sender's retry duplicates it there:
    at-least-once, as in the Collector. Put the target most likely to refuse first.
    """

    def __init__(self, targets: Sequence[Target]) -> None:
        self._targets = list(targets)
        readers = sum(1 for t in self._targets if not t.mutates)
        # The last mutating target may take the original only when no read-only target shares it.
        self._needs_copy = [t.mutates for t in self._targets]
        if readers == 0:
            self._needs_copy[-1] = False

    def consume(self, batch: Message) -> None:
        for target, copy in zip(self._targets, self._needs_copy, strict=True):
            if copy:
                clone = type(batch)()
                clone.CopyFrom(batch)
                target.consumer.consume(clone)
            else:
                target.consumer.consume(batch)


def fan_out(targets: Sequence[Target]) -> Consumer:
    if len(targets) == 1:
        return targets[0].consumer
    return FanOut(targets)
