"""Consumer doubles: collect what a stage passes on, or refuse it."""

from __future__ import annotations

from google.protobuf.message import Message

from agent.component import Refused


class BatchSink:
    """Keeps every batch it is given (the Collector's ``consumertest`` sink)."""

    def __init__(self) -> None:
        self.batches: list[Message] = []

    def consume(self, batch: Message) -> None:
        self.batches.append(batch)


class RefusingSink:
    """Refuses everything, as a full pipeline does."""

    def __init__(self, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        self.offered = 0

    def consume(self, batch: Message) -> None:
        self.offered += 1
        raise Refused("buffer full", self.retry_after)
