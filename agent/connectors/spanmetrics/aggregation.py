"""Cumulative metric families kept in plain dicts keyed by label-value tuples, bounded and expiring.

A series is a small ``__slots__`` object created once per label combination (never per span): the hot path
updates its fields directly (``series.value += weight``), which costs what a list index costs and reads like
what it does. Callers that record many spans under one label combination look the series up once with
:func:`execution_of` / :meth:`_Family.series_or_overflow` and keep it (see the connector's lookup caches);
the others call :meth:`SumFamily.add` / :meth:`HistogramFamily.observe` with a key tuple.

Each family holds at most ``limit`` series; further combinations are recorded in one overflow series whose
only attribute is ``otel.metric.overflow="true"`` (the Collector's convention), and counted so that the loss
of detail is visible. Series not updated for ``expiration`` nanoseconds are dropped at flush time.

:meth:`write_points` writes a family into an OTLP ``Metric`` with CUMULATIVE temporality; the start time of a
point is when its series was created, so a series that expires and comes back restarts from zero with a new
start time (a counter reset for Prometheus). The fields of a series' points that never change (attributes;
bucket bounds) are serialized once, when the series is created, and merged into each point: copying
attribute messages cost three times what the rest of a point does.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
)

OVERFLOW_ATTRIBUTE = "otel.metric.overflow"
# A key no label-value tuple can equal: tuples of strings never compare equal to one holding this object.
OVERFLOW_KEY: tuple[Any, ...] = (object(),)
_OVERFLOW_ATTRS = [KeyValue(key=OVERFLOW_ATTRIBUTE, value=AnyValue(string_value="true"))]
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

Exemplar = tuple[bytes, bytes, float, int]  # trace id, span id, value, time (ns)
SpanRef = tuple[bytes, bytes, int]  # trace id, span id, time (ns) of a span whose trace the tail sampler keeps


def attributes_for(label_keys: Sequence[str], key: tuple[Any, ...]) -> list[KeyValue]:
    if key is OVERFLOW_KEY:
        return _OVERFLOW_ATTRS
    # An empty value means "not known": Prometheus treats an empty label as absent, so omit it.
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in zip(label_keys, key, strict=True) if v]


class SumSeries:
    __slots__ = ("fixed_fields", "last", "start", "value")

    def __init__(self, now_ns: int, attributes: list[KeyValue]) -> None:
        self.value = 0.0
        self.start = now_ns  # when the series (re)started: the cumulative start time
        self.last = now_ns  # last update, for expiry
        self.fixed_fields = NumberDataPoint(attributes=attributes).SerializeToString()


class HistogramSeries:
    __slots__ = ("bounds", "count", "counts", "exemplars", "fixed_fields", "last", "start", "sum")

    def __init__(self, bounds: list[float], now_ns: int, attributes: list[KeyValue]) -> None:
        self.bounds = bounds  # the family's, shared
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0
        self.start = now_ns
        self.last = now_ns
        self.fixed_fields = HistogramDataPoint(attributes=attributes, explicit_bounds=bounds).SerializeToString()
        self.exemplars: list[Exemplar | None] | None = None  # per bucket, the latest; created on the first

    def observe(self, value: float, weight: int, now_ns: int, exemplar: SpanRef | None) -> None:
        """Record ``value`` ``weight`` times; ``exemplar`` is (trace id, span id, time) of a kept trace or None."""
        index = bisect_left(self.bounds, value)  # OTLP buckets are (previous bound, bound]
        self.counts[index] += weight
        self.sum += value * weight
        self.count += weight
        self.last = now_ns
        if exemplar is not None:
            self.add_exemplar(index, value, exemplar)

    def add_exemplar(self, index: int, value: float, exemplar: SpanRef) -> None:
        exemplars = self.exemplars
        if exemplars is None:
            exemplars = self.exemplars = [None] * len(self.counts)
        exemplars[index] = (exemplar[0], exemplar[1], value, exemplar[2])


class Execution:
    """The counter series and the duration histogram series of one label combination, recorded together (the
    executions of a workflow and their durations). Lookup caches keep these so that a span costs one lookup."""

    __slots__ = ("count", "duration")

    def __init__(self, count: SumSeries, duration: HistogramSeries) -> None:
        self.count = count
        self.duration = duration

    def record(self, weight: float, duration: float, hist_weight: int, now_ns: int, exemplar: SpanRef | None) -> None:
        count = self.count
        count.value += weight
        count.last = now_ns
        # HistogramSeries.observe, inlined: a call less for every workflow, step and LLM span.
        durations = self.duration
        index = bisect_left(durations.bounds, duration)
        durations.counts[index] += hist_weight
        durations.sum += duration * hist_weight
        durations.count += hist_weight
        durations.last = now_ns
        if exemplar is not None:
            durations.add_exemplar(index, duration, exemplar)


def execution_of(
    counts: SumFamily,
    count_key: tuple[Any, ...],
    durations: HistogramFamily,
    duration_key: tuple[Any, ...],
    now_ns: int,
) -> tuple[Execution, bool]:
    """The series to record one execution in (overflow series when a family is full, counted once: for this
    record) and whether both are the combination's own, i.e. whether a cache may keep them for later records."""
    count = counts.series_or_overflow(count_key, now_ns)
    duration = durations.series_or_overflow(duration_key, now_ns)
    own = not counts.is_overflow(count) and not durations.is_overflow(duration)
    return Execution(count, duration), own


