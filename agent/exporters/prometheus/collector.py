"""A ``prometheus_client`` custom collector exposing the accumulated OTLP state on the exporter's own registry."""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from agent.exporters.prometheus.accumulator import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    SUMMARY,
    Accumulator,
    ExemplarValue,
    Family,
    Target,
)

_INF = (math.inf,)


def _exemplar(found: ExemplarValue | None) -> Exemplar | None:
    if found is None:
        return None
    return Exemplar(found.labels, found.value, found.time_s)


def to_metric(family: Family) -> Metric:
    """One Prometheus family from the accumulator's copy (counters gain ``_total``, histograms their buckets)."""
    metric = Metric(family.name, family.help, family.type, family.unit)
    name = family.name
    if family.type == COUNTER:
        for series in family.series.values():
            metric.add_sample(name + "_total", series.labels, series.value, exemplar=_exemplar(series.exemplar))
    elif family.type == GAUGE:
        for series in family.series.values():
            metric.add_sample(name, series.labels, series.value)
    elif family.type == HISTOGRAM:
        for series in family.series.values():
            cumulative = 0.0
            exemplars = series.exemplars
            exemplar = None
            for index, upper in enumerate(series.bounds + _INF):
                cumulative += series.counts[index]
                # A bucket without an exemplar shows the highest of a lower bucket (the compatibility spec's
                # MUST): it is a valid exemplar of this cumulative bucket too.
                if exemplars is not None and exemplars[index] is not None:
                    exemplar = _exemplar(exemplars[index])
                labels = {**series.labels, "le": floatToGoString(upper)}
                # None on a bucket that counts nothing (a source reset without a start time keeps old exemplars).
                shown = exemplar if cumulative else None
                metric.add_sample(name + "_bucket", labels, cumulative, exemplar=shown)
            if series.sum is None:
                # No sum to expose (none sent, or over negative values): OpenMetrics then allows no _count either;
                # the +Inf bucket holds the count.
                continue
            # _count must equal the +Inf bucket for Prometheus, whatever the source's count said.
            metric.add_sample(name + "_count", series.labels, cumulative)
            metric.add_sample(name + "_sum", series.labels, series.sum)
    elif family.type == SUMMARY:
        for series in family.series.values():
            for quantile, value in series.quantiles:
                metric.add_sample(name, {**series.labels, "quantile": floatToGoString(quantile)}, value)
            metric.add_sample(name + "_count", series.labels, series.count)
            if series.sum is not None:
                metric.add_sample(name + "_sum", series.labels, series.sum)
    return metric


def target_info(targets: list[Target]) -> Metric:
    metric = Metric("target", "Target metadata: the resource attributes of the OTLP sources.", "info")
    for target in targets:
        metric.add_sample("target_info", target.labels, 1.0)
    return metric


class OtlpCollector:
    """Called on every scrape: expire, copy the state under the accumulator's lock, build the families."""

    def __init__(self, accumulator: Accumulator, on_collect: object = None) -> None:
        self._accumulator = accumulator
        self._on_collect = on_collect

    def describe(self) -> list[Metric]:
        return []  # names are dynamic: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        families, targets = self._accumulator.snapshot()
        if callable(self._on_collect):
            self._on_collect()
        for family in sorted(families, key=lambda f: f.name):
            yield to_metric(family)
        if targets:
            yield target_info(targets)
