"""The pipeline graph: who is built, in which order things start and stop, who gets a copy."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.message import Message

from agent.component import Consumer, CreateSettings, Factory, Kind, Refused, Signal
from agent.config.loader import AgentConfig, ComponentConfig
from agent.config.schema import ConfigInvalid
from agent.config.service import PipelineConfig, ServiceConfig
from agent.pipeline.graph import Graph
from agent.telemetry.logs import JsonFormatter
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.sinks import BatchSink, SizedSink
from agent.testing.workload import Workload


@dataclass(frozen=True)
class Empty:
    pass


class Recorder:
    """A component that logs its lifecycle into a shared journal and keeps what it consumes."""

    def __init__(
        self,
        name: str,
        journal: list[str],
        next_consumer: Consumer | None = None,
        mutate: bool = False,
        logger: logging.Logger | None = None,
    ):
        self.name, self.journal, self.next, self.mutate = name, journal, next_consumer, mutate
        self.logger = logger
        self.batches: list[Message] = []

    def consumer_for(self, signal: Signal) -> Consumer:
        return self

    def consume(self, batch: Message) -> None:
        if self.mutate:
            batch.resource_spans[0].resource.attributes.add(key="touched.by", value={"string_value": self.name})
        self.batches.append(batch)
        if self.next is not None:
            self.next.consume(batch)

    async def start(self) -> None:
        self.journal.append(f"start {self.name}")

    async def shutdown(self, deadline: float) -> None:
        self.journal.append(f"stop {self.name}")


def build(pipelines: dict[str, PipelineConfig], journal: list[str], mutating: set[str] = frozenset()) -> Graph:
    def exporter_factory(name: str) -> Factory[Any]:
        mutates = name.startswith("mutexp")  # changes what it is given (as loadbalancing does at a retry)
        return Factory(
            Kind.EXPORTER,
            "rec",
            Empty,
            frozenset(Signal),
            lambda cfg, s: Recorder(s.component_id, journal, mutate=mutates, logger=s.logger),
            "",
            mutates_data=mutates,
            retains_data=not name.startswith("reader"),  # done with a batch when consume returns
        )

    processor = Factory(
        Kind.PROCESSOR,
        "proc",
        Empty,
        frozenset(Signal),
        lambda cfg, s, signal, nxt: Recorder(s.component_id, journal, nxt, s.component_id in mutating),
        "",
        mutates_data=False,
    )
    mutator = Factory(
        Kind.PROCESSOR,
        "mut",
        Empty,
        frozenset(Signal),
        lambda cfg, s, signal, nxt: Recorder(s.component_id, journal, nxt, True),
        "",
        mutates_data=True,
    )
    in_place = Factory(  # mutates each batch and is done with it when consume returns (as redaction)
        Kind.PROCESSOR,
        "inplace",
        Empty,
        frozenset(Signal),
        lambda cfg, s, signal, nxt: Recorder(s.component_id, journal, nxt, True),
        "",
        mutates_data=True,
        retains_data=False,
    )
    receiver = Factory(
        Kind.RECEIVER, "src", Empty, frozenset(Signal), lambda cfg, s, consumers: Source(consumers, journal), ""
    )
    components = {
        "receivers": {"src": ComponentConfig("src", Kind.RECEIVER, receiver, Empty())},
        "processors": {
            "proc/a": ComponentConfig("proc/a", Kind.PROCESSOR, processor, Empty()),
            "proc/b": ComponentConfig("proc/b", Kind.PROCESSOR, processor, Empty()),
            "mut": ComponentConfig("mut", Kind.PROCESSOR, mutator, Empty()),
            "inplace": ComponentConfig("inplace", Kind.PROCESSOR, in_place, Empty()),
        },
        "exporters": {
            name: ComponentConfig(name, Kind.EXPORTER, exporter_factory(name), Empty())
            for name in ("rec/x", "rec/y", "mutexp", "reader")
        },
    }
    config = AgentConfig(**components, service=ServiceConfig(pipelines=pipelines))
    return Graph(config, SelfMetrics())


class Source:
    def __init__(self, consumers: dict[Signal, Consumer], journal: list[str]) -> None:
        self.consumers, self.journal = consumers, journal

    async def start(self) -> None:
        self.journal.append("start src")

    async def shutdown(self, deadline: float) -> None:
        self.journal.append("stop src")


async def deliver(graph: Graph, batch: Message) -> None:
    """Hand a batch to the receiver's consumer as a receiver does, and let the graph drain it."""
    await graph.start()
    graph.component("src").consumers[Signal.TRACES].consume(batch)
    await graph.shutdown(time.monotonic() + 5)