class _Family:
    def __init__(self, name: str, description: str, unit: str, label_keys: Sequence[str], limit: int) -> None:
        self.name = name
        self.description = description
        self.unit = unit
        self.label_keys = tuple(label_keys)
        self.limit = limit
        self.series: dict[tuple[Any, ...], Any] = {}
        self.overflowed = 0  # records sent to the overflow series since the last take_overflowed()

    def _new_series(self, key: tuple[Any, ...], now_ns: int) -> Any:
        raise NotImplementedError

    def series_or_overflow(self, key: tuple[Any, ...], now_ns: int) -> Any:
        """The series to record ``key`` in: its own (created while the family has room), else the overflow series,
        counting the record as overflowed."""
        series = self.series.get(key)
        if series is None:
            if self._real_series() < self.limit:
                series = self.series[key] = self._new_series(key, now_ns)
            else:
                self.overflowed += 1
                series = self.series.get(OVERFLOW_KEY)
                if series is None:
                    series = self.series[OVERFLOW_KEY] = self._new_series(OVERFLOW_KEY, now_ns)
        return series

    def is_overflow(self, series: Any) -> bool:
        return series is self.series.get(OVERFLOW_KEY)

    def _real_series(self) -> int:
        return len(self.series) - (OVERFLOW_KEY in self.series)

    def take_overflowed(self) -> int:
        count, self.overflowed = self.overflowed, 0
        return count

    def expire_before(self, cutoff_ns: int) -> int:
        stale = [key for key, series in self.series.items() if series.last < cutoff_ns]
        for key in stale:
            del self.series[key]
        return len(stale)

    def __len__(self) -> int:
        return len(self.series)


class SumFamily(_Family):
    """A monotonic cumulative sum (a Prometheus counter once exported)."""

    def _new_series(self, key: tuple[Any, ...], now_ns: int) -> SumSeries:
        return SumSeries(now_ns, attributes_for(self.label_keys, key))

    def add(self, key: tuple[Any, ...], value: float, now_ns: int) -> None:
        series = self.series.get(key) or self.series_or_overflow(key, now_ns)
        series.value += value
        series.last = now_ns

    def value(self, key: tuple[Any, ...]) -> float:
        series = self.series.get(key)
        return 0.0 if series is None else float(series.value)

    def write_points(self, metric: Metric, now_ns: int, series: Sequence[SumSeries]) -> Iterator[None]:
        """Fill ``metric`` with ``series``, yielding between points so that a caller can pause (see the connector's
        flush); ``series`` is a snapshot of :attr:`series` values taken by the caller."""
        metric.name = self.name
        metric.description = self.description
        metric.unit = self.unit
        data = metric.sum
        data.aggregation_temporality = _CUMULATIVE
        data.is_monotonic = True
        add = data.data_points.add
        for one in series:
            _start_no_later_than(one, now_ns)
            point = add(start_time_unix_nano=one.start, time_unix_nano=now_ns, as_double=one.value)
            point.MergeFromString(one.fixed_fields)
            yield


def _start_no_later_than(series: SumSeries | HistogramSeries, now_ns: int) -> None:
    """A series made during a sliced flush (see the connector) would start after its own point's time: its start
    becomes that time, for good. Clamped only in the point, the start moved later at the next flush, which a
    cumulative consumer reads as a restart (the Prometheus exporter then added the first run's total again)."""
    if series.start > now_ns:
        series.start = now_ns


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

    def _new_series(self, key: tuple[Any, ...], now_ns: int) -> HistogramSeries:
        return HistogramSeries(self.bounds, now_ns, attributes_for(self.label_keys, key))

    def observe(
        self,
        key: tuple[Any, ...],
        value: float,
        weight: int,
        now_ns: int,
        exemplar: SpanRef | None = None,
    ) -> None:
        """Record ``value`` ``weight`` times; ``exemplar`` is (trace id, span id, time) of a kept trace or None."""
        series = self.series.get(key) or self.series_or_overflow(key, now_ns)
        series.observe(value, weight, now_ns, exemplar)

    def snapshot(self, key: tuple[Any, ...]) -> tuple[list[int], float, int] | None:
        series = self.series.get(key)
        if series is None:
            return None
        return list(series.counts), float(series.sum), int(series.count)

    def exemplars(self, key: tuple[Any, ...]) -> list[Exemplar]:
        series = self.series.get(key)
        if series is None or series.exemplars is None:
            return []
        return [e for e in series.exemplars if e is not None]

    def write_points(self, metric: Metric, now_ns: int, series: Sequence[HistogramSeries]) -> Iterator[None]:
        """As :meth:`SumFamily.write_points`."""
        metric.name = self.name
        metric.description = self.description
        metric.unit = self.unit
        data = metric.histogram
        data.aggregation_temporality = _CUMULATIVE
        add = data.data_points.add
        for one in series:
            _start_no_later_than(one, now_ns)
            point = add(
                start_time_unix_nano=one.start,
                time_unix_nano=now_ns,
                count=one.count,
                sum=one.sum,
                bucket_counts=one.counts,
            )
            point.MergeFromString(one.fixed_fields)
            exemplars = one.exemplars
            if exemplars is not None:
                for found in exemplars:
                    if found is not None:
                        point.exemplars.add(
                            trace_id=found[0], span_id=found[1], as_double=found[2], time_unix_nano=found[3]
                        )
            yield
