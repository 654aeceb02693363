"""Routing by retention class: each exporter receives only the classes it lists in ``retention_classes``.

No trace store keeps some traces longer than others, so the agent routes: the tail sampler writes the resource
attribute ``retention.class`` on everything it keeps, and an exporter whose ``retention_classes`` is set takes
only those classes (``otlp/jaeger_archive`` with ``[error, critical]``: the 30-day store). Data without the
attribute, or with a class the config does not define, counts as ``service.retention.default_class``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

from google.protobuf.message import Message

from agent.component import CreateSettings, Signal
from agent.config.service import ServiceConfig
from agent.otlp.signals import SPECS

RETENTION_ATTRIBUTE = "retention.class"

_RESOURCE_LISTS = {Signal.TRACES: "resource_spans", Signal.LOGS: "resource_logs", Signal.METRICS: "resource_metrics"}


def attribute_string(attributes: Iterable[Any], key: str) -> str | None:
    """The string value of ``key`` among OTLP ``KeyValue`` attributes, or None."""
    for kv in attributes:
        if kv.key == key:
            return kv.value.string_value if kv.value.HasField("string_value") else None
    return None


class RetentionClassifier:
    """Tells the retention class of a resource: its ``retention.class`` if defined, else the default class."""

    def __init__(self, service: ServiceConfig) -> None:
        self.default = service.retention.default_class
        self._known = frozenset(service.retention.classes)

    def of(self, attributes: Iterable[Any]) -> str:
        value = attribute_string(attributes, RETENTION_ATTRIBUTE)
        return value if value in self._known else self.default


Routed = list[tuple[str, int]]  # (retention class, items) taken by an exporter


class RetentionFilter:
    """Selects the resources of a batch whose class the exporter takes; counts items routed per class."""

    def __init__(self, classes: list[str], settings: CreateSettings) -> None:
        self._accepted = frozenset(classes)
        self._classifier = RetentionClassifier(settings.service)
        self._cid = settings.component_id
        self._routed = settings.metrics.counter(
            "exporter_routed_items_total",
            "Items an exporter received, by retention class (`retention_classes` decides which it takes).",
            ["exporter", "signal", "retention_class"],
        )

    def apply(self, signal: Signal, batch: Message) -> tuple[Message | None, Routed]:
        """The part of ``batch`` this exporter takes (``batch`` itself, a new request, or None) and its items by
        class, to pass to :meth:`count` once the part is queued (a refused part comes again with the retry).

        ``batch`` is never modified: the fan-out hands the same object to every exporter of a pipeline.
        """
        resources = getattr(batch, _RESOURCE_LISTS[signal])
        kept = []
        routed: Routed = []
        for resource in resources:
            retention_class = self._classifier.of(resource.resource.attributes)
            if self._accepted and retention_class not in self._accepted:
                continue
            kept.append(resource)
            # Counted as every other exporter counter counts (data points, not metrics), so that routed and sent
            # items agree; the resource is read in place, as a request of one resource, not copied into one.
            one_resource = SimpleNamespace(**{_RESOURCE_LISTS[signal]: (resource,)})
            items = SPECS[signal].count_items(one_resource)
            routed.append((retention_class, items))
        if len(kept) == len(resources):
            return batch, routed
        if not kept:
            return None, routed
        part = type(batch)()
        getattr(part, _RESOURCE_LISTS[signal]).extend(kept)  # copies
        return part, routed

    def count(self, signal: Signal, routed: Routed) -> None:
        for retention_class, items in routed:
            self._routed.labels(self._cid, signal.value, retention_class).inc(items)


def check_retention_classes(
    classes: list[str], agent_config: Any, field: str = "retention_classes"
) -> Iterator[tuple[str, str]]:
    """Config check: every class an exporter names is defined in ``service.retention.classes``."""
    defined = agent_config.service.retention.classes
    seen: set[str] = set()
    for index, name in enumerate(classes):
        if name not in defined:
            yield f"{field}[{index}]", f"unknown retention class {name!r}; defined classes: {', '.join(defined)}"
        if name in seen:
            yield f"{field}[{index}]", f"names {name} more than once"
        seen.add(name)