async def test_downstream_starts_first_and_upstream_stops_first() -> None:
    journal: list[str] = []
    graph = build(
        {"traces": PipelineConfig(receivers=["src"], processors=["proc/a", "proc/b"], exporters=["rec/x"])}, journal
    )
    await graph.start()
    await graph.shutdown(time.monotonic() + 1)
    assert journal == [
        "start rec/x",
        "start proc/b",
        "start proc/a",
        "start src",
        "stop src",
        "stop proc/a",
        "stop proc/b",
        "stop rec/x",
    ]


async def test_an_exporter_named_by_two_pipelines_is_one_instance() -> None:
    graph = build(
        {
            "traces": PipelineConfig(receivers=["src"], exporters=["rec/x"]),
            "logs": PipelineConfig(receivers=["src"], exporters=["rec/x", "rec/y"]),
        },
        [],
    )
    exporters = [instance for kind, _, instance in graph.components if kind is Kind.EXPORTER]
    assert len(exporters) == 2


def test_a_components_log_lines_name_it_by_its_config_path() -> None:
    # A receiver and an exporter are often both "otlp": the id alone would not tell whose line it is.
    graph = build({"traces": PipelineConfig(receivers=["src"], exporters=["rec/x"])}, [])
    [exporter] = [instance for kind, _, instance in graph.components if kind is Kind.EXPORTER]
    record = exporter.logger.makeRecord(exporter.logger.name, logging.WARNING, "", 0, "export failed", (), None)
    assert json.loads(JsonFormatter().format(record))["component"] == "exporters.rec/x"


async def test_a_mutating_pipeline_gets_a_copy_and_readers_see_the_original() -> None:
    graph = build(
        {
            "traces": PipelineConfig(receivers=["src"], processors=["mut"], exporters=["rec/x"]),
            "traces/raw": PipelineConfig(receivers=["src"], exporters=["rec/y"]),
        },
        [],
    )
    batch, _ = next(Workload(seed=2).requests(1))
    await deliver(graph, batch)
    raw = graph.component("rec/y").batches[0]
    mutated = graph.component("rec/x").batches[0]
    assert raw is batch
    assert mutated is not batch
    assert [a.key for a in mutated.resource_spans[0].resource.attributes][-1] == "touched.by"
    assert "touched.by" not in [a.key for a in raw.resource_spans[0].resource.attributes]


async def test_an_exporter_that_changes_its_batch_gets_a_copy_beside_one_that_keeps_it() -> None:
    """Exporters declare it too (the loadbalancing exporter empties a batch it is done with): pass 143 found the
    graph could ignore an exporter's declaration and no test would notice."""
    graph = build({"traces": PipelineConfig(receivers=["src"], exporters=["rec/x", "mutexp"])}, [])
    batch, _ = next(Workload(seed=2).requests(1))
    await deliver(graph, batch)
    assert graph.component("rec/x").batches == [batch] and not touched(batch)
    mutated = graph.component("mutexp").batches[0]
    assert mutated is not batch and touched(mutated)


async def test_a_single_pipeline_passes_the_batch_without_copying() -> None:
    graph = build({"traces": PipelineConfig(receivers=["src"], processors=["mut"], exporters=["rec/x"])}, [])
    batch, _ = next(Workload(seed=2).requests(1))
    await deliver(graph, batch)
    assert graph.component("rec/x").batches[0] is batch


def touched(batch: Message) -> bool:
    return "touched.by" in [a.key for a in batch.resource_spans[0].resource.attributes]


@pytest.mark.parametrize("held_by", ["rec/x", "reader"], ids=["exporter-keeps-it", "exporter-done-with-it"])
async def test_a_mutating_pipeline_gets_a_copy_when_another_pipeline_buffers_the_batch(held_by: str) -> None:
    """A pipeline whose first stage retains batches (a buffer) keeps the very batch it is given, whatever its
    exporters do after it: a mutator beside it must not change it under the buffer."""
    graph = build(
        {
            "traces/held": PipelineConfig(receivers=["src"], processors=["proc/a"], exporters=[held_by]),
            "traces": PipelineConfig(receivers=["src"], processors=["mut"], exporters=["rec/y"]),
        },
        [],
    )
    batch, _ = next(Workload(seed=2).requests(1))
    await deliver(graph, batch)
    assert graph.component("proc/a").batches == [batch]
    assert not touched(batch)
    assert touched(graph.component("rec/y").batches[0])


