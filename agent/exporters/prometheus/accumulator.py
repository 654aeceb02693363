"""OTLP metrics → the latest Prometheus state, following the OpenTelemetry→Prometheus compatibility rules.

| OTLP | Prometheus |
| --- | --- |
| Gauge | gauge |
| Sum, monotonic, cumulative | counter (``_total``) |
| Sum, monotonic, delta | counter: accumulated while points follow on (``start >= previous end``) |
| Sum, non-monotonic, cumulative | gauge |
| Sum, non-monotonic, delta | dropped (``delta_non_monotonic``) |
| any unspecified temporality | dropped (``unspecified_temporality``) |
| Histogram, cumulative | classic histogram |
| Histogram, delta | classic histogram, accumulated like delta sums (same bucket bounds required) |
| ExponentialHistogram, cumulative | classic histogram with the exponential bucket boundaries as ``le`` |
| ExponentialHistogram, delta | dropped (``delta_exponential_histogram``) |
| Summary | summary (``_sum`` only when not negative or NaN; negative quantile values left out) |

A delta point that overlaps what was already added (``start`` before the previous point's end) would count
twice and is dropped (``misaligned_delta``), as the Collector's exporter does; a gap (the SDK skipped empty
intervals) is accumulated. A cumulative point older than the one held is dropped (``out_of_order``). Points of
one series at one instant in one request are streams whose labels became alike (redaction, sanitization): sums
and histograms are added up, a gauge or summary keeps the first (``duplicate_series`` for another value).

Labels: the point's attributes (sanitized; colliding keys joined with ``;``), the scope as ``otel_scope_name``,
``otel_scope_version``, ``otel_scope_schema_url`` and ``otel_scope_<attribute>``, and ``job``
(``service.namespace/service.name``) and ``instance`` (``service.instance.id``) from the resource. The other
resource attributes go to one ``target_info`` series per ``job``/``instance``. Empty values are omitted
(Prometheus treats an empty label as absent).

Series not updated for ``expiration`` seconds disappear (the exporter's ``metric_expiration``); at most
``max_series`` are held (``series_limit`` drops). Every drop is counted by reason.

A counter or histogram series that started recently (its start time at most a minute before the previous
scrape, and after the exporter's first scrape) is exposed at zero for ``new_series_at_zero_for`` from its first
scrape, and with its value from then on. Prometheus
then sees it rise from zero: otherwise ``rate()`` and ``increase()`` never count the increments a series is
first seen with, and an alert on sporadic errors (a new ``error_type`` series each time) never fires.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    DataPointFlags,
    ExponentialHistogramDataPoint,
    Metric,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from agent.exporters.prometheus.naming import metric_family_name, sanitize_label_name, unit_suffix
from agent.otlp.anyvalue import any_value_text

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
_NO_RECORDED_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
EXEMPLAR_MAX_RUNES = 128  # OpenMetrics: label names and values of an exemplar together
IDENTIFYING_RESOURCE_KEYS = frozenset({"service.name", "service.namespace", "service.instance.id"})

COUNTER, GAUGE, HISTOGRAM, SUMMARY = "counter", "gauge", "histogram", "summary"
_NEW_SERIES_GRACE_NS = 60 * 1_000_000_000

LabelKey = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class ExemplarValue:
    labels: dict[str, str]
    value: float
    time_s: float | None


@dataclass(slots=True)
class Series:
    labels: dict[str, str]
    seen: bool = False  # False until the first point is stored
    updated: float = 0.0  # time.monotonic() of the last point
    start_ns: int = 0
    time_ns: int = 0
    value: float = 0.0  # counter, gauge
    exemplar: ExemplarValue | None = None  # counter
    bounds: tuple[float, ...] = ()  # histogram: explicit upper bounds (+Inf implied)
    counts: list[float] = field(default_factory=list)  # histogram: per bucket (not cumulative)
    sum: float | None = 0.0  # histogram, summary (None: the source sent none, or one that is negative or NaN)
    count: float = 0.0  # histogram, summary
    exemplars: list[ExemplarValue | None] | None = None  # histogram: per bucket
    quantiles: list[tuple[float, float]] = field(default_factory=list)  # summary
    zero_pending: bool = False  # a counter or histogram that started recently, not scraped yet: see _read
    zero_until: float = 0.0  # clock() until which scrapes see it at zero
    # A start time moved by the last point; two in a row mean a source that sets a new start on every point
    # (not a restart), whose series then keeps its values rather than falling back to zero each time.
    restarted_last: bool = False
    start_unsteady: bool = False
    shown: bool = False  # a scrape has seen its value since it (re)started (not the zero of _read's window)
    # A counter's last value from before a restart that no scrape had seen (it was still at zero): the new run
    # counts on top of it, else a process restarting within the window would lose each run.
    carried: float = 0.0
    folded_by: int = 0  # the request (its serial number) that stored the last point


@dataclass
class Family:
    name: str  # Prometheus family name (counters without _total)
    type: str
    help: str
    unit: str  # OpenMetrics UNIT (only when the name ends with it)
    series: dict[LabelKey, Series] = field(default_factory=dict)


@dataclass
class Target:
    labels: dict[str, str]
    updated: float


def exposed_names(family: str, kind: str) -> frozenset[str]:
    """The names a family takes: its own (the OpenMetrics MetricFamily name) and its sample names (``_created``
    included). OpenMetrics forbids a family name that is another family's sample name (a counter ``x_count`` next
    to a histogram ``x``): strict parsers reject the whole exposition."""
    if kind == COUNTER:
        return frozenset((family, family + "_total", family + "_created"))
    if kind == HISTOGRAM:
        return frozenset(family + suffix for suffix in ("", "_bucket", "_count", "_sum", "_created"))
    if kind == SUMMARY:
        return frozenset((family, family + "_count", family + "_sum", family + "_created"))
    return frozenset((family,))


# The OpenTelemetry SDKs' default ``max_size`` of an exponential histogram's buckets of one sign. A point with more
# (1,000,000 buckets fit in a 1 KB gzipped request) is downscaled to at most this many: each exposed bucket is an
# `le` line of every scrape, and max_series counts label sets, not lines.
MAX_EXPONENTIAL_BUCKETS = 160


def exponential_to_explicit(point: ExponentialHistogramDataPoint) -> tuple[tuple[float, ...], list[float]]:
    """Upper bounds (without +Inf) and per-bucket counts of a classic histogram equal to an exponential one.

    Bucket ``i`` of scale ``s`` holds ``(base**i, base**(i+1)]`` with ``base = 2**(2**-s)``; negative buckets
    mirror that; the zero bucket ends at the zero threshold. The last (+Inf) bucket is empty. A point with more
    than ``MAX_EXPONENTIAL_BUCKETS`` buckets of one sign is first downscaled until it has no more, as an SDK
    would: each step down halves the scale and merges neighbouring buckets in pairs.

    ValueError when the bounds cannot be exposed (OpenMetrics wants them unique, increasing and never NaN): a zero
    threshold that is negative, NaN or infinite or reaches past the first positive bucket, or a scale or offset
    at which neighbouring bounds round to one float. OverflowError for bucket indexes beyond float range.
    """
    if not 0.0 <= point.zero_threshold < math.inf:
        raise ValueError(f"zero_threshold {point.zero_threshold} is not a finite, non-negative number")
    negative, positive = point.negative, point.positive
    # Empty negative buckets are left out: the Python SDK sends one ([0]) with all-positive data, and a bucket
    # with a negative bound forbids the _sum a histogram of positive observations has (OpenMetrics).
    negative_counts = list(negative.bucket_counts) if any(negative.bucket_counts) else []
    positive_counts = list(positive.bucket_counts)
    shift = max(
        _downscale_needed(negative.offset, len(negative_counts)),
        _downscale_needed(positive.offset, len(positive_counts)),
    )
    negative_offset, negative_counts = _downscaled(negative.offset, negative_counts, shift)
    positive_offset, positive_counts = _downscaled(positive.offset, positive_counts, shift)
    # 2 ** (k / 2**scale) rather than base ** k: one rounding, so bounds at powers of two are exact (le="2.0").
    step = 2.0 ** -(point.scale - shift)
    uppers: list[float] = []
    counts: list[float] = []
    for i in reversed(range(len(negative_counts))):
        uppers.append(-(2.0 ** ((negative_offset + i) * step)))
        counts.append(float(negative_counts[i]))
    uppers.append(point.zero_threshold)
    counts.append(float(point.zero_count))
    for i, count in enumerate(positive_counts):
        uppers.append(2.0 ** ((positive_offset + i + 1) * step))
        counts.append(float(count))
    counts.append(0.0)
    if not all(map(math.isfinite, uppers)) or any(b <= a for a, b in itertools.pairwise(uppers)):
        raise ValueError("bucket bounds are not finite and strictly increasing at this scale and offset")
    return tuple(uppers), counts


def _add_histogram(series: Series, counts: list[float], total_sum: float | None, count: int) -> None:
    """Add a point's buckets, sum and count to the series' (a delta, or a stream made alike): a sum that either
    lacks cannot be exposed for both."""
    series.counts = [a + b for a, b in zip(series.counts, counts, strict=True)]
    series.sum = None if series.sum is None or total_sum is None else series.sum + total_sum
    series.count += float(count)


def _points_in(metric: Metric) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0


def _same_value(a: float, b: float) -> bool:
    """Equal, two NaNs counting as one value (a gauge's, or a quantile's over an empty window)."""
    return a == b or (math.isnan(a) and math.isnan(b))


def _alike(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    """Quantile lists equal, NaN values counting as equal."""
    return len(a) == len(b) and all(qa == qb and _same_value(va, vb) for (qa, va), (qb, vb) in zip(a, b, strict=True))


def _downscale_needed(offset: int, buckets: int) -> int:
    """How many steps down the scale bring buckets ``offset .. offset + buckets - 1`` to at most the maximum."""
    shift = 0
    while buckets and ((offset + buckets - 1) >> shift) - (offset >> shift) + 1 > MAX_EXPONENTIAL_BUCKETS:
        shift += 1
    return shift


def _downscaled(offset: int, counts: list[int], shift: int) -> tuple[int, list[int]]:
    """Buckets ``counts`` from index ``offset``, ``shift`` steps down the scale: bucket ``j`` goes to ``j >> shift``
    (an arithmetic shift, so negative indexes too), summed over contiguous runs of the old buckets."""
    if not shift or not counts:
        return offset, counts
    first, last = offset >> shift, (offset + len(counts) - 1) >> shift
    merged = []
    for index in range(first, last + 1):
        start, end = max((index << shift) - offset, 0), min(((index + 1) << shift) - offset, len(counts))
        merged.append(sum(counts[start:end]))
    return first, merged


# A fold of one metric's points, returning the family they went to (None when it could not be had).
Folding = Generator[None, None, "Family | None"]

_EXPIRE_ON_INTAKE_EVERY = 1.0  # seconds: a full exporter's intake checks for stale series no more often

FoldOutcome = Literal["done", "more", "busy"]


class Accumulator:
    """The exporter's state. ``consume`` and ``fold_pending`` run on the event loop; ``snapshot`` on a scrape
    thread. Folding happens under the lock, which the event loop never waits for."""

    def __init__(
        self,
        expiration: float,
        max_series: int,
        on_drop: Callable[[str, int], None],
        *,
        add_suffixes: bool = True,
        scope_labels: bool = True,
        resource_labels: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], int] = time.time_ns,
        new_series_at_zero_for: float = 60.0,
        on_malformed: Callable[[Exception], None] = lambda exc: None,
    ) -> None:
        self._expiration = expiration
        self._max_series = max_series
        self._on_drop = on_drop
        self._add_suffixes = add_suffixes
        self._scope_labels = scope_labels
        self._resource_labels = resource_labels
        self._clock = clock
        self._wall_clock = wall_clock
        self._zero_for = new_series_at_zero_for
        # The previous scrape: what "started recently" is after. None until the first one: what a restarted agent
        # holds at its first scrape may have been scraped from the agent before it, and must not read as new.
        self._last_read_ns: int | None = None
        # Start times of series their source ended (no recorded value): one coming back with the same start is
        # the same counter, which Prometheus has already seen.
        self._ended_starts: dict[tuple[str, LabelKey], int] = {}
        self._lock = threading.Lock()
        self._families: dict[str, Family] = {}
        self._targets: dict[LabelKey, Target] = {}
        self._series_count = 0
        self._last_expired = -math.inf  # when stale series were last removed (at a scrape, or on intake)
        self._label_names: dict[str, str] = {}
        self._on_malformed = on_malformed
        # Requests consumed and not folded yet, with their arrival time; the one being folded, paused.
        self._pending: deque[tuple[ExportMetricsServiceRequest, float]] = deque()
        self._folding: Iterator[None] | None = None
        self._folding_request: ExportMetricsServiceRequest | None = None
        # Progress through the request being folded, to count what a failure part way through loses: the points
        # of the metrics folded whole, and the points of the current metric started (each yields as it starts).
        self._points_done = 0
        self._points_started = 0
        self._request_serial = 0  # of the request being folded: see _same_instant

    def serve_for(self, on_drop: Callable[[str, int], None], on_malformed: Callable[[Exception], None]) -> None:
        """Report to the exporter that now holds this state (a reload's new one, which took it over)."""
        self._on_drop, self._on_malformed = on_drop, on_malformed

    # --- intake ---------------------------------------------------------------------------------------------

    def consume(self, request: ExportMetricsServiceRequest) -> None:
        """Queue ``request`` to be folded into the state: by :meth:`fold_pending` (the exporter drains the queue
        in slices on the event loop) or by the next reader, whichever comes first. Costs nothing per point, so
        a flush of thousands of series never stalls the caller; the request is kept until folded."""
        self._pending.append((request, self._clock()))

    @property
    def pending(self) -> int:
        """Requests queued or being folded."""
        return len(self._pending) + (self._folding is not None)

    def fold_pending(self, budget: float | None = None, *, wait: bool = True) -> FoldOutcome:
        """Fold queued requests into the state, for at most about ``budget`` seconds (None: all of them).

        ``wait=False`` never blocks on the lock (the event loop must not wait for a scrape thread): "busy" then
        says a reader holds it, and that reader folds what is queued anyway.
        """
        if not self._lock.acquire(blocking=wait):
            return "busy"
        try:
            return self._fold(None if budget is None else time.perf_counter() + budget)
        finally:
            self._lock.release()

    def _fold(self, deadline: float | None) -> FoldOutcome:
        """With the lock held: fold until the queue is empty ("done") or ``deadline`` passes ("more")."""
        while True:
            if self._folding is None:
                if not self._pending:
                    return "done"
                request, now = self._pending.popleft()
                self._folding, self._folding_request = self._fold_request(request, now), request
            try:
                for folded, _ in enumerate(self._folding, 1):
                    if deadline is not None and folded % 16 == 0 and time.perf_counter() > deadline:
                        return "more"  # the generator keeps its place: the next call resumes this request
            except Exception as exc:  # a malformed batch must not take the exporter down; count it and say why
                self._on_drop("malformed", self._points_lost(self._folding_request))
                self._on_malformed(exc)
            self._folding = self._folding_request = None

    def _points_lost(self, request: ExportMetricsServiceRequest | None) -> int:
        """The points of the request that failed which were not folded: the rest of it, from the point it failed on
        (at least 1: a request that cannot even be read counts once)."""
        if request is None:
            return 1
        try:
            metrics = [m for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
            total = sum(_points_in(metric) for metric in metrics)
        except Exception:
            return 1
        return max(total - self._points_done - max(self._points_started - 1, 0), 1)

    def _fold_request(self, request: ExportMetricsServiceRequest, now: float) -> Iterator[None]:
        """Fold one request, yielding after every data point so that the fold can pause between slices."""
        self._request_serial += 1
        self._points_done = self._points_started = 0
        for resource_metrics in request.resource_metrics:
            resource = self._resource_labels_of(resource_metrics.resource, now)
            for scope_metrics in resource_metrics.scope_metrics:
                base = {**self._scope_labels_of(scope_metrics.scope, scope_metrics.schema_url), **resource}
                for metric in scope_metrics.metrics:
                    for _ in self._metric(metric, base, now):
                        self._points_started += 1
                        yield

    def _resource_labels_of(self, resource: Resource, now: float) -> dict[str, str]:
        """``job``/``instance`` (plus every attribute with resource_to_telemetry_conversion); records target_info."""
        attrs = {kv.key: any_value_text(kv.value) for kv in resource.attributes}
        if not attrs:
            return {}
        name, namespace = attrs.get("service.name", ""), attrs.get("service.namespace", "")
        job = f"{namespace}/{name}" if namespace and name else name
        instance = attrs.get("service.instance.id", "")
        identity = {k: v for k, v in (("job", job), ("instance", instance)) if v}
        others = self._joined_by_label_name((k, v) for k, v in attrs.items() if k not in IDENTIFYING_RESOURCE_KEYS)
        info = {**_identity_names_kept_apart(others), **identity}
        if info:
            # Keyed by job/instance; without them the scrape's own target labels identify it: by attribute set.
            key = tuple(sorted((identity or info).items()))
            # target_info series count too; one refused is no data point dropped (the resource's points that
            # need a series are counted as they are refused), and is asked for again with every request.
            if key in self._targets or self._has_room():
                self._targets[key] = Target(info, now)
        if not self._resource_labels:
            return identity
        labels = _identity_names_kept_apart(self._joined_by_label_name(attrs.items()))
        labels.update(identity)
        return labels

    def _scope_labels_of(self, scope: InstrumentationScope, schema_url: str) -> dict[str, str]:
        if not self._scope_labels:
            return {}
        attributes = scope.attributes
        labels = self._joined_by_label_name(("otel_scope_" + kv.key, any_value_text(kv.value)) for kv in attributes)
        for key, value in (
            ("otel_scope_name", scope.name),
            ("otel_scope_version", scope.version),
            ("otel_scope_schema_url", schema_url),
        ):
            if value:
                labels[key] = value
        return labels

    def _label_name(self, key: str) -> str:
        name = self._label_names.get(key)
        if name is None:
            name = sanitize_label_name(key)
            if len(self._label_names) < 10_000:
                self._label_names[key] = name
        return name

    def _metric(self, metric: Metric, base: dict[str, str], now: float) -> Iterator[None]:
        family = yield from self._metric_points(metric, base, now)
        self._points_done += _points_in(metric)  # before the clean-up below: a fault there loses no point
        self._points_started = 0
        if family is not None and not family.series and self._families.get(family.name) is family:
            # Every point refused (the series limit) or ended: left in place, empty families piled up while nothing
            # scraped, each new name's conflict check scanning them all.
            del self._families[family.name]

    def _metric_points(self, metric: Metric, base: dict[str, str], now: float) -> Folding:
        """Fold ``metric``'s points; return the family they went to (None when it could not be had)."""
        kind = metric.WhichOneof("data")
        if kind == "gauge":
            return (yield from self._numbers(metric, GAUGE, metric.gauge.data_points, base, now, delta=False))
        elif kind == "sum":
            data = metric.sum
            temporality = data.aggregation_temporality
            if temporality not in (CUMULATIVE, DELTA):
                self._on_drop("unspecified_temporality", len(data.data_points))
            elif data.is_monotonic:
                return (
                    yield from self._numbers(metric, COUNTER, data.data_points, base, now, delta=temporality == DELTA)
                )
            elif temporality == CUMULATIVE:
                return (yield from self._numbers(metric, GAUGE, data.data_points, base, now, delta=False))
            else:
                self._on_drop("delta_non_monotonic", len(data.data_points))
        elif kind == "histogram":
            data = metric.histogram
            if data.aggregation_temporality not in (CUMULATIVE, DELTA):
                self._on_drop("unspecified_temporality", len(data.data_points))
            else:
                delta = data.aggregation_temporality == DELTA
                return (yield from self._histograms(metric, data.data_points, base, now, delta=delta))
        elif kind == "exponential_histogram":
            data = metric.exponential_histogram
            if data.aggregation_temporality not in (CUMULATIVE, DELTA):
                self._on_drop("unspecified_temporality", len(data.data_points))
            elif data.aggregation_temporality == DELTA:
                self._on_drop("delta_exponential_histogram", len(data.data_points))
            else:
                return (yield from self._histograms(metric, data.data_points, base, now, delta=False))
        elif kind == "summary":
            return (yield from self._summaries(metric, metric.summary.data_points, base, now))
        return None

    # --- families and series ----------------------------------------------------------------------------------

    def _family(self, metric: Metric, kind: str, points: int) -> Family | None:
        # `_ratio` (unit "1") is for OTLP gauges only, as Prometheus's and the Collector's translation has it: an
        # up-down counter is exposed as a gauge but named as the sum it is.
        otlp_gauge = metric.WhichOneof("data") == "gauge"
        name = metric_family_name(
            metric.name, metric.unit, counter=kind == COUNTER, gauge=otlp_gauge, add_suffixes=self._add_suffixes
        )
        family = self._families.get(name)
        if family is None:
            if self._exposed_names_taken(name, kind):
                # A counter `x` is exposed as `x_total`, a histogram `x` as `x_bucket`...: another metric already
                # exposed under one of those names would make the scrape invalid (a second HELP for one name).
                self._on_drop("name_conflict", points)
                return None
            unit = unit_suffix(metric.unit, gauge=otlp_gauge) if self._add_suffixes else ""
            family = Family(
                name,
                kind,
                metric.description or metric.name,
                unit if unit and name.endswith("_" + unit) else "",
            )
            self._families[name] = family
        elif family.type != kind:
            # Two OTLP metrics mapping to one name with different types cannot both be exposed.
            self._on_drop("type_conflict", points)
            return None
        return family

    def _exposed_names_taken(self, name: str, kind: str) -> bool:
        mine = exposed_names(name, kind)
        if TARGET_INFO in mine or name == TARGET_FAMILY:  # the exporter's own family of resource attributes
            return True
        return any(not mine.isdisjoint(exposed_names(other.name, other.type)) for other in self._families.values())

    def _labels(self, attributes: Iterable[KeyValue], base: dict[str, str]) -> dict[str, str]:
        labels: dict[str, str] = {}
        collided = False
        for kv in attributes:
            raw = kv.value
            value = raw.string_value or any_value_text(raw)  # strings first: no WhichOneof for the common case
            if not value:
                continue
            name = self._label_name(kv.key)
            if name in labels:
                collided = True
            labels[name] = value
        if collided:
            pairs = ((kv.key, kv.value.string_value or any_value_text(kv.value)) for kv in attributes)
            labels.update(self._joined_by_label_name(pairs))
        for name, value in base.items():
            if name in labels:
                # A point attribute named like a resource or scope label (job, instance) would merge the series
                # of different services: it is kept as exported_<name>, as Prometheus renames clashing labels.
                labels[_free_exported_name(labels, name)] = labels.pop(name)
            labels[name] = value
        return labels

    def _joined_by_label_name(self, pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Label names and values of attribute (key, value) pairs, without empty values. The values of keys that
        sanitize to one label name are joined with ``;`` in the order of their original keys (the specification's
        order: the same attributes give the same series however the SDK ordered them)."""
        by_name: dict[str, list[tuple[str, str]]] = {}
        for key, value in pairs:
            if value:
                by_name.setdefault(self._label_name(key), []).append((key, value))
        return {name: ";".join(v for _, v in sorted(found)) for name, found in by_name.items()}

    def _series(self, family: Family, labels: dict[str, str], create: bool = True) -> Series | None:
        key = tuple(sorted(labels.items()))
        series = family.series.get(key)
        if series is None and create:
            if not self._has_room(family):
                self._on_drop("series_limit", 1)
                return None
            series = family.series[key] = Series(labels)
            self._series_count += 1
        return series

    def _has_room(self, in_use: Family | None = None) -> bool:
        """Whether one more series (or target_info) fits under ``max_series``. At the limit, stale series are
        removed first (at most once a second): only a scrape removed them, so while nothing scraped (Prometheus
        down, the pod not in its config) series long expired held the room and every new one was dropped."""
        if self.series_count < self._max_series:
            return True
        if self._clock() - self._last_expired >= _EXPIRE_ON_INTAKE_EVERY:
            self._expire(keeping=in_use)  # the family the fold is adding a series to stays, empty or not
        return self.series_count < self._max_series

    def _expire(self, keeping: Family | None = None) -> None:
        """With the lock held: remove the series and targets with no new point for ``metric_expiration``, and
        the families left empty but ``keeping``."""
        now = self._clock()
        self._last_expired = now
        cutoff = now - self._expiration
        for name in list(self._families):
            family = self._families[name]
            stale = [key for key, series in family.series.items() if series.updated < cutoff]
            for key in stale:
                self._remember_end(family, key, family.series.pop(key))
            self._series_count -= len(stale)
            if not family.series and family is not keeping:
                del self._families[name]
        for key in [k for k, t in self._targets.items() if t.updated < cutoff]:
            del self._targets[key]

    def _remove(self, family: Family, labels: dict[str, str], point: Any) -> None:
        key = tuple(sorted(labels.items()))
        held = family.series.get(key)
        if held is not None and self._same_instant(held, point):
            return  # the end of one of the streams made alike this request holds (see _same_instant): the others go on
        removed = family.series.pop(key, None)
        if removed is not None:
            self._series_count -= 1
            self._remember_end(family, key, removed)

    def _remember_end(self, family: Family, key: LabelKey, series: Series) -> None:
        """The start of a series that ended (expired, or its source said so), should it come back: the same start
        is the same counter, which Prometheus has seen."""
        if family.type not in (COUNTER, HISTOGRAM):
            return
        if len(self._ended_starts) >= self._max_series:
            # Bounded: the oldest goes (forgetting one at worst shows a returning series at zero).
            del self._ended_starts[next(iter(self._ended_starts))]
        self._ended_starts[(family.name, key)] = series.start_ns

    def _numbers(
        self, metric: Metric, kind: str, points: Sequence[Any], base: dict[str, str], now: float, *, delta: bool
    ) -> Folding:
        family = self._family(metric, kind, len(points))
        if family is None:
            return None
        for point in points:
            yield  # a pause point between data points (see _fold)
            labels = self._labels(point.attributes, base)
            if point.flags & _NO_RECORDED_VALUE:
                self._remove(family, labels, point)  # the source says the series ended
                continue
            value = point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int)
            if kind == COUNTER and not value >= 0.0:  # NaN or negative: no counter is (OpenMetrics, OTLP)
                self._on_drop("malformed", 1)
                continue
            series = self._series(family, labels)
            if series is None:
                continue
            if self._same_instant(series, point):
                if kind == COUNTER or metric.HasField("sum"):
                    self._add_stream(family, labels, series, point, delta)
                    series.value += value
                    if point.exemplars:
                        series.exemplar = _exemplar(point.exemplars[-1]) or series.exemplar
                elif not _same_value(value, series.value):
                    self._on_drop("duplicate_series", 1)
                continue
            fresh = not series.seen
            restarted = False
            if delta and not fresh:
                if 0 < point.start_time_unix_nano < series.time_ns:  # 0: unset, nothing to check
                    self._on_drop("misaligned_delta", 1)
                    continue
                series.value += value
            else:
                if not fresh and point.time_unix_nano < series.time_ns:
                    self._on_drop("out_of_order", 1)
                    continue
                restarted = _restarted(series, point)
                if kind == COUNTER:
                    if series.start_unsteady:
                        series.carried = 0.0  # several sources (or a moving start): the latest point is the value
                    elif restarted and not series.shown:
                        series.carried, restarted = series.value, False  # unseen so far: keep it, and the hold
                    elif restarted:
                        series.carried, series.shown = 0.0, False
                series.value = value + series.carried
                series.start_ns = point.start_time_unix_nano
            if (fresh or restarted) and kind == COUNTER:
                series.zero_pending = self._starts_at_zero(family, labels, point.start_time_unix_nano, delta)
                if restarted:
                    series.exemplar = None
            series.time_ns, series.folded_by = point.time_unix_nano, self._request_serial
            series.updated, series.seen = now, True
            if kind == COUNTER and point.exemplars:
                series.exemplar = _exemplar(point.exemplars[-1]) or series.exemplar
        return family

    def _histograms(
        self, metric: Metric, points: Sequence[Any], base: dict[str, str], now: float, *, delta: bool
    ) -> Folding:
        family = self._family(metric, HISTOGRAM, len(points))
        if family is None:
            return None
        exponential = metric.WhichOneof("data") == "exponential_histogram"
        for point in points:
            yield  # a pause point between data points (see _fold)
            labels = _without_reserved(self._labels(point.attributes, base), "le")
            if point.flags & _NO_RECORDED_VALUE:
                self._remove(family, labels, point)
                continue
            if exponential:
                try:
                    bounds, counts = exponential_to_explicit(point)
                except (OverflowError, ValueError):  # bounds no histogram has: not a histogram anyone produces
                    self._on_drop("malformed", 1)
                    continue
            else:
                usable = _explicit_buckets(tuple(point.explicit_bounds), point.bucket_counts, point.count)
                if usable is None:
                    self._on_drop("malformed", 1)
                    continue
                bounds, counts = usable
            series = self._series(family, labels)
            if series is None:
                continue
            total_sum = _exposable_sum(point, exponential, bounds)
            if self._same_instant(series, point):
                if bounds != series.bounds:
                    self._on_drop("duplicate_series", 1)  # no bucket of one matches the other's
                    continue
                self._add_stream(family, labels, series, point, delta)
                _add_histogram(series, counts, total_sum, point.count)
                if point.exemplars:
                    self._bucket_exemplars(series, point.exemplars, beside_another_stream=True)
                continue
            fresh = not series.seen
            restarted = False
            if delta and not fresh and bounds != series.bounds and point.start_time_unix_nano >= series.time_ns > 0:
                # New bounds in a run that starts after the series' last point: the sender restarted with another
                # bucket layout (the Collector's accumulator resets on it too). Dropping every later point kept the
                # series frozen until it expired.
                restarted = True
                series.exemplars = None
                series.bounds, series.counts = bounds, counts
                series.sum, series.count = total_sum, float(point.count)
                series.start_ns = point.start_time_unix_nano
            elif delta and not fresh:
                if bounds != series.bounds:
                    self._on_drop("bucket_mismatch", 1)
                    continue
                if 0 < point.start_time_unix_nano < series.time_ns:  # 0: unset, nothing to check
                    self._on_drop("misaligned_delta", 1)
                    continue
                _add_histogram(series, counts, total_sum, point.count)
            else:
                if not fresh and point.time_unix_nano < series.time_ns:
                    self._on_drop("out_of_order", 1)
                    continue
                restarted = _restarted(series, point)
                if bounds != series.bounds or restarted:
                    series.exemplars = None
                series.bounds, series.counts = bounds, counts
                series.sum, series.count = total_sum, float(point.count)
                series.start_ns = point.start_time_unix_nano
            if fresh or restarted:
                series.zero_pending = self._starts_at_zero(family, labels, point.start_time_unix_nano, delta)
            series.time_ns, series.folded_by = point.time_unix_nano, self._request_serial
            series.updated, series.seen = now, True
            if point.exemplars:
                self._bucket_exemplars(series, point.exemplars)
        return family

    # --- streams made alike -----------------------------------------------------------------------------------
    # One source never measures a series twice at one instant: a second point of a series at the time of the one
    # this request stored is another of the sender's streams whose labels became alike on the way (an attribute
    # masked by the redaction processor, keys sanitized to one name). The data model has streams whose
    # attributes were removed re-aggregated: sums and histograms are added up, whatever order the sender lists
    # them in (the Go SDK's changes at every export); a gauge or a summary has no such sum, so the first point
    # is kept and another value counted (``duplicate_series``), not shown in turn with it. An identical second
    # point is added too: one request never holds one export twice (a sender retries whole requests), while two
    # masked streams often have equal counts.

    def _same_instant(self, series: Series, point: Any) -> bool:
        return series.seen and series.folded_by == self._request_serial and point.time_unix_nano == series.time_ns

    def _add_stream(self, family: Family, labels: dict[str, str], series: Series, point: Any, delta: bool) -> None:
        """Streams added up into one series may have started at different times: the series starts with the
        earliest, takes no start moving between its points for a restart (two sources, as ``_restarted`` says),
        and is shown at zero first only if every stream started recently, whichever came first."""
        start = point.start_time_unix_nano
        if series.zero_pending:
            series.zero_pending = self._starts_at_zero(family, labels, start, delta)
        if start and start != series.start_ns:
            series.start_unsteady = True
            if not series.start_ns or start < series.start_ns:
                series.start_ns = start

    def _starts_at_zero(self, family: Family, labels: dict[str, str], start_ns: int, delta: bool) -> bool:
        """Whether a new (or restarted) series is shown at zero first. A sum of deltas is always new: it began
        with this state, so whatever Prometheus saw of the series before (from the agent before a restart) was
        another sum, and showing this one at once would hide its first counts behind that one."""
        if delta:
            return self._zero_for > 0
        return self._started_recently(family, labels, start_ns)

    def _started_recently(self, family: Family, labels: dict[str, str], start_ns: int) -> bool:
        """Whether a new series' counts all came after the previous scrape (give or take the minute a connector
        may hold them before its flush): only then is exposing it at zero first true to what Prometheus missed.
        A series Prometheus may have seen already keeps its value, since a zero would read as a reset and count
        its history again: anything before this agent's first scrape (the agent restarted), a series that
        started long ago (idle past expiration), one coming back with the start it ended with."""
        if self._last_read_ns is None or start_ns <= 0 or self._zero_for <= 0:
            return False
        key = (family.name, tuple(sorted(labels.items())))
        if self._ended_starts.get(key) == start_ns:  # only a match is taken: another stream of it may match
            del self._ended_starts[key]
            return False
        return start_ns >= self._last_read_ns - _NEW_SERIES_GRACE_NS

    def resume_after(self, previous: Accumulator) -> None:
        """Carry on from the accumulator this one replaces (a reload, on the same endpoint): its last scrape, so
        that the span-metric counters the reload restarted rise from zero (a series counting 1 before the reload
        and 2 after, first scraped after, read 1 → 2 in Prometheus: no reset); and the start of every counter and
        histogram it held, so that one whose source did not restart (an application's, pushed again) keeps its
        value, as one that ended and came back with the same start does."""
        with previous._lock:
            last_read_ns = previous._last_read_ns
            if last_read_ns is None:
                return  # never scraped: Prometheus has seen nothing of it
            # Only starts recent enough to be taken for new ones, and only of series a scrape has shown: one still
            # waiting for its first scrape at zero must still begin at zero.
            recent = last_read_ns - _NEW_SERIES_GRACE_NS
            starts = {key: start for key, start in previous._ended_starts.items() if start >= recent}
            for family in previous._families.values():
                if family.type in (COUNTER, HISTOGRAM):
                    starts.update(
                        ((family.name, key), series.start_ns)
                        for key, series in family.series.items()
                        if series.start_ns >= recent and not series.zero_pending
                    )
        with self._lock:
            if self._last_read_ns is None:
                self._last_read_ns = last_read_ns
                self._ended_starts.update(starts)

    @staticmethod
    def _bucket_exemplars(series: Series, exemplars: Iterable[Any], *, beside_another_stream: bool = False) -> None:
        slots = series.exemplars
        if slots is None:
            slots = series.exemplars = [None] * (len(series.bounds) + 1)
        # The largest of a point's exemplars in each bucket, as the OpenTelemetry-Prometheus compatibility spec
        # asks of pull endpoints; a bucket this point has none for keeps the one an earlier point gave it. Points
        # of streams added up at one instant are one point: the largest of all of them, whatever their order.
        latest: dict[int, ExemplarValue] = {}
        for raw in exemplars:
            exemplar = _exemplar(raw)
            if exemplar is None:
                continue
            bucket = bisect_left(series.bounds, exemplar.value)  # the bucket the value fell in
            found = latest.get(bucket)
            if found is None or exemplar.value > found.value:
                latest[bucket] = exemplar
        for bucket, exemplar in latest.items():
            held = slots[bucket]
            if not beside_another_stream or held is None or exemplar.value > held.value:
                slots[bucket] = exemplar

    def _summaries(self, metric: Metric, points: Sequence[Any], base: dict[str, str], now: float) -> Folding:
        family = self._family(metric, SUMMARY, len(points))
        if family is None:
            return None
        for point in points:
            yield  # a pause point between data points (see _fold)
            labels = _without_reserved(self._labels(point.attributes, base), "quantile")
            if point.flags & _NO_RECORDED_VALUE:
                self._remove(family, labels, point)
                continue
            quantiles = [q.quantile for q in point.quantile_values]
            # OTLP and OpenMetrics both want each quantile in [0, 1] (NaN is not), one series per quantile.
            if not all(0.0 <= q <= 1.0 for q in quantiles) or len(set(quantiles)) != len(quantiles):
                self._on_drop("malformed", 1)
                continue
            # A sum that is NaN or negative (a clock offset's) is no counter: _sum is left out, and the quantiles
            # and _count, which the compatibility spec always produces, are shown.
            total_sum = point.sum if point.sum >= 0.0 else None
            series = self._series(family, labels)
            if series is None:
                continue
            if series.seen and point.time_unix_nano < series.time_ns:
                self._on_drop("out_of_order", 1)
                continue
            quantile_values = [(q.quantile, q.value) for q in point.quantile_values if not q.value < 0.0]
            if len(quantile_values) != len(quantiles):
                # OpenMetrics forbids a negative quantile value, and a strict parser refuses the whole scrape for
                # one: those quantiles are left out (a clock offset's belongs in a gauge or a histogram).
                self._on_drop("malformed", 1)
            if self._same_instant(series, point):
                same = (total_sum, float(point.count)) == (series.sum, series.count) and _alike(
                    quantile_values, series.quantiles
                )
                if not same:  # NaN is a quantile's value in an empty window: two of them are alike
                    self._on_drop("duplicate_series", 1)
                continue
            series.sum, series.count = total_sum, float(point.count)
            series.quantiles = quantile_values
            series.start_ns, series.time_ns = point.start_time_unix_nano, point.time_unix_nano
            series.folded_by = self._request_serial
            series.updated, series.seen = now, True
        return family

    # --- output ---------------------------------------------------------------------------------------------

    def snapshot(self) -> tuple[list[Family], list[Target]]:
        """Expire stale series, then copy what is left (families shallow-copied; series are replaced, not
        mutated, only under the lock, so readers outside it see consistent values)."""
        with self._lock:
            self._fold(None)  # what is queued is part of the state
            self._expire()
            now, zero_for = self._clock(), self._zero_for
            families = [
                Family(f.name, f.type, f.help, f.unit, {k: _read(s, now, zero_for) for k, s in f.series.items()})
                for f in self._families.values()
            ]
            self._last_read_ns = self._wall_clock()
            return families, list(self._targets.values())

    @property
    def series_count(self) -> int:
        """Series held, ``target_info`` ones included: what ``max_series`` bounds."""
        return self._series_count + len(self._targets)


TARGET_FAMILY, TARGET_INFO = "target", "target_info"  # an info family named target, exposed as target_info


def _without_reserved(labels: dict[str, str], reserved: str) -> dict[str, str]:
    """An attribute named like the label a family type adds itself (``le``, ``quantile``) would be overwritten by
    it, merging series: it is kept as ``exported_<name>``, as Prometheus renames clashing target labels."""
    if reserved in labels:
        labels[_free_exported_name(labels, reserved)] = labels.pop(reserved)
    return labels


def _identity_names_kept_apart(labels: dict[str, str]) -> dict[str, str]:
    """A resource attribute named ``job`` or ``instance`` is kept as ``exported_<name>``. As itself it would give
    ``target_info`` (and, copied, every series) a job or instance other than the series' own, which come from
    ``service.*`` or from the scrape, so joins on them would find nothing; or be overwritten by ``service.*``."""
    for name in ("job", "instance"):
        if name in labels:
            labels[_free_exported_name(labels, name)] = labels.pop(name)
    return labels


def _free_exported_name(labels: dict[str, str], name: str) -> str:
    """``exported_<name>``, or ``exported_exported_<name>`` … when an attribute already has that name, as
    Prometheus renames clashing target labels: overwriting it would merge series."""
    renamed = f"exported_{name}"
    while renamed in labels:
        renamed = f"exported_{renamed}"
    return renamed


def _exposable_sum(point: Any, exponential: bool, bounds: tuple[float, ...] = ()) -> float | None:
    """A histogram's sum, when the source sent one and it can be exposed: not over negative observations, which
    would make ``_sum`` decrease (the OTLP-to-Prometheus rules), nor with a negative bucket bound, nor NaN or
    negative (OpenMetrics: a histogram's sum is a counter, and there is none beside negative thresholds)."""
    if not point.HasField("sum"):
        return None
    if exponential and any(point.negative.bucket_counts):
        return None
    if (bounds and bounds[0] < 0.0) or not point.sum >= 0.0:
        return None
    return point.sum


def _restarted(series: Series, point: Any) -> bool:
    """A cumulative point with a later start than the series had: its source started counting again (a process
    restarted, a span-metrics series expired and came back). Prometheus sees a reset only when the value drops,
    and a counter back at 1 after 1 would hide its new event, so the series rises from zero again like a new
    one (see _started_recently). A source moving the start on consecutive points is not restarting: it is
    told apart, and its series keeps its values."""
    if series.seen and 0 < point.start_time_unix_nano < series.start_ns:
        # A start before the one held: no process restarts into the past, so two sources write this series (two
        # replicas with one resource). Their starts alternate: taking each for a restart would zero it forever.
        series.start_unsteady = True
    moved = series.seen and 0 < series.start_ns < point.start_time_unix_nano
    if moved and series.restarted_last:
        series.start_unsteady = True
    series.restarted_last = moved
    return moved and not series.start_unsteady


def _read(series: Series, now: float, zero_for: float) -> Series:
    """What a scrape sees of ``series``: a copy, at zero for ``zero_for`` seconds from its first scrape for a series
    that started recently (so that every scraper, not only the first, sees it rise from zero)."""
    if series.zero_pending:
        series.zero_pending = False
        series.zero_until = now + zero_for
    elif now >= series.zero_until:
        series.shown = True
        return _copy(series)
    zero = _copy(series)
    zero.value, zero.count, zero.exemplar = 0.0, 0.0, None
    zero.counts = [0.0] * len(series.counts)
    zero.sum = None if series.sum is None else 0.0
    zero.exemplars = None if series.exemplars is None else [None] * len(series.exemplars)
    return zero


def _copy(series: Series) -> Series:
    return Series(
        series.labels,
        series.seen,
        series.updated,
        series.start_ns,
        series.time_ns,
        series.value,
        series.exemplar,
        series.bounds,
        list(series.counts),
        series.sum,
        series.count,
        list(series.exemplars) if series.exemplars is not None else None,
        list(series.quantiles),
    )


def _exemplar(raw: Any) -> ExemplarValue | None:
    """The exemplar as exposed, or None for a NaN or infinite value: no bucket holds it, and a made-up value would
    push out a real exemplar."""
    observed = raw.as_double if raw.WhichOneof("value") == "as_double" else float(raw.as_int)
    if not math.isfinite(observed):
        return None
    labels: dict[str, str] = {}
    if raw.trace_id:
        labels["trace_id"] = raw.trace_id.hex()
    if raw.span_id:
        labels["span_id"] = raw.span_id.hex()
    used = sum(len(k) + len(v) for k, v in labels.items())
    for kv in raw.filtered_attributes:
        name, value = sanitize_label_name(kv.key), any_value_text(kv.value)
        if name in labels or not value or used + len(name) + len(value) > EXEMPLAR_MAX_RUNES:
            continue
        labels[name] = value
        used += len(name) + len(value)
    time_s = raw.time_unix_nano / 1e9 if raw.time_unix_nano else None
    return ExemplarValue(labels, observed, time_s)


def _explicit_buckets(
    bounds: tuple[float, ...], bucket_counts: Sequence[int], count: int
) -> tuple[tuple[float, ...], list[float]] | None:
    """Bounds and counts of an OTLP explicit-bucket point as exposed (``le`` per bound, then ``+Inf``), or None
    when they cannot be: counts not one more than bounds, a NaN or -Inf bound, bounds not increasing. A last
    bound of +Inf (its bucket is empty by definition) is folded into the ``+Inf`` bucket, which would otherwise
    be exposed twice."""
    counts = list(map(float, bucket_counts)) or [float(count)]
    if len(counts) != len(bounds) + 1:
        return None
    if bounds and bounds[-1] == math.inf:
        bounds = bounds[:-1]
        counts[-2:] = [counts[-2] + counts[-1]]
    if not all(map(math.isfinite, bounds)) or any(b <= a for a, b in itertools.pairwise(bounds)):
        return None
    return bounds, counts
