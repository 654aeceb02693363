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


class SizedSink(BatchSink):
    """Keeps every batch and the size it came with, as the stages that take sizes do (the ingest queue, the
    fan-out, the tail sampler): ``consume_sized``."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def consume_sized(self, batch: Message, size: int) -> None:
        self.sizes.append(size)
        self.consume(batch)


class RefusingSink:
    """Refuses everything, as a full pipeline does."""

    def __init__(self, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        self.offered = 0

    def consume(self, batch: Message) -> None:
        self.offered += 1
        raise Refused("buffer full", self.retry_after)