async def test_a_mutation_before_a_buffer_still_makes_its_pipeline_take_a_copy() -> None:
    """The buffer hands on the batch the in-place mutator already changed: the pipeline mutates its input."""
    graph = build(
        {
            "traces/raw": PipelineConfig(receivers=["src"], exporters=["rec/y"]),
            "traces": PipelineConfig(receivers=["src"], processors=["inplace", "proc/a"], exporters=["rec/x"]),
        },
        [],
    )
    batch, _ = next(Workload(seed=2).requests(1))
    await deliver(graph, batch)
    assert graph.component("rec/y").batches == [batch]
    assert not touched(batch)
    mutated = graph.component("rec/x").batches[0]
    assert mutated is not batch and touched(mutated)


async def test_a_pipeline_of_only_a_mutating_exporter_gets_a_copy_beside_another_pipeline() -> None:
    graph = build(
        {
            "traces/raw": PipelineConfig(receivers=["src"], exporters=["rec/y"]),
            "traces": PipelineConfig(receivers=["src"], exporters=["mutexp"]),
        },
        [],
    )
    batch, _ = next(Workload(seed=2).requests(1))
    await deliver(graph, batch)
    assert graph.component("rec/y").batches == [batch]
    assert not touched(batch)
    assert touched(graph.component("mutexp").batches[0])


def test_a_receiver_no_pipeline_uses_is_not_built() -> None:
    def source(cfg: Empty, s: Any, consumers: dict[Signal, Consumer]) -> Source:
        return Source(consumers, [])

    receiver = Factory(Kind.RECEIVER, "src", Empty, frozenset(Signal), source, "")
    exporter = Factory(Kind.EXPORTER, "rec", Empty, frozenset(Signal), lambda cfg, s: Recorder("rec", []), "")
    config = AgentConfig(
        receivers={name: ComponentConfig(name, Kind.RECEIVER, receiver, Empty()) for name in ("src", "src/unused")},
        exporters={"rec": ComponentConfig("rec", Kind.EXPORTER, exporter, Empty())},
        service=ServiceConfig(pipelines={"traces": PipelineConfig(receivers=["src"], exporters=["rec"])}),
    )
    graph = Graph(config, SelfMetrics())
    assert [(kind, cid) for kind, cid, _ in graph.components] == [
        (Kind.EXPORTER, "rec"),
        (Kind.RECEIVER, "src[ingest]"),
        (Kind.RECEIVER, "src"),
    ]


def test_connectors_that_feed_each_other_in_a_cycle_are_a_config_error_not_a_recursion_error() -> None:
    class Connector:
        def __init__(self, consumers: dict[Signal, Consumer]) -> None:
            self.consumers = consumers

        def consumer_for(self, signal: Signal) -> Consumer:
            return self.consumers[Signal.TRACES]

    connector = Factory(
        Kind.CONNECTOR,
        "loop",
        Empty,
        frozenset(Signal),
        lambda cfg, s, consumers: Connector(consumers),
        "",
        output_signals=frozenset(Signal),
    )
    receiver = Factory(Kind.RECEIVER, "src", Empty, frozenset(Signal), lambda cfg, s, c: Source(c, []), "")
    config = AgentConfig(
        receivers={"src": ComponentConfig("src", Kind.RECEIVER, receiver, Empty())},
        connectors={name: ComponentConfig(name, Kind.CONNECTOR, connector, Empty()) for name in ("loop/a", "loop/b")},
        service=ServiceConfig(
            pipelines={
                "traces": PipelineConfig(receivers=["src", "loop/b"], exporters=["loop/a"]),
                "traces/back": PipelineConfig(receivers=["loop/a"], exporters=["loop/b"]),
            }
        ),
    )
    with pytest.raises(ConfigInvalid) as raised:
        Graph(config, SelfMetrics())
    assert [e.message for e in raised.value.errors] == ["connectors form a cycle"]


