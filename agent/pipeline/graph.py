"""Build the component graph from a config and run its lifecycle.

Components are created consumers-first (exporters, then processors from the last to the first, then each
receiver's ingest queues, then receivers), which is also the order they start in: everything downstream is
ready before data arrives.
Shutdown runs the other way, so each component drains into consumers that are still running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from agent.component import Consumer, CreateSettings, Kind, Signal
from agent.config.loader import AgentConfig, ComponentConfig
from agent.config.schema import ConfigError, ConfigInvalid
from agent.pipeline.fanout import Target, fan_out
from agent.pipeline.ingest import IngestQueue
from agent.telemetry.certificates import LoadedCertificate
from agent.telemetry.logs import component_logger
from agent.telemetry.selfmetrics import SelfMetrics


@dataclass
class _Node:
    kind: Kind
    id: str
    instance: Any
    phase: int = 2  # shutdown phase: 0 receivers, 1 ingest queues, 2 processors, connectors and exporters


# Components get their deadline and honour it themselves; the graph waits a little longer before it gives up on
# one, so that a component's own clean-up (counting what it could not deliver) is never cut short.
_SHUTDOWN_GRACE = 2.0
_LAST_MOMENT = 0.1  # seconds a component gets once the grace period is over


@dataclass(frozen=True)
class _Entry:
    consumer: Consumer
    mutates: bool
    retains: bool


class Graph:
    def __init__(self, config: AgentConfig, metrics: SelfMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self._nodes: list[_Node] = []
        self._exporters: dict[str, Any] = {}
        self._entries: dict[str, _Entry] = {}
        self._building: set[str] = set()
        self._shared: dict[str, Any] = {}
        self._log = component_logger("pipeline")
        self.receivers_started = False
        self._build()

    @property
    def components(self) -> list[tuple[Kind, str, Any]]:
        return [(n.kind, n.id, n.instance) for n in self._nodes]

    def component_ids(self) -> dict[str, set[str]]:
        """The ids of the components built, by kind (``"exporter"``: ``{"otlp", ...}``), as their metrics label them."""
        ids: dict[str, set[str]] = {kind.value: set() for kind in Kind}
        for node in self._nodes:
            ids[node.kind.value].add(node.id.split("[", 1)[0])  # a receiver's ingest queue is "otlp[ingest]"
        return ids

    def certificates(self) -> list[LoadedCertificate]:
        """The TLS certificates the components present (those with a ``certificates()`` hook), for their expiry."""
        found: list[LoadedCertificate] = []
        for node in self._nodes:
            hook = getattr(node.instance, "certificates", None)
            if hook is not None:
                found.extend(hook())
        return found

    def held_items(self) -> dict[str, int | None]:
        """Items held in memory by the components that can say (a ``held_items()`` hook), by config path: what the
        process exiting now would lose. Components holding none are left out; one whose count failed is None."""
        held: dict[str, int | None] = {}
        for node in self._nodes:
            hook = getattr(node.instance, "held_items", None)
            if hook is None:
                continue
            path = f"{node.kind.section}.{node.id}"
            try:
                items = hook()
            except Exception:  # the others' counts still stand
                self._log.exception("could not count the items held in memory", extra={"component": path})
                held[path] = None
                continue
            counted = held.get(path, 0)
            if items and counted is not None:  # None: a node of the same path could not count
                held[path] = counted + items  # one sampler serves the traces and the logs pipelines
        return held

    def take_over(self, previous: Graph, older: Graph | None = None) -> None:
        """At a reload, before this graph starts: each exporter, connector and processor with a ``take_over_from``
        hook is given the stopped one of the same id and type, for what it must know of its predecessor (not data:
        that was flushed). With ``older`` (the fallback after ``previous`` failed to start), a component of
        ``previous`` that did not take its own predecessor's state over (``took_over``: another endpoint, other
        settings) holds none of it, so this graph's takes over from ``older``'s instead."""
        mine = [(exporter_id, exporter, Graph._exporter_of) for exporter_id, exporter in self._exporters.items()]
        mine += [(node.id, node.instance, Graph._processor_of) for node in self._nodes if node.kind is Kind.PROCESSOR]
        for component_id, component, find in mine:
            hook = getattr(component, "take_over_from", None)
            if hook is None:
                continue
            before = find(previous, component_id)
            if older is not None and not getattr(before, "took_over", False):
                before = find(older, component_id)
            if before is not None and type(before) is type(component):
                hook(before)

    def _exporter_of(self, component_id: str) -> Any:
        return self._exporters.get(component_id)

    def _processor_of(self, component_id: str) -> Any:
        """The first instance of a processor (one per pipeline it is in; a tail sampler's share their state)."""
        return next((n.instance for n in self._nodes if n.kind is Kind.PROCESSOR and n.id == component_id), None)

    def forgo_fresh_state_beside(self, stopped: Graph) -> None:
        """This graph failed to start, and ``stopped``'s state comes back (``take_over`` with ``older``): each of
        its components that did not take its predecessor's state over, though ``stopped`` has one to go back to,
        drops what it made since (``forgo_state``: the span-metrics connector's flush of series begun anew)."""
        for exporter_id, exporter in self._exporters.items():
            forgo = getattr(exporter, "forgo_state", None)
            before = stopped._exporters.get(exporter_id)
            if forgo is not None and not getattr(exporter, "took_over", False) and type(before) is type(exporter):
                forgo()

    def component(self, component_id: str, kind: Kind | None = None) -> Any:
        for node in self._nodes:
            if node.id == component_id and (kind is None or node.kind is kind):
                return node.instance
        raise KeyError(component_id)

    async def start(self) -> None:
        for node in self._nodes:
            try:
                await node.instance.start()
            except Exception as exc:
                raise RuntimeError(f"{node.kind.section}.{node.id}: failed to start: {exc}") from exc
        self.receivers_started = True

    async def shutdown(self, deadline: float) -> None:
        """Stop every receiver, then drain the ingest queues, then flush every stage downstream in turn.

        Never raises. Within a phase, components stop in reverse creation order (upstream first).
        """
        self.receivers_started = False
        # One grace period for the whole shutdown, not one per component: with several stuck components the
        # total would outrun the pod's termination grace. Past it, each still gets a moment to count its losses.
        hard_stop = deadline + _SHUTDOWN_GRACE
        told = False
        for node in sorted(reversed(self._nodes), key=lambda n: n.phase):
            if node.phase > 0 and not told:
                told = True
                self._tell_receivers_stopped()
            try:
                allowed = max(hard_stop - time.monotonic(), _LAST_MOMENT)
                async with asyncio.timeout(allowed):  # not wait_for: see agent/waits.py
                    await node.instance.shutdown(deadline)
            except TimeoutError:
                self._log.error("shutdown deadline passed", extra={"component": f"{node.kind.section}.{node.id}"})
            except Exception:
                self._log.exception("shutdown failed", extra={"component": f"{node.kind.section}.{node.id}"})

    def _tell_receivers_stopped(self) -> None:
        """Nothing new arrives from here on: stages with a ``receivers_stopped()`` hook hear it before the ingest
        queues drain (the memory limiter then lets what was accepted through instead of refusing it until the
        deadline, since only the stages after it can free memory, and they flush after the queues)."""
        for node in self._nodes:
            hook = getattr(node.instance, "receivers_stopped", None)
            if hook is None:
                continue
            try:
                hook()
            except Exception:
                self._log.exception("receivers_stopped failed", extra={"component": f"{node.kind.section}.{node.id}"})

    # --- construction ------------------------------------------------------------------------------------------

    def _settings(self, component: ComponentConfig, suffix: str = "") -> CreateSettings:
        # Named by its config path: a receiver and an exporter may both be "otlp", as in the Collector's configs.
        logger: logging.Logger = component_logger(f"{component.kind.section}.{component.id}{suffix}")
        return CreateSettings(component.id, component.kind, logger, self._metrics, self._config.service, self._shared)

    def _build(self) -> None:
        for pipeline_id in self._config.service.pipelines:
            self._pipeline_entry(pipeline_id)
        for receiver_id, component in self._config.receivers.items():
            consumers = self._consumers_fed_by(receiver_id)
            if not consumers:
                continue  # defined but used by no pipeline, as in the Collector
            settings = self._settings(component)
            queue = IngestQueue(settings, consumers, self._config.service.ingest)
            self._nodes.append(_Node(Kind.RECEIVER, f"{receiver_id}[ingest]", queue, phase=1))
            instance = component.factory.create(component.config, settings, queue.consumers())
            self._nodes.append(_Node(Kind.RECEIVER, receiver_id, instance, phase=0))

    def _consumers_fed_by(self, receiver_id: str) -> dict[Signal, Consumer]:
        by_signal: dict[Signal, list[Target]] = {}
        for pipeline_id, pipeline in self._config.service.pipelines.items():
            if receiver_id in pipeline.receivers:
                entry = self._pipeline_entry(pipeline_id)
                signal = Signal(pipeline_id.split("/", 1)[0])
                by_signal.setdefault(signal, []).append(Target(entry.consumer, entry.mutates, entry.retains))
        return {signal: fan_out(targets) for signal, targets in by_signal.items()}

    def _pipeline_entry(self, pipeline_id: str) -> _Entry:
        if pipeline_id in self._entries:
            return self._entries[pipeline_id]
        if pipeline_id in self._building:
            raise ConfigInvalid([ConfigError(f"service.pipelines.{pipeline_id}", "connectors form a cycle")])
        self._building.add(pipeline_id)
        pipeline = self._config.service.pipelines[pipeline_id]
        signal = Signal(pipeline_id.split("/", 1)[0])
        targets = [
            Target(self._exporter(name).consumer_for(signal), factory.mutates_data, factory.retains_data)
            for name in pipeline.exporters
            for factory in [self._factory(name)]
        ]
        consumer = fan_out(targets)
        for processor_id in reversed(pipeline.processors):
            component = self._config.processors[processor_id]
            settings = self._settings(component, f"[{pipeline_id}]")
            consumer = component.factory.create(component.config, settings, signal, consumer)
            self._nodes.append(_Node(Kind.PROCESSOR, processor_id, consumer))
        mutates, retains = self._input_handling(pipeline.processors, targets)
        entry = _Entry(consumer, mutates, retains)
        self._entries[pipeline_id] = entry
        self._building.discard(pipeline_id)
        return entry

    def _input_handling(self, processors: list[str], exporters: list[Target]) -> tuple[bool, bool]:
        """Whether a pipeline may mutate, and may keep, the very batch it is given.

        A processor that retains batches (a buffer) hands downstream messages of its own, so what comes after
        it never touches the input: only mutating processors before the first retaining one count, and the
        exporters count only when no processor retains.
        """
        mutates = False
        for processor_id in processors:
            factory = self._config.processors[processor_id].factory
            mutates = mutates or factory.mutates_data
            if factory.retains_data:
                return mutates, True
        return mutates or any(t.mutates for t in exporters), any(t.retains for t in exporters)

    def _factory(self, exporter_id: str) -> Any:
        component = self._config.connectors.get(exporter_id) or self._config.exporters[exporter_id]
        return component.factory

    def _exporter(self, exporter_id: str) -> Any:
        if exporter_id in self._exporters:
            return self._exporters[exporter_id]
        if exporter_id in self._config.connectors:
            component = self._config.connectors[exporter_id]
            consumers = self._consumers_fed_by(exporter_id)
            instance = component.factory.create(component.config, self._settings(component), consumers)
            kind = Kind.CONNECTOR
        else:
            component = self._config.exporters[exporter_id]
            instance = component.factory.create(component.config, self._settings(component))
            kind = Kind.EXPORTER
        self._exporters[exporter_id] = instance
        self._nodes.append(_Node(kind, exporter_id, instance))
        return instance
