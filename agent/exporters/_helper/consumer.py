"""The per-signal face of an exporter that serves several signals."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message

from agent.component import Signal

Accept = Callable[[Signal, Message], None]


class SignalConsumer:
    """A ``Consumer`` for one signal that hands every batch to ``accept(signal, batch)``."""

    __slots__ = ("_accept", "_signal")

    def __init__(self, accept: Accept, signal: Signal) -> None:
        self._accept = accept
        self._signal = signal

    def consume(self, batch: Message) -> None:
        self._accept(self._signal, batch)