def test_fan_out_copies_only_when_a_mutation_could_be_seen_by_another_consumer() -> None:
    from agent.pipeline.fanout import FanOut, Target
    from agent.testing.sinks import BatchSink

    batch, _ = next(Workload(seed=2).requests(1))

    def run(*flags: tuple[bool, bool]) -> list[bool]:
        sinks = [BatchSink() for _ in flags]
        FanOut([Target(s, m, r) for s, (m, r) in zip(sinks, flags, strict=True)]).consume(batch)
        return [s.batches[0] is batch for s in sinks]

    # (mutates, retains): a synchronous reader then a mutator → no copy
    assert run((False, False), (True, True)) == [True, True]
    # a queueing reader shares the original → the mutator needs a copy
    assert run((False, True), (True, True)) == [True, False]
    # two mutators → the first one (in run order) gets a copy, the last one the original
    assert run((True, True), (True, True)) == [False, True]


def test_a_buffer_that_refuses_is_asked_before_a_synchronous_reader_counts_the_batch() -> None:
    from agent.component import Refused
    from agent.pipeline.fanout import FanOut, Target
    from agent.testing.sinks import BatchSink, RefusingSink

    counter, buffer = BatchSink(), RefusingSink()
    fan = FanOut([Target(counter, mutates=False, retains=False), Target(buffer, mutates=False, retains=True)])
    batch, _ = next(Workload(seed=2).requests(1))
    with pytest.raises(Refused):
        fan.consume(batch)
    assert buffer.offered == 1
    assert counter.batches == []  # the sender's retry will not be counted twice


def fan_out_refused_once_by_its_second_target() -> tuple[Any, Any, Any]:
    """A fan-out to two retaining targets, the second of which refuses the first batch it is offered."""
    from agent.component import Refused
    from agent.pipeline.fanout import FanOut, Target
    from agent.testing.sinks import BatchSink

    class RefuseOnce(BatchSink):
        refused = False

        def consume(self, batch: Message) -> None:
            if not self.refused:
                self.refused = True
                raise Refused("queue full")
            super().consume(batch)

    first, second = BatchSink(), RefuseOnce()
    return first, second, FanOut([Target(first, False, True), Target(second, False, True)])


def test_a_batch_offered_again_after_a_refusal_reaches_only_the_targets_that_had_not_taken_it() -> None:
    from agent.component import Refused

    first, second, fan = fan_out_refused_once_by_its_second_target()
    batch, _ = next(Workload(seed=2).requests(1))
    with pytest.raises(Refused):
        fan.consume(batch)
    fan.consume(batch)  # the ingest queue offers the very same batch again
    assert first.batches == [batch]
    assert second.batches == [batch]
    other, _ = next(Workload(seed=3).requests(1))
    fan.consume(other)
    assert first.batches == [batch, other]


def test_a_refused_batch_resumes_where_it_stopped_even_when_another_feeder_sent_a_batch_meanwhile() -> None:
    """Two receivers (or a receiver and a connector) feed one pipeline: their retries interleave."""
    from agent.component import Refused

    first, second, fan = fan_out_refused_once_by_its_second_target()
    (a, _), (b, _) = Workload(seed=4).requests(2)
    with pytest.raises(Refused):
        fan.consume(a)  # from the first receiver: the second target refuses
    fan.consume(b)  # from the second receiver
    fan.consume(a)  # the first receiver's retry
    assert first.batches == [a, b]
    assert second.batches == [b, a]


def test_a_pipeline_that_gets_a_copy_resumes_inside_where_it_stopped_when_the_batch_is_offered_again() -> None:
    """A receiver feeds a reading pipeline and a mutating one (redaction), whose second exporter refuses. Each
    retry of the ingest queue made a new copy for the mutating pipeline, which its own fan-out did not know: its
    first exporter got the batch again on every retry (and the refused copies piled up)."""
    from agent.component import Refused
    from agent.pipeline.fanout import FanOut, Target
    from agent.testing.sinks import BatchSink

    first_exporter, refusing_exporter, _ = fan_out_refused_once_by_its_second_target()
    other_pipeline = BatchSink()
    inner = FanOut([Target(first_exporter, False, True), Target(refusing_exporter, False, True)])
    outer = FanOut([Target(other_pipeline, False, True), Target(inner, True, True)])
    (batch, _), *_ = Workload(seed=4).requests(1)
    with pytest.raises(Refused):
        outer.consume(batch)
    outer.consume(batch)  # the ingest queue's retry
    assert len(other_pipeline.batches) == 1
    assert len(first_exporter.batches) == 1 and len(refusing_exporter.batches) == 1
    assert first_exporter.batches[0] is refusing_exporter.batches[0] is not batch  # one copy, handed on
    assert not inner._refused and not outer._refused


