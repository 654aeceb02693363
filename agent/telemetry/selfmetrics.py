"""The agent's own metrics, all named ``otel_sidecar_*``, on a registry owned by the agent (never the global one).

Components ask for families by name; asking twice returns the same family, so several instances of one
component type (``otlp/jaeger``, ``otlp/archive``) share a family and differ by their ``component`` label.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

PREFIX = "otel_sidecar"

# No `<name>_created` series beside every counter and histogram: they double the families for nothing
# a dashboard uses, and the Collector's own metrics have none.
disable_created_metrics()

W = TypeVar("W", bound=MetricWrapperBase)


class ComponentCollector(Protocol):
    """A custom collector (rendered at scrape time) whose series are per component, like the families above."""

    KIND_LABEL: str  # its first label, naming the component's kind: "processor", "exporter"...

    def collect(self) -> object: ...

    def forget_except(self, ids: Collection[str]) -> int:
        """Drop the series of components whose id is not in ``ids``; return how many."""
        ...


C = TypeVar("C", bound=ComponentCollector)

# Removed components whose counters are kept (a renamed exporter's last counts must reach a scrape): the oldest
# go beyond this many, so that a config renaming its components at every reload cannot grow the series for good.
RETIRED_COMPONENTS_KEPT = 32

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SelfMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._families: dict[str, MetricWrapperBase] = {}
        self._collectors: dict[str, ComponentCollector] = {}
        self._lock = threading.Lock()
        # (kind, id) of removed components whose counters are kept, oldest first.
        self._retired: dict[tuple[str, str], None] = {}
        ProcessCollector(namespace=PREFIX, registry=self.registry)

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return self._family(Counter, name, doc, labels)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return self._family(Gauge, name, doc, labels)

    def histogram(
        self, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        with self._lock:
            family = self._families.get(name)
            if family is None:
                family = Histogram(f"{PREFIX}_{name}", doc, labels, registry=self.registry, buckets=buckets)
                self._families[name] = family
        return family  # type: ignore[return-value]

    def _family(self, cls: type[W], name: str, doc: str, labels: Sequence[str]) -> W:
        with self._lock:
            family = self._families.get(name)
            if family is None:
                family = cls(f"{PREFIX}_{name}", doc, labels, registry=self.registry)
                self._families[name] = family
            elif not isinstance(family, cls):
                raise ValueError(f"self-metric {name} already registered as {type(family).__name__}")
        return family

    def component_collector(self, name: str, make: Callable[[], C]) -> C:
        """The custom collector ``name`` on this registry, made and registered the first time it is asked for."""
        with self._lock:
            found = self._collectors.get(name)
            if found is None:
                found = self._collectors[name] = make()
                self.registry.register(found)  # type: ignore[arg-type]
        return found  # type: ignore[return-value]

    def forget_components(self, kept: Mapping[str, Collection[str]]) -> int:
        """Remove the series of components that no longer run, but for counters that counted something; return
        how many.

        A family is a component's when its first label names a kind (``exporter``...): its series whose id is not
        in ``kept[kind]`` go; so do those of the custom collectors (``component_collector``). After a config
        reload, the gauges of a removed exporter would otherwise stay at their last value for good (a full queue
        firing its alert). A counter above zero stays: a removed exporter's last count, such as the items its
        flush at the reload gave up, must reach a scrape (a counter that no longer rises alerts on nothing); those
        of more than ``RETIRED_COMPONENTS_KEPT`` removed components go, the longest removed first.
        prometheus_client lists a family's children, and their values, only through private attributes.
        """
        with self._lock:
            families = list(self._families.values())
        removed = 0
        retired: set[tuple[str, str]] = set()
        for family in self._component_families(families, kept):
            kind, ids = family._labelnames[0], kept[family._labelnames[0]]
            counter = family._type == "counter"
            for values, child in list(family._metrics.items()):
                if values[0] in ids:
                    continue
                if counter and child._value.get() > 0:  # type: ignore[attr-defined]
                    retired.add((kind, values[0]))
                else:
                    family.remove(*values)
                    removed += 1
        removed += self._keep_retired_bounded(families, kept, retired)
        with self._lock:
            collectors = list(self._collectors.values())
        for collector in collectors:
            if collector.KIND_LABEL in kept:
                removed += collector.forget_except(kept[collector.KIND_LABEL])
        return removed

    @staticmethod
    def _component_families(families: list[MetricWrapperBase], kinds: Collection[str]) -> list[MetricWrapperBase]:
        """The families whose first label names one of the component ``kinds`` (``exporter``...)."""
        return [f for f in families if f._labelnames and f._labelnames[0] in kinds]

    def _keep_retired_bounded(
        self, families: list[MetricWrapperBase], kept: Mapping[str, Collection[str]], retired: set[tuple[str, str]]
    ) -> int:
        """Remember ``retired`` components (forgetting those running again), and remove the counters of the
        longest removed beyond ``RETIRED_COMPONENTS_KEPT``; return how many series went."""
        for key in [key for key in self._retired if key[1] in kept.get(key[0], ())]:
            del self._retired[key]
        for key in sorted(retired):
            self._retired.setdefault(key, None)
        removed = 0
        while len(self._retired) > RETIRED_COMPONENTS_KEPT:
            kind, component = next(iter(self._retired))
            del self._retired[(kind, component)]
            for family in self._component_families(families, (kind,)):
                for values in [values for values in family._metrics if values[0] == component]:
                    family.remove(*values)
                    removed += 1
        return removed

    def render(self) -> bytes:
        return generate_latest(self.registry)
