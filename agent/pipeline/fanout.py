"""Fan-out of one batch to several consumers, honouring the ownership rule without needless copies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from agent.component import Consumer


@dataclass(frozen=True)
class Target:
    consumer: Consumer
    mutates: bool
    retains: bool = True  # keeps a reference after consume() returns (queues, buffers)


class FanOut:
    """Give every target the batch; copy only where a mutation could be seen by someone else.

    Targets run in this order: readers that retain the batch (buffers and queues: the ones that can refuse),
    then readers that are done with it when ``consume`` returns (the span-metrics connector, which never
    refuses), then mutators. A refusal therefore usually comes before anything has counted the batch, so the
    sender's retry does not count it twice. A mutator may take the original when it is the last target and no
    retaining reader shares it; every other mutator gets a copy.

    If a later target refuses, earlier ones keep what they took and the sender's retry duplicates it there:
    at-least-once, as in the Collector.
    """

    def __init__(self, targets: Sequence[Target]) -> None:
        self._targets = sorted(targets, key=lambda t: (t.mutates, not t.retains))
        shared_by_retainer = any(t.retains and not t.mutates for t in self._targets)
        last = len(self._targets) - 1
        self._needs_copy = [
            t.mutates and (index != last or shared_by_retainer) for index, t in enumerate(self._targets)
        ]

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