async def test_an_exporter_stuck_at_the_deadline_still_counts_what_it_could_not_deliver() -> None:
    import asyncio

    from agent.exporters._helper.queue import SendingQueue, SendingQueueConfig
    from tests.helpers import metric_value

    class Stuck:
        def __init__(self, settings: Any) -> None:
            async def push(signal: Signal, batch: Message) -> None:
                await asyncio.sleep(3600)

            self.queue = SendingQueue(settings, SendingQueueConfig(num_consumers=1), push)

        def consumer_for(self, signal: Signal) -> Consumer:
            return self

        def consume(self, batch: Message) -> None:
            self.queue.offer(Signal.TRACES, batch)

        async def start(self) -> None:
            await self.queue.start()

        async def shutdown(self, deadline: float) -> None:
            await self.queue.shutdown(deadline)

    stuck = Factory(Kind.EXPORTER, "stuck", Empty, frozenset(Signal), lambda cfg, s: Stuck(s), "")
    receiver = Factory(Kind.RECEIVER, "src", Empty, frozenset(Signal), lambda cfg, s, c: Source(c, []), "")
    config = AgentConfig(
        receivers={"src": ComponentConfig("src", Kind.RECEIVER, receiver, Empty())},
        exporters={"stuck": ComponentConfig("stuck", Kind.EXPORTER, stuck, Empty())},
        service=ServiceConfig(pipelines={"traces": PipelineConfig(receivers=["src"], exporters=["stuck"])}),
    )
    metrics = SelfMetrics()
    graph = Graph(config, metrics)
    await graph.start()
    for batch, _ in Workload(seed=4).requests(3):
        graph.component("src").consumers[Signal.TRACES].consume(batch)
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await graph.shutdown(time.monotonic() + 0.5)
    assert time.monotonic() - started < 3.0
    failed = metric_value(metrics.render().decode(), "otel_sidecar_exporter_send_failed_items_total")
    assert failed > 0


async def test_several_components_that_never_stop_share_one_grace_period() -> None:
    """Each stuck component used to get the deadline plus 2 s, so three of them outran a pod's grace period."""
    import asyncio

    class NeverStops:
        def consumer_for(self, signal: Signal) -> Consumer:
            return self  # type: ignore[return-value]

        def consume(self, batch: Message) -> None:
            return None

        async def start(self) -> None:
            return None

        async def shutdown(self, deadline: float) -> None:
            await asyncio.sleep(3600)

    hang = Factory(Kind.EXPORTER, "hang", Empty, frozenset(Signal), lambda cfg, s: NeverStops(), "")
    receiver = Factory(Kind.RECEIVER, "src", Empty, frozenset(Signal), lambda cfg, s, c: Source(c, []), "")
    names = ["hang/a", "hang/b", "hang/c"]
    config = AgentConfig(
        receivers={"src": ComponentConfig("src", Kind.RECEIVER, receiver, Empty())},
        exporters={name: ComponentConfig(name, Kind.EXPORTER, hang, Empty()) for name in names},
        service=ServiceConfig(pipelines={"traces": PipelineConfig(receivers=["src"], exporters=names)}),
    )
    graph = Graph(config, SelfMetrics())
    await graph.start()
    started = time.monotonic()
    await graph.shutdown(time.monotonic() + 0.2)
    assert time.monotonic() - started < 0.2 + 2.0 + 0.5  # one grace period, then a moment each


def test_fan_out_passes_a_batchs_size_to_the_targets_that_take_one() -> None:
    from agent.pipeline.fanout import FanOut, Target

    plain, sized, mutating = BatchSink(), SizedSink(), SizedSink()
    fan = FanOut([Target(plain, False, False), Target(sized, False, True), Target(mutating, True, True)])
    batch = next(Workload(seed=1).requests(1))[0]
    fan.consume_sized(batch, 777)
    fan.consume(batch)  # no size known: every target is given consume()
    assert (sized.sizes, mutating.sizes) == ([777], [777])
    assert len(plain.batches) == len(sized.batches) == len(mutating.batches) == 2
    assert mutating.batches[0] is not batch  # the mutator got a copy, with the original's size


class RefusesUntilReceiversStop(Recorder):
    """A stage that refuses data while the agent runs (as the memory limiter does under memory pressure)."""

    stopped = False

    def consume(self, batch: Message) -> None:
        if not self.stopped:
            raise Refused("data refused due to high memory usage")
        super().consume(batch)

    def receivers_stopped(self) -> None:
        self.journal.append(f"receivers stopped, told {self.name}")
        self.stopped = True


