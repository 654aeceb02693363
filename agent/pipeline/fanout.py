"""Fan-out of one batch to several consumers, honouring the ownership rule without needless copies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from agent.component import Consumer, Refused

_MAX_REFUSED_BATCHES = 64


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

    If a later target refuses, earlier ones keep what they took. Offered the same batch object again (the
    ingest queue retries a refused batch as it is), the fan-out resumes at the target that refused, so no target
    receives it twice; this holds per batch, as several feeders (receivers, connectors) may share one fan-out
    and interleave their retries.
    """

    def __init__(self, targets: Sequence[Target]) -> None:
        self._targets = sorted(targets, key=lambda t: (t.mutates, not t.retains))
        shared_by_retainer = any(t.retains and not t.mutates for t in self._targets)
        last = len(self._targets) - 1
        self._needs_copy = [
            t.mutates and (index != last or shared_by_retainer) for index, t in enumerate(self._targets)
        ]
        self._consume_sized = [getattr(t.consumer, "consume_sized", None) for t in self._targets]
        # id(batch) -> (batch, index of the target that refused it, what that target was given); the batch is held
        # so that its id stays its own, and the copy a mutating target refused is given again on the retry, so that
        # the fan-outs inside its pipeline recognise it too and resume where they stopped. Bounded: a feeder that
        # gives up a refused batch (a connector sends a fresh one) never comes back.
        self._refused: dict[int, tuple[Message, int, Message]] = {}

    def consume(self, batch: Message) -> None:
        self.consume_sized(batch, None)

    def consume_sized(self, batch: Message, size: int | None) -> None:
        """``consume``, passing the batch's size on to the targets that take one (``consume_sized``)."""
        refused = self._refused.pop(id(batch), None)
        start, given_before = (refused[1], refused[2]) if refused is not None and refused[0] is batch else (0, None)
        for index in range(start, len(self._targets)):
            given = given_before if index == start and given_before is not None else self._own_for(index, batch)
            try:
                self._deliver(index, given, size)
            except Refused:
                self._remember_refused(batch, index, given)
                raise

    def _remember_refused(self, batch: Message, index: int, given: Message) -> None:
        if len(self._refused) >= _MAX_REFUSED_BATCHES:
            del self._refused[next(iter(self._refused))]  # the oldest
        self._refused[id(batch)] = (batch, index, given)

    def _own_for(self, index: int, batch: Message) -> Message:
        """The batch itself, or a copy for a target whose mutation others could see."""
        if not self._needs_copy[index]:
            return batch
        clone = type(batch)()
        clone.CopyFrom(batch)
        return clone

    def _deliver(self, index: int, batch: Message, size: int | None) -> None:
        consume_sized = self._consume_sized[index]
        if size is not None and consume_sized is not None:
            consume_sized(batch, size)
        else:
            self._targets[index].consumer.consume(batch)


def fan_out(targets: Sequence[Target]) -> Consumer:
    if len(targets) == 1:
        return targets[0].consumer
    return FanOut(targets)
