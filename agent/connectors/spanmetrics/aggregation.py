"""Cumulative metric families kept in plain dicts keyed by label-value tuples, bounded and expiring.

The hot path calls :meth:`SumFamily.add` / :meth:`HistogramFamily.observe` with a precomputed key tuple; a
series is a small list created once per label combination (never per span). Each family holds at most
``limit`` series; further combinations are recorded in one overflow series whose only attribute is
``otel.metric.overflow="true"`` (the Collector's convention), and counted so that the loss of detail is
visible. Series not updated for ``expiration`` nanoseconds are dropped at flush time.

:meth:`to_metric` writes a family into an OTLP ``Metric`` with CUMULATIVE temporality; the start time of a
point is when its series was created, so a series that expires and comes back restarts from zero with a new
start time (a counter reset for Prometheus).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

OVERFLOW_ATTRIBUTE = "otel.metric.overflow"
# A key no label-value tuple can equal: tuples of strings never compare equal to one holding this object.
OVERFLOW_KEY: tuple[Any, ...] = (object(),)
_OVERFLOW_ATTRS = [KeyValue(key=OVERFLOW_ATTRIBUTE, value=AnyValue(string_value="true"))]
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

# Series list layouts (lists, not objects: created once per series, indexed on the hot path).
_S_VALUE, _S_START, _S_LAST, _S_ATTRS = 0, 1, 2, 3
_H_COUNTS, _H_SUM, _H_COUNT, _H_START, _H_LAST, _H_ATTRS, _H_EXEMPLARS = 0, 1, 2, 3, 4, 5, 6

Exemplar = tuple[bytes, bytes, float, int]  # trace id, span id, value, time (ns)


def attributes_for(label_keys: Sequence[str], key: tuple[Any, ...]) -> list[KeyValue]:
    if key is OVERFLOW_KEY:
        return _OVERFLOW_ATTRS
    # An empty value means "not known": Prometheus treats an empty label as absent, so omit it.
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in zip(label_keys, key, strict=True) if v]


class _Family:
    def __init__(self, name: str, description: str, unit: str, label_keys: Sequence[str], limit: int) -> None:
        self.name = name
        self.description = description
        self.unit = unit
        self.label_keys = tuple(label_keys)
        self.limit = limit
        self.series: dict[tuple[Any, ...], list[Any]] = {}
        self.overflowed = 0  # records sent to the overflow series since the last take_overflowed()

    def _admit(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        """The key to record under: ``key`` while the family has room, else the overflow key."""
        real = len(self.series) - (OVERFLOW_KEY in self.series)
        if real < self.limit:
            return key
        self.overflowed += 1
        return OVERFLOW_KEY

    def take_overflowed(self) -> int:
        count, self.overflowed = self.overflowed, 0
        return count

    def expire(self, last_index: int, cutoff_ns: int) -> int:
        stale = [key for key, series in self.series.items() if series[last_index] < cutoff_ns]
        for key in stale:
            del self.series[key]
        return len(stale)

    def __len__(self) -> int:
        return len(self.series)


class SumFamily(_Family):
    """A monotonic cumulative sum (a Prometheus counter once exported)."""

    def add(self, key: tuple[Any, ...], value: float, now_ns: int) -> None:
        series = self.series.get(key)
        if series is None:
            key = self._admit(key)
            series = self.series.get(key)
            if series is None:
                series = self.series[key] = [0.0, now_ns, now_ns, attributes_for(self.label_keys, key)]
        series[_S_VALUE] += value
        series[_S_LAST] = now_ns

    def value(self, key: tuple[Any, ...]) -> float:
        series = self.series.get(key)
        return 0.0 if series is None else float(series[_S_VALUE])

    def expire_before(self, cutoff_ns: int) -> int:
        return self.expire(_S_LAST, cutoff_ns)

    def to_metric(self, metric: Metric, now_ns: int) -> None:
        metric.name = self.name
        metric.description = self.description
        metric.unit = self.unit
        data = metric.sum
        data.aggregation_temporality = _CUMULATIVE
        data.is_monotonic = True
        for series in self.series.values():
            point = data.data_points.add(
                start_time_unix_nano=series[_S_START], time_unix_nano=now_ns, as_double=series[_S_VALUE]
            )
            point.attributes.extend(series[_S_ATTRS])


class HistogramFamily(_Family):
    """A cumulative explicit-bucket histogram with at most one exemplar per bucket (the latest)."""

    def __init__(
        self,
        name: str,
        description: str,
        unit: str,
        label_keys: Sequence[str],
        limit: int,
        bounds: Sequence[float],
    ) -> None:
        super().__init__(name, description, unit, label_keys, limit)
        self.bounds = list(bounds)

    def observe(
        self,
        key: tuple[Any, ...],
        value: float,
        weight: int,
        now_ns: int,
        exemplar: tuple[bytes, bytes, int] | None = None,
    ) -> None:
        """Record ``value`` ``weight`` times; ``exemplar`` is (trace id, span id, time) of a kept trace or None."""
        series = self.series.get(key)
        if series is None:
            key = self._admit(key)
            series = self.series.get(key)
            if series is None:
                counts = [0] * (len(self.bounds) + 1)
                attrs = attributes_for(self.label_keys, key)
                series = self.series[key] = [counts, 0.0, 0, now_ns, now_ns, attrs, None]
        index = bisect_left(self.bounds, value)  # OTLP buckets are (previous bound, bound]
        series[_H_COUNTS][index] += weight
        series[_H_SUM] += value * weight
        series[_H_COUNT] += weight
        series[_H_LAST] = now_ns
        if exemplar is not None:
            exemplars = series[_H_EXEMPLARS]
            if exemplars is None:
                exemplars = series[_H_EXEMPLARS] = [None] * (len(self.bounds) + 1)
            exemplars[index] = (exemplar[0], exemplar[1], value, exemplar[2])

    def snapshot(self, key: tuple[Any, ...]) -> tuple[list[int], float, int] | None:
        series = self.series.get(key)
        if series is None:
            return None
        return list(series[_H_COUNTS]), float(series[_H_SUM]), int(series[_H_COUNT])

    def exemplars(self, key: tuple[Any, ...]) -> list[Exemplar]:
        series = self.series.get(key)
        if series is None or series[_H_EXEMPLARS] is None:
            return []
        return [e for e in series[_H_EXEMPLARS] if e is not None]

    def expire_before(self, cutoff_ns: int) -> int:
        return self.expire(_H_LAST, cutoff_ns)

    def to_metric(self, metric: Metric, now_ns: int) -> None:
        metric.name = self.name
        metric.description = self.description
        metric.unit = self.unit
        data = metric.histogram
        data.aggregation_temporality = _CUMULATIVE
        for series in self.series.values():
            point = data.data_points.add(
                start_time_unix_nano=series[_H_START],
                time_unix_nano=now_ns,
                count=series[_H_COUNT],
                sum=series[_H_SUM],
                bucket_counts=series[_H_COUNTS],
                explicit_bounds=self.bounds,
            )
            point.attributes.extend(series[_H_ATTRS])
            exemplars = series[_H_EXEMPLARS]
            if exemplars is not None:
                for found in exemplars:
                    if found is not None:
                        point.exemplars.add(
                            trace_id=found[0], span_id=found[1], as_double=found[2], time_unix_nano=found[3]
                        )