def src_to_exporter(
    journal: list[str],
    make_processor: Callable[[CreateSettings, Consumer], Any] | None = None,
    processor_ids: Sequence[str] = (),
    exporter: Any = None,
    retains_data: bool = True,
) -> Graph:
    """One traces pipeline: a ``src`` receiver, ``processor_ids`` each made by ``make_processor(settings, next)``,
    and ``exporter`` (by default a recorder ``rec``)."""
    made = exporter or (lambda cfg, s: Recorder("rec", journal))
    processor = Factory(
        Kind.PROCESSOR,
        "proc",
        Empty,
        frozenset(Signal),
        lambda cfg, s, signal, nxt: make_processor(s, nxt),  # type: ignore[misc]
        "",
        retains_data=retains_data,
    )
    exporters = Factory(Kind.EXPORTER, "rec", Empty, frozenset(Signal), made, "")
    receiver = Factory(Kind.RECEIVER, "src", Empty, frozenset(Signal), lambda cfg, s, c: Source(c, journal), "")
    config = AgentConfig(
        receivers={"src": ComponentConfig("src", Kind.RECEIVER, receiver, Empty())},
        processors={name: ComponentConfig(name, Kind.PROCESSOR, processor, Empty()) for name in processor_ids},
        exporters={"rec": ComponentConfig("rec", Kind.EXPORTER, exporters, Empty())},
        service=ServiceConfig(
            pipelines={"traces": PipelineConfig(receivers=["src"], processors=list(processor_ids), exporters=["rec"])}
        ),
    )
    return Graph(config, SelfMetrics())


async def test_stages_hear_that_the_receivers_stopped_before_the_ingest_queues_drain() -> None:
    journal: list[str] = []
    graph = src_to_exporter(
        journal, lambda s, nxt: RefusesUntilReceiversStop(s.component_id, journal, nxt), ["refuser"], retains_data=False
    )
    batch = next(iter(Workload(seed=3).requests(1)))[0]
    await graph.start()
    graph.component("src").consumers[Signal.TRACES].consume(batch)
    await asyncio.sleep(0.1)  # refused: the ingest queue holds it
    await graph.shutdown(time.monotonic() + 2)
    assert graph.component("rec").batches == [batch]  # accepted data passed once nothing new could arrive
    assert journal.index("stop src") < journal.index("receivers stopped, told refuser") < journal.index("stop refuser")


class Faulty(Recorder):
    """A stage whose ``receivers_stopped`` hook or ``shutdown`` raises (``fails``: "hook" or "stop")."""

    def __init__(self, name: str, journal: list[str], next_consumer: Consumer, fails: str) -> None:
        super().__init__(name, journal, next_consumer)
        self.fails = fails

    def receivers_stopped(self) -> None:
        self.journal.append(f"told {self.name}")
        if self.fails == "hook":
            raise RuntimeError("hook bug")

    async def shutdown(self, deadline: float) -> None:
        await super().shutdown(deadline)
        if self.fails == "stop":
            raise RuntimeError("shutdown bug")


async def test_a_stage_whose_shutdown_or_hook_raises_does_not_stop_the_others_from_stopping() -> None:
    journal: list[str] = []
    # Built from the last processor to the first: faulty/hook is told first, faulty/stop is stopped first.
    faulty = ["faulty/stop", "faulty/hook"]
    graph = src_to_exporter(
        journal, lambda s, nxt: Faulty(s.component_id, journal, nxt, s.component_id.split("/")[1]), faulty
    )
    await graph.start()
    journal.clear()
    await graph.shutdown(time.monotonic() + 1)
    assert journal == [
        "stop src",
        "told faulty/hook",
        "told faulty/stop",
        "stop faulty/stop",
        "stop faulty/hook",
        "stop rec",
    ]


async def test_a_component_that_stops_within_the_deadline_is_not_cut_short() -> None:
    """The grace period comes after the deadline: a component given 4 s that needs 3 s is let finish."""
    journal: list[str] = []

    class Slow(Recorder):
        async def shutdown(self, deadline: float) -> None:
            await asyncio.sleep(3.0)
            self.journal.append(f"stopped {self.name}")

    graph = src_to_exporter(journal, exporter=lambda cfg, s: Slow("slow", journal))
    await graph.start()
    await graph.shutdown(time.monotonic() + 4.0)
    assert "stopped slow" in journal
