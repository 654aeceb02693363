"""The stage model: signals, consumers, components and their factories.

Data moves between stages as the OTLP export request messages themselves
(``ExportTraceServiceRequest`` and friends): no conversion to intermediate objects on the hot path.

Ownership rule (as in the Collector's ``consumer`` package): once ``consume(batch)`` returns, the batch
belongs to the callee; the caller must neither read nor modify it again. A stage that fans out to
several consumers gives each mutating consumer its own copy.
"""

from __future__ import annotations

import builtins
import enum
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from google.protobuf.message import Message

if TYPE_CHECKING:
    from agent.config.service import ServiceConfig
    from agent.telemetry.selfmetrics import SelfMetrics


class Signal(enum.StrEnum):
    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"


class Kind(enum.StrEnum):
    RECEIVER = "receiver"
    PROCESSOR = "processor"
    EXPORTER = "exporter"
    CONNECTOR = "connector"

    @property
    def section(self) -> str:
        return self.value + "s"


class Refused(Exception):
    """The pipeline cannot take the batch now (a full buffer); the sender should retry after ``retry_after``.

    Nothing of the refused batch has been accepted, so a retry does not duplicate data. ``process_wide`` says
    the whole agent cannot take data now (memory), not only this pipeline: the ingest queue then refuses every
    signal, where a pipeline's own full buffer refuses its signal only.
    """

    def __init__(self, reason: str, retry_after: float = 1.0, *, process_wide: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.process_wide = process_wide


class PermanentError(Exception):
    """The batch can never be accepted (bad data); retrying it is pointless."""


@runtime_checkable
class Consumer(Protocol):
    """A stage that takes batches of one signal.

    ``consume`` never blocks: it either takes ownership of the batch, or raises :class:`Refused`
    (retryable, nothing taken) or :class:`PermanentError`.
    """

    def consume(self, batch: Message) -> None: ...


def consume_with_size(consumer: Consumer, batch: Message, size: int) -> None:
    """Hand ``batch`` on with the size it had as received, to a consumer that takes one (``consume_sized``: the
    ingest queue, the fan-out, the tail sampler bound their memory by it); ``consume`` for any other."""
    consume_sized = getattr(consumer, "consume_sized", None)
    if consume_sized is not None:
        consume_sized(batch, size)
    else:
        consumer.consume(batch)


class Component(Protocol):
    """Lifecycle shared by every stage.

    ``start`` runs on the agent's event loop before any data arrives. ``shutdown`` flushes what the
    component holds to its consumers, then releases resources; it must be idempotent, safe to call
    without ``start``, and finish by ``deadline`` (a ``time.monotonic()`` instant). A component may also
    define ``receivers_stopped()``, called once every receiver has stopped and before anything is flushed, and
    ``certificates()``, the TLS certificates it presents (``LoadedCertificate``), read after its start for the
    agent's certificate-expiry gauge, and ``held_items()``, the accepted items only its memory holds, which a
    second SIGTERM reports lost.
    """

    async def start(self) -> None: ...

    async def shutdown(self, deadline: float) -> None: ...


class Exporter(Component, Protocol):
    """A pipeline end; one instance serves every pipeline (and signal) that names it."""

    def consumer_for(self, signal: Signal) -> Consumer: ...


@dataclass(frozen=True)
class CreateSettings:
    """What every component is built with: its identity, a logger, the agent's own metrics, the service config.

    ``shared`` is one dict per agent: instances of the same component in several pipelines (a processor in
    the traces and the logs pipeline) keep their common state under their component id there, never in
    module globals, so several agents can run in one process (tests).
    """

    component_id: str
    kind: Kind
    logger: logging.Logger
    metrics: SelfMetrics
    service: ServiceConfig
    shared: dict[str, Any]


C = TypeVar("C")


@dataclass(frozen=True)
class Factory(Generic[C]):
    """How to configure and build one component type (``otlp``, ``file``, ``tail_sampling`` …).

    ``create`` signatures by kind:
      - receiver:  ``create(cfg, settings, consumers: Mapping[Signal, Consumer]) -> Component``
      - processor: ``create(cfg, settings, signal, next_consumer) -> Component & Consumer``
      - exporter:  ``create(cfg, settings) -> Exporter``
      - connector: ``create(cfg, settings, consumers: Mapping[Signal, Consumer]) -> Exporter``
        (it is an exporter in its input pipelines and a receiver of its output pipelines).
    """

    kind: Kind
    type: str
    config_class: builtins.type[C]  # `type` is a field of this class
    signals: frozenset[Signal]
    create: Callable[..., Any]
    description: str
    output_signals: frozenset[Signal] = frozenset()
    # True for a stage that changes the batches it is given; fan-out gives it a copy when others share the batch.
    # Dropping the fields the agent's OTLP does not know, as the OTLP transports do before sending
    # (otlp/transport.py wire_bytes), is not a change in this sense: no stage reads them, no exporter sends them,
    # and it is one C call under the GIL, so a thread encoding the same batch (the file exporter) never sees it half
    # done.
    mutates_data: bool = False
    # False for a stage that is done with a batch when consume() returns (it neither queues nor buffers it);
    # fan-out can then hand the original to a mutating pipeline after it instead of copying. A processor that
    # retains batches must not mutate them and hands its consumer messages of its own (as tail_sampling does).
    retains_data: bool = True
    # Checks that need the whole config (retention classes named by a policy exist, ...):
    # ``cross_check(cfg, agent_config) -> Iterable[(relative_path, message)]``.
    cross_check: Callable[[Any, Any], Iterable[tuple[str, str]]] | None = None
    # The signals whose items an exporter stores or passes on as they are; None: all of ``signals``. An exporter
    # that only derives other data from a signal (Loki: log lines from span events) does not deliver its items,
    # so it does not count as a destination of the retention classes it takes.
    delivers: frozenset[Signal] | None = None

    def delivers_items_of(self, signal: Signal) -> bool:
        return signal in (self.signals if self.delivers is None else self.delivers)


ConsumerMap = Mapping[Signal, Consumer]
