"""The prometheus exporter: OpenTelemetry→Prometheus rules, exposition formats, promtool, the catalogue names."""

from __future__ import annotations

import asyncio
import gzip
import logging
import math
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    DataPointFlags,
    Exemplar,
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    SummaryDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from agent.component import CreateSettings, Kind, Signal
from agent.config.schema import Duration, HostPort
from agent.connectors.spanmetrics.config import GenAiConfig, SpanMetricsConfig
from agent.connectors.spanmetrics.connector import SpanMetricsConnector
from agent.exporters.prometheus.accumulator import MAX_EXPONENTIAL_BUCKETS, Accumulator, exponential_to_explicit
from agent.exporters.prometheus.config import PrometheusExporterConfig
from agent.exporters.prometheus.exporter import PrometheusExporter, accepts_gzip
from agent.exporters.prometheus.naming import metric_family_name, sanitize_label_name, unit_suffix
from agent.server_tls import TlsServerConfig
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.workload import Workload, attr
from tests.helpers import free_port, metric_value, self_signed_certificate

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
S = 1_000_000_000


def settings(metrics: SelfMetrics, cid: str = "prometheus", kind: Kind = Kind.EXPORTER) -> CreateSettings:
    from agent.config.service import ServiceConfig

    return CreateSettings(cid, kind, logging.getLogger(f"test.{cid}"), metrics, ServiceConfig(), {})


NO_ZERO_HOLD = PrometheusExporterConfig(new_series_at_zero_for=Duration(0.0))


def exporter(cfg: PrometheusExporterConfig | None = None) -> tuple[PrometheusExporter, SelfMetrics]:
    metrics = SelfMetrics()
    return PrometheusExporter(cfg or PrometheusExporterConfig(), settings(metrics)), metrics


def request(*metrics: Metric, resource: dict[str, str] | None = None, scope: InstrumentationScope | None = None) -> Any:
    res = Resource(attributes=[attr(k, v) for k, v in (resource or {}).items()])
    return ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(resource=res, scope_metrics=[ScopeMetrics(scope=scope, metrics=metrics)])]
    )


def number(value: float, start: int = 0, end: int = 1, **labels: str) -> NumberDataPoint:
    return NumberDataPoint(
        as_double=value,
        start_time_unix_nano=start * S,
        time_unix_nano=end * S,
        attributes=[attr(k, v) for k, v in labels.items()],
    )


def sum_metric(
    name: str, *points: NumberDataPoint, monotonic: bool = True, temporality: int = CUMULATIVE, unit: str = ""
) -> Metric:
    metric = Metric(name=name, unit=unit, description=f"{name} help")
    metric.sum.aggregation_temporality = temporality  # type: ignore[assignment]
    metric.sum.is_monotonic = monotonic
    metric.sum.data_points.extend(points)
    return metric


def histogram_metric(name: str, *points: HistogramDataPoint, temporality: int = CUMULATIVE, unit: str = "s") -> Metric:
    metric = Metric(name=name, unit=unit, description="latency")
    metric.histogram.aggregation_temporality = temporality  # type: ignore[assignment]
    metric.histogram.data_points.extend(points)
    return metric


def text(exp: PrometheusExporter) -> str:
    return generate_latest(exp.registry).decode()


def openmetrics(exp: PrometheusExporter) -> str:
    return generate_openmetrics(exp.registry).decode()


def an_exemplar(value: float, trace: int = 1) -> Exemplar:
    return Exemplar(as_double=value, trace_id=bytes([trace]) * 16, span_id=b"\x01" * 8, time_unix_nano=4 * S)


def bucket_exemplars(exp: PrometheusExporter, family: str) -> dict[str, float | None]:
    """``le`` -> the value of the exemplar on that bucket (None: none), as the strict OpenMetrics parser reads it."""
    (parsed,) = [f for f in text_string_to_metric_families(openmetrics(exp)) if f.name == family]
    return {
        s.labels["le"]: (s.exemplar.value if s.exemplar else None) for s in parsed.samples if s.name.endswith("_bucket")
    }


def dropped(metrics: SelfMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "otel_sidecar_prometheus_dropped_points_total", {"exporter": "prometheus", "reason": reason}
    )
    return value or 0.0


# --- naming ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        ("orchestrator.spans", "{span}", "counter", "orchestrator_spans"),
        ("orchestrator.span.duration", "s", "histogram", "orchestrator_span_duration_seconds"),
        ("orchestrator.llm.cost_usd", "{USD}", "counter", "orchestrator_llm_cost_usd"),
        ("gen_ai.client.operation.duration", "s", "histogram", "gen_ai_client_operation_duration_seconds"),
        ("gen_ai.client.token.usage", "{token}", "histogram", "gen_ai_client_token_usage"),
        ("http.server.request.duration", "s", "histogram", "http_server_request_duration_seconds"),
        ("process.memory.usage", "By", "gauge", "process_memory_usage_bytes"),
        ("system.cpu.utilization", "1", "gauge", "system_cpu_utilization_ratio"),
        ("queue.items", "1", "counter", "queue_items"),
        ("vehicle.speed", "m/s", "gauge", "vehicle_speed_meters_per_second"),
        ("requests.total", "", "counter", "requests"),
        ("latency_seconds", "s", "histogram", "latency_seconds"),
        ("gen_ai.usage.cost", "USD", "histogram", "gen_ai_usage_cost_USD"),
        ("weird..name__x", "", "gauge", "weird_name_x"),
        ("2xx.responses", "", "counter", "_2xx_responses"),
        ("seconds", "s", "gauge", "seconds"),  # the name is the unit word: not seconds_seconds
        ("disk.megabytes", "By", "gauge", "disk_megabytes_bytes"),  # the word ends a word of the name only
        ("http:requests", "", "counter", "http_requests"),  # colons are for recording rules
    ],
)
def test_metric_names_follow_the_opentelemetry_to_prometheus_rules(
    name: str, unit: str, kind: str, expected: str
) -> None:
    assert metric_family_name(name, unit, counter=kind == "counter", gauge=kind == "gauge") == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("service.name", "service_name"),
        ("http.response.status_code", "http_response_status_code"),
        ("1st", "key_1st"),
        ("a-b/c", "a_b_c"),
        ("otel.metric.overflow", "otel_metric_overflow"),
        ("_", "key_"),
        ("__meta", "_meta"),  # runs of "_" collapse: never the "__" prefix Prometheus reserves
        (".", "key_"),
    ],
)
def test_label_names_are_sanitized(key: str, expected: str) -> None:
    assert sanitize_label_name(key) == expected


def test_unit_annotations_are_dropped_and_unknown_units_kept() -> None:
    assert unit_suffix("{request}") == ""
    assert unit_suffix("ms") == "milliseconds"
    assert unit_suffix("KiBy") == "kibibytes"
    assert unit_suffix("{packet}/s") == "per_second"
    assert unit_suffix("USD") == "USD"
    # Only an annotation after the slash leaves no dangling "per" (the Collector's translator agrees).
    assert unit_suffix("1/{request}") == ""
    assert unit_suffix("By/{request}") == "bytes"


# --- type and temporality mapping ---------------------------------------------------------------------------------


def test_a_gauge_named_like_its_unit_word_has_no_unit_metadata_and_a_valid_openmetrics_scrape() -> None:
    """OpenMetrics allows a UNIT only on a family whose name ends with it: `seconds` (unit s) is not named twice, so
    it has none."""
    exp, _ = exporter()
    gauge = Metric(name="seconds", unit="s", description="uptime")
    gauge.gauge.data_points.append(number(3))
    exp.consume(request(gauge))
    om = openmetrics(exp)
    assert "# UNIT" not in om
    assert [f.name for f in text_string_to_metric_families(om)] == ["seconds"]


def test_a_metric_without_a_description_is_helped_by_its_name() -> None:
    exp, _ = exporter()
    metric = sum_metric("orders", number(2))
    metric.description = ""
    exp.consume(request(metric))
    assert "# HELP orders_total orders\n" in text(exp)


def test_a_cumulative_monotonic_sum_is_a_counter_with_the_latest_value() -> None:
    exp, metrics = exporter()
    exp.consume(request(sum_metric("jobs.done", number(5, 0, 1, queue="a"), unit="{job}")))
    exp.consume(request(sum_metric("jobs.done", number(8, 0, 2, queue="a"), unit="{job}")))
    exp.consume(request(sum_metric("jobs.done", number(6, 0, 1, queue="a"), unit="{job}")))  # older: ignored
    out = text(exp)
    assert "# TYPE jobs_done_total counter" in out
    assert metric_value(out, "jobs_done_total", queue="a") == 8
    assert dropped(metrics, "out_of_order") == 1


def test_delta_sums_accumulate_while_aligned_and_overlaps_are_dropped() -> None:
    exp, metrics = exporter(NO_ZERO_HOLD)  # a sum of deltas is shown at zero first (tested below)
    for start, end, value in ((0, 10, 3), (10, 20, 4), (30, 40, 5), (35, 45, 100)):
        exp.consume(request(sum_metric("hits", number(value, start, end), temporality=DELTA)))
    assert metric_value(text(exp), "hits_total") == 12  # 3 + 4, gap accepted: + 5; overlap dropped
    assert dropped(metrics, "misaligned_delta") == 1


def test_non_monotonic_sums_are_gauges_and_delta_ones_are_dropped() -> None:
    exp, metrics = exporter()
    exp.consume(request(sum_metric("queue.depth", number(-3), monotonic=False)))
    exp.consume(request(sum_metric("queue.change", number(2), monotonic=False, temporality=DELTA)))
    out = text(exp)
    assert "# TYPE queue_depth gauge" in out and metric_value(out, "queue_depth") == -3
    assert "queue_change" not in out
    assert dropped(metrics, "delta_non_monotonic") == 1


def test_gauges_pass_through_with_unit_suffix() -> None:
    exp, _ = exporter()
    gauge = Metric(name="process.memory.usage", unit="By", description="rss")
    gauge.gauge.data_points.append(number(1024))
    exp.consume(request(gauge))
    out = text(exp)
    assert "# TYPE process_memory_usage_bytes gauge" in out
    assert metric_value(out, "process_memory_usage_bytes") == 1024


def test_cumulative_histograms_become_classic_histograms_with_exemplars_in_their_buckets() -> None:
    exp, _ = exporter()
    point = HistogramDataPoint(
        start_time_unix_nano=0,
        time_unix_nano=5 * S,
        count=6,
        sum=7.5,
        bucket_counts=[1, 2, 3],
        explicit_bounds=[0.5, 1.0],
        exemplars=[
            Exemplar(as_double=0.7, trace_id=b"\xaa" * 16, span_id=b"\xbb" * 8, time_unix_nano=4 * S),
            Exemplar(as_double=3.0, trace_id=b"\xcc" * 16, span_id=b"\xdd" * 8, time_unix_nano=4 * S),
        ],
    )
    exp.consume(request(histogram_metric("rpc.duration", point)))
    out = text(exp)
    assert metric_value(out, "rpc_duration_seconds_bucket", le="0.5") == 1
    assert metric_value(out, "rpc_duration_seconds_bucket", le="1.0") == 3
    assert metric_value(out, "rpc_duration_seconds_bucket", le="+Inf") == 6
    assert metric_value(out, "rpc_duration_seconds_count") == 6
    assert metric_value(out, "rpc_duration_seconds_sum") == 7.5
    om = openmetrics(exp)
    bucket_1 = next(line for line in om.splitlines() if 'le="1.0"' in line)
    assert f'trace_id="{"aa" * 16}"' in bucket_1 and f'span_id="{"bb" * 8}"' in bucket_1
    inf = next(line for line in om.splitlines() if 'le="+Inf"' in line)
    assert "cc" * 16 in inf
    assert "# UNIT rpc_duration_seconds seconds" in om


def test_a_counter_shows_the_last_exemplar_of_its_point_with_its_time_in_seconds() -> None:
    exp, _ = exporter()
    point = number(2)
    point.exemplars.extend([an_exemplar(1.0, trace=1), an_exemplar(1.0, trace=2)])
    exp.consume(request(sum_metric("jobs", point)))
    (family,) = [f for f in text_string_to_metric_families(openmetrics(exp)) if f.name == "jobs"]
    (sample,) = [s for s in family.samples if s.name == "jobs_total"]
    assert sample.exemplar is not None
    assert sample.exemplar.labels["trace_id"] == "02" * 16
    assert float(sample.exemplar.timestamp) == 4.0  # an_exemplar's time, 4 s after the epoch


def test_a_histogram_whose_bucket_layout_changes_shows_no_exemplar_of_the_old_layout() -> None:
    """The old layout's exemplars sit at its bucket indexes: kept, one would show on another bucket (or past the
    new layout's last one)."""
    exp, _ = exporter()
    old = HistogramDataPoint(
        time_unix_nano=S, count=1, sum=4.0, bucket_counts=[1, 0], explicit_bounds=[5.0], exemplars=[an_exemplar(4.0)]
    )
    new = HistogramDataPoint(time_unix_nano=2 * S, count=1, sum=4.0, bucket_counts=[0, 1, 0], explicit_bounds=[1, 5])
    exp.consume(request(histogram_metric("rpc.duration", old)))
    assert bucket_exemplars(exp, "rpc_duration_seconds") == {"5.0": 4.0, "+Inf": 4.0}
    exp.consume(request(histogram_metric("rpc.duration", new)))
    assert bucket_exemplars(exp, "rpc_duration_seconds") == {"1.0": None, "5.0": None, "+Inf": None}


def test_each_bucket_shows_its_largest_exemplar_and_an_empty_one_the_highest_below_it() -> None:
    """Pass 129: the latest exemplar of a bucket was shown, and buckets without one showed none. The compatibility
    spec: "the largest exemplar from each bucket MUST be used ... If no exemplars exist on a bucket, the highest
    exemplar from a lower bucket MUST be used"."""
    exp, _ = exporter()
    values = [0.9, 0.2, 2.5, 2.1]  # two in the first bucket (<= 1), two in the third (<= 5)
    point = HistogramDataPoint(
        time_unix_nano=5 * S,
        count=4,
        sum=5.7,
        bucket_counts=[2, 0, 2, 0],
        explicit_bounds=[1.0, 2.0, 5.0],
        exemplars=[an_exemplar(v, trace=i + 1) for i, v in enumerate(values)],
    )
    exp.consume(request(histogram_metric("rpc.duration", point)))
    assert bucket_exemplars(exp, "rpc_duration_seconds") == {"1.0": 0.9, "2.0": 0.9, "5.0": 2.5, "+Inf": 2.5}


@pytest.mark.parametrize("order", [(0.9, 0.2), (0.2, 0.9)])
def test_streams_added_up_show_the_largest_exemplar_whatever_their_order(order: tuple[float, float]) -> None:
    """Pass 132: the exemplar of the stream listed last was shown, so it flipped with the sender's order."""
    exp, _ = exporter()

    def point(value: float, key: str) -> HistogramDataPoint:
        exemplar = an_exemplar(value)
        found = HistogramDataPoint(
            time_unix_nano=5 * S, count=1, sum=value, bucket_counts=[1, 0], explicit_bounds=[1.0], exemplars=[exemplar]
        )
        found.attributes.append(attr(key, "x"))
        return found

    exp.consume(request(histogram_metric("rpc.duration", point(order[0], "a:b"), point(order[1], "a_b"))))
    assert bucket_exemplars(exp, "rpc_duration_seconds")["1.0"] == 0.9


def test_a_bucket_that_counts_nothing_shows_no_exemplar_of_its_own_or_from_below() -> None:
    """Pass 132: an exemplar the counts do not hold (a source reset without a start time keeps the old ones) was
    shown on an empty bucket, and carried up to every empty bucket above it."""
    exp, _ = exporter()
    point = HistogramDataPoint(
        time_unix_nano=5 * S,
        count=2,
        sum=3.0,
        bucket_counts=[0, 0, 2],
        explicit_bounds=[0.5, 1.0],
        exemplars=[an_exemplar(0.3)],
    )
    exp.consume(request(histogram_metric("rpc.duration", point)))
    assert bucket_exemplars(exp, "rpc_duration_seconds") == {"0.5": None, "1.0": None, "+Inf": 0.3}


def test_delta_histograms_accumulate_bucket_by_bucket() -> None:
    exp, metrics = exporter(NO_ZERO_HOLD)  # a sum of deltas is shown at zero first (tested below)

    def point(start: int, end: int, counts: list[int], bounds: list[float]) -> HistogramDataPoint:
        return HistogramDataPoint(
            start_time_unix_nano=start * S,
            time_unix_nano=end * S,
            count=sum(counts),
            sum=float(sum(counts)),
            bucket_counts=counts,
            explicit_bounds=bounds,
        )

    exp.consume(request(histogram_metric("d", point(0, 10, [1, 1], [1.0]), temporality=DELTA)))
    exp.consume(request(histogram_metric("d", point(10, 20, [2, 0], [1.0]), temporality=DELTA)))
    exp.consume(request(histogram_metric("d", point(15, 25, [1, 1, 1], [1.0, 2.0]), temporality=DELTA)))  # overlaps
    out = text(exp)
    assert metric_value(out, "d_seconds_bucket", le="1.0") == 3
    assert metric_value(out, "d_seconds_count") == 4
    assert metric_value(out, "d_seconds_sum") == 4  # 2.0 + 2.0
    assert dropped(metrics, "bucket_mismatch") == 1
    # New bounds in a run after the last point: the sender restarted with another layout. The series starts
    # again from that point (Prometheus reads a reset) instead of dropping every point until it expires.
    exp.consume(request(histogram_metric("d", point(20, 30, [1, 1, 1], [1.0, 2.0]), temporality=DELTA)))
    exp.consume(request(histogram_metric("d", point(30, 40, [0, 1, 0], [1.0, 2.0]), temporality=DELTA)))
    out = text(exp)
    assert metric_value(out, "d_seconds_bucket", le="2.0") == 3
    assert metric_value(out, "d_seconds_count") == 4
    assert dropped(metrics, "bucket_mismatch") == 1


def test_an_overlapping_delta_histogram_point_with_the_same_bounds_is_dropped_as_misaligned() -> None:
    exp, metrics = exporter(NO_ZERO_HOLD)  # a sum of deltas is shown at zero first (tested below)

    def point(start: int, end: int, counts: list[int], total: float) -> HistogramDataPoint:
        return HistogramDataPoint(
            start_time_unix_nano=start * S,
            time_unix_nano=end * S,
            count=sum(counts),
            sum=total,
            bucket_counts=counts,
            explicit_bounds=[1.0],
        )

    for start, end, counts, total in ((0, 10, [1, 1], 2.5), (10, 20, [2, 0], 0.5), (15, 25, [4, 4], 50.0)):
        exp.consume(request(histogram_metric("d", point(start, end, counts, total), temporality=DELTA)))
    out = text(exp)
    assert metric_value(out, "d_seconds_bucket", le="1.0") == 3
    assert metric_value(out, "d_seconds_count") == 4
    assert metric_value(out, "d_seconds_sum") == 3.0
    assert dropped(metrics, "misaligned_delta") == 1
    assert dropped(metrics, "bucket_mismatch") == 0


def test_a_histogram_count_is_its_inf_bucket_whatever_the_points_count_field_says() -> None:
    exp, _ = exporter()
    point = HistogramDataPoint(time_unix_nano=S, count=10, sum=1.5, explicit_bounds=[1.0], bucket_counts=[1, 2])
    exp.consume(request(histogram_metric("lat", point)))
    out = text(exp)
    assert metric_value(out, "lat_seconds_bucket", le="+Inf") == 3
    assert metric_value(out, "lat_seconds_count") == 3  # not 10: Prometheus wants _count == the +Inf bucket


def test_exponential_histograms_are_exposed_as_classic_buckets_at_their_boundaries() -> None:
    exp, metrics = exporter()
    point = ExponentialHistogramDataPoint(
        time_unix_nano=S, count=10, sum=20.0, scale=0, zero_count=1, zero_threshold=0.0
    )
    point.positive.offset = 0
    point.positive.bucket_counts.extend([2, 3])  # (1, 2] and (2, 4]
    point.negative.offset = 1
    point.negative.bucket_counts.extend([4])  # [-4, -2)
    metric = Metric(name="payload.size", unit="By")
    metric.exponential_histogram.aggregation_temporality = CUMULATIVE
    metric.exponential_histogram.data_points.append(point)
    exp.consume(request(metric))
    out = text(exp)
    assert metric_value(out, "payload_size_bytes_bucket", le="-2.0") == 4
    assert metric_value(out, "payload_size_bytes_bucket", le="0.0") == 5
    assert metric_value(out, "payload_size_bytes_bucket", le="2.0") == 7
    assert metric_value(out, "payload_size_bytes_bucket", le="4.0") == 10
    assert metric_value(out, "payload_size_bytes_bucket", le="+Inf") == 10
    delta = Metric(name="payload.size2")
    delta.exponential_histogram.aggregation_temporality = DELTA
    delta.exponential_histogram.data_points.append(point)
    exp.consume(request(delta))
    assert dropped(metrics, "delta_exponential_histogram") == 1


def test_an_exponential_histogram_of_exactly_the_maximum_buckets_keeps_its_scale() -> None:
    """Only a point with more than MAX_EXPONENTIAL_BUCKETS buckets of one sign is downscaled."""
    point = ExponentialHistogramDataPoint(count=MAX_EXPONENTIAL_BUCKETS, scale=3)
    point.positive.bucket_counts.extend([1] * MAX_EXPONENTIAL_BUCKETS)
    bounds, counts = exponential_to_explicit(point)
    assert len(bounds) == 1 + MAX_EXPONENTIAL_BUCKETS  # the zero bucket's bound, then one per bucket
    assert bounds[1] == 2.0 ** (1 / 8)  # the first bucket's upper bound at scale 3
    assert counts == [0.0] + [1.0] * MAX_EXPONENTIAL_BUCKETS + [0.0]


def test_an_exponential_histogram_with_empty_negative_buckets_keeps_its_sum_in_valid_openmetrics() -> None:
    """The Python SDK sends negative={offset 0, bucket_counts [0]} with all-positive observations."""
    exp, _ = exporter()
    point = ExponentialHistogramDataPoint(time_unix_nano=S, count=5, sum=7.5, scale=0)
    point.positive.bucket_counts.extend([2, 3])
    point.negative.bucket_counts.extend([0])
    metric = Metric(name="model.latency", unit="ms")
    metric.exponential_histogram.aggregation_temporality = CUMULATIVE
    metric.exponential_histogram.data_points.append(point)
    exp.consume(request(metric))
    (family,) = [f for f in text_string_to_metric_families(openmetrics(exp)) if f.name == "model_latency_milliseconds"]
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("model_latency_milliseconds_sum", None)] == 7.5
    assert not any(le.startswith("-") for _, le in samples if le)


def test_an_exponential_histogram_of_a_million_buckets_is_exposed_downscaled_to_at_most_160() -> None:
    """1,000,000 buckets at scale 20 fit in a 1 KB gzipped request; exposed as they came, every scrape carried
    a million `le` lines (61 MB, 16 s, past Prometheus's scrape timeout) until the series expired."""
    exp, _ = exporter()
    point = ExponentialHistogramDataPoint(time_unix_nano=S, count=1_000_000, sum=1_200_000.0, scale=20)
    point.positive.offset = 0
    point.positive.bucket_counts.extend([1] * 1_000_000)
    metric = Metric(name="flood", unit="s")
    metric.exponential_histogram.aggregation_temporality = CUMULATIVE
    metric.exponential_histogram.data_points.append(point)
    exp.consume(request(metric))
    out = text(exp)
    buckets = [line for line in out.splitlines() if line.startswith("flood_seconds_bucket")]
    assert len(buckets) <= MAX_EXPONENTIAL_BUCKETS + 2  # the zero bucket and +Inf besides
    assert metric_value(out, "flood_seconds_bucket", le="+Inf") == 1_000_000
    assert metric_value(out, "flood_seconds_count") == 1_000_000


@given(
    st.integers(0, 8),  # with offsets and lengths that keep the original bounds within float range
    st.integers(-300, 300),
    st.lists(st.integers(0, 5), min_size=1, max_size=700),
    st.integers(-300, 300),
    st.lists(st.integers(0, 5), max_size=700),
)
def test_a_downscaled_exponential_histogram_counts_the_same_below_each_of_its_bounds(
    scale: int, offset: int, counts: list[int], negative_offset: int, negative_counts: list[int]
) -> None:
    """Downscaling only merges neighbouring buckets: each bound it keeps is one of the original's, with the same
    number of observations at or below it."""
    point = ExponentialHistogramDataPoint(scale=scale, zero_count=3)
    point.positive.offset, point.negative.offset = offset, negative_offset
    point.positive.bucket_counts.extend(counts)
    point.negative.bucket_counts.extend(negative_counts)
    step = 2.0**-scale
    original = [
        (-(2.0 ** ((negative_offset + i) * step)), c) for i, c in enumerate(negative_counts) if any(negative_counts)
    ]
    original += [(0.0, 3)] + [(2.0 ** ((offset + i + 1) * step), c) for i, c in enumerate(counts)]
    try:
        bounds, merged = exponential_to_explicit(point)
    except (OverflowError, ValueError):
        return  # bounds beyond float range or rounding together: refused whole, as before
    assert sum(1 for b in bounds if b > 0) <= MAX_EXPONENTIAL_BUCKETS
    assert sum(1 for b in bounds if b < 0) <= MAX_EXPONENTIAL_BUCKETS
    below = 0.0
    for bound, count in zip(bounds, merged, strict=False):
        below += count
        assert below == sum(c for upper, c in original if upper <= bound)
    assert sum(merged) == sum(counts) + sum(negative_counts) * any(negative_counts) + 3


def test_summaries_keep_their_quantiles() -> None:
    exp, _ = exporter()
    metric = Metric(name="gc.pause", unit="s")
    point = SummaryDataPoint(time_unix_nano=S, count=3, sum=0.6)
    point.quantile_values.add(quantile=0.5, value=0.2)
    point.quantile_values.add(quantile=0.99, value=0.3)
    metric.summary.data_points.append(point)
    exp.consume(request(metric))
    out = text(exp)
    assert "# TYPE gc_pause_seconds summary" in out
    assert metric_value(out, "gc_pause_seconds", quantile="0.99") == 0.3
    assert metric_value(out, "gc_pause_seconds_count") == 3


def test_an_older_summary_point_is_dropped_as_out_of_order() -> None:
    exp, metrics = exporter()
    for end, count in ((2, 5), (1, 3)):
        metric = Metric(name="gc.pause", unit="s")
        point = SummaryDataPoint(time_unix_nano=end * S, count=count, sum=float(count))
        point.quantile_values.add(quantile=0.5, value=float(count))
        metric.summary.data_points.append(point)
        exp.consume(request(metric))
    out = text(exp)
    assert metric_value(out, "gc_pause_seconds_count") == 5
    assert metric_value(out, "gc_pause_seconds", quantile="0.5") == 5
    assert dropped(metrics, "out_of_order") == 1


def test_counters_whose_labels_a_redaction_made_alike_are_added_up_whatever_their_order() -> None:
    """Two series of one counter differing only in an api_key, which the redaction processor masks, were shown in
    turn (the counter went 9 -> 6: a reset to Prometheus). They are re-aggregated, as the data model has streams
    whose attributes were removed; the Go SDK lists them in a new order at every export."""
    from agent.component import Signal
    from agent.processors.redaction import RedactionConfig, RedactionProcessor
    from tests.delivery_doubles import build_config, make_settings

    exp, metrics = exporter()
    redaction = RedactionProcessor(
        build_config(RedactionConfig, {}), make_settings("redaction", SelfMetrics()), Signal.METRICS, exp
    )
    keys = ("sk-proj-" + "a" * 40, "sk-proj-" + "b" * 40)
    shown = []
    for end, values in ((1, (5, 7)), (2, (9, 6)), (3, (10, 9))):  # the second export lists key b first
        points = [number(v, 0, end, api_key=k) for k, v in zip(keys, values, strict=True)]
        redaction.consume(request(sum_metric("api.calls", *(points if end != 2 else points[::-1]))))
        shown.append(metric_value(text(exp), "api_calls_total", api_key="[REDACTED]"))
    assert shown == [12, 15, 19]
    assert dropped(metrics, "duplicate_series") == 0


def test_sums_and_histograms_of_streams_made_alike_are_added_up_gauges_keep_the_first() -> None:
    exp, metrics = exporter(NO_ZERO_HOLD)
    up_down = sum_metric("queue.size", number(3, **{"a:b": "x"}), number(4, a_b="x"), monotonic=False)
    deltas = sum_metric("hits", number(2, 0, 1, a_b="x"), number(3, 0, 1, **{"a:b": "x"}), temporality=DELTA)
    gauge = Metric(name="temp", gauge={"data_points": [number(20, **{"a:b": "x"}), number(30, a_b="x")]})
    same = Metric(name="same", gauge={"data_points": [number(math.nan, a_b="x"), number(math.nan, **{"a:b": "x"})]})
    first = HistogramDataPoint(time_unix_nano=S, count=2, sum=1.0, bucket_counts=[1, 1], explicit_bounds=[0.5])
    second = HistogramDataPoint(time_unix_nano=S, count=4, sum=3.0, bucket_counts=[1, 3], explicit_bounds=[0.5])
    other_bounds = HistogramDataPoint(time_unix_nano=S, count=1, sum=9.0, bucket_counts=[0, 1], explicit_bounds=[5])
    exp.consume(request(up_down, deltas, gauge, same, histogram_metric("rpc.duration", first, second, other_bounds)))
    out = text(exp)
    assert metric_value(out, "queue_size") == 7
    assert metric_value(out, "hits_total") == 5
    assert metric_value(out, "temp") == 20
    assert metric_value(out, "rpc_duration_seconds_count") == 6
    assert metric_value(out, "rpc_duration_seconds_sum") == 4
    assert metric_value(out, "rpc_duration_seconds_bucket", le="0.5") == 2
    assert dropped(metrics, "duplicate_series") == 2  # the gauge's other value, the histogram of other bounds
    assert dropped(metrics, "misaligned_delta") == 0


@pytest.mark.parametrize("old_first", [True, False])
def test_streams_added_up_are_held_at_zero_only_if_every_one_started_recently(old_first: bool) -> None:
    exp, _ = exporter()
    text(exp)  # a first scrape: series starting after it are new, and shown at zero first
    now = time.time_ns()
    old, new = number(2, 0, 0, a_b="x"), number(4, 0, 0, **{"a:b": "x"})
    old.start_time_unix_nano, new.start_time_unix_nano = now - 3600 * S, now - S
    old.time_unix_nano = new.time_unix_nano = now
    exp.consume(request(sum_metric("api.calls", *((old, new) if old_first else (new, old)))))
    assert metric_value(text(exp), "api_calls_total", a_b="x") == 6


@pytest.mark.parametrize("old_first", [True, False])
def test_streams_added_up_that_ended_and_come_back_with_their_starts_keep_their_value(old_first: bool) -> None:
    """The first stream's check took the ended series' start from the record even when it was the other's."""
    exp, _ = exporter(at_zero_for(0.05))
    text(exp)
    now = time.time_ns() // S

    def points(old_value: float, new_value: float, end: int, flags: int = 0) -> list[NumberDataPoint]:
        old = number(old_value, start=now - 20, end=end, a_b="x")
        new = number(new_value, start=now - 1, end=end, **{"a:b": "x"})
        old.flags = new.flags = flags
        return [old, new] if old_first else [new, old]

    exp.consume(request(sum_metric("jobs.done", *points(2, 3, now))))
    text(exp)
    time.sleep(0.06)
    assert metric_value(text(exp), "jobs_done_total", a_b="x") == 5
    ended = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
    exp.consume(request(sum_metric("jobs.done", *points(0, 0, now + 1, ended))))
    assert "jobs_done_total{" not in text(exp)
    exp.consume(request(sum_metric("jobs.done", *points(4, 5, now + 2))))
    assert metric_value(text(exp), "jobs_done_total", a_b="x") == 9  # not 0 first: 5 -> 0 -> 9 reads as a reset


def test_histograms_of_streams_made_alike_have_no_sum_when_one_of_them_has_none() -> None:
    """A sum of one stream only would not be the sum of the buckets shown."""
    exp, _ = exporter()
    with_sum = HistogramDataPoint(time_unix_nano=S, count=1, sum=0.2, bucket_counts=[1, 0], explicit_bounds=[0.5])
    without = HistogramDataPoint(time_unix_nano=S, count=1, bucket_counts=[0, 1], explicit_bounds=[0.5])
    with_sum.attributes.append(attr("a:b", "x"))
    without.attributes.append(attr("a_b", "x"))
    exp.consume(request(histogram_metric("rpc.duration", with_sum, without)))
    out = text(exp)
    assert metric_value(out, "rpc_duration_seconds_bucket", le="+Inf", a_b="x") == 2
    assert "rpc_duration_seconds_sum" not in out


def test_streams_made_alike_with_different_starts_in_a_new_order_are_not_taken_for_a_restart() -> None:
    """The Go SDK lists streams in a new order at every export: the later start coming first is no restart of the
    series (which would carry the earlier value on top of the new ones)."""
    exp, _ = exporter()
    text(exp)  # scraped since the start
    now = time.time_ns() // S

    def points(old_value: float, new_value: float, end: int) -> list[NumberDataPoint]:
        old = number(old_value, start=now - 3600, end=end, a_b="x")
        new = number(new_value, start=now - 600, end=end, **{"a:b": "x"})
        return [old, new] if end == now - 2 else [new, old]

    exp.consume(request(sum_metric("api.calls", *points(2, 4, now - 2))))
    exp.consume(request(sum_metric("api.calls", *points(3, 5, now - 1))))  # no scrape between the two
    assert metric_value(text(exp), "api_calls_total", a_b="x") == 8


def test_points_of_one_series_at_different_times_in_a_request_are_all_used() -> None:
    exp, metrics = exporter()
    exp.consume(request(sum_metric("api.calls", number(8, end=3, a_b="x"), number(9, end=4, a_b="x"))))
    assert metric_value(text(exp), "api_calls_total", a_b="x") == 9
    assert dropped(metrics, "duplicate_series") == 0


@pytest.mark.parametrize("quantile_value", [0.2, math.nan])
def test_a_summary_of_streams_made_alike_keeps_the_first_and_counts_another_value(quantile_value: float) -> None:
    """NaN is a quantile's value over an empty window (OpenMetrics): two of them are alike (pass 132)."""
    exp, metrics = exporter()
    summary = Metric(name="gc.pause", unit="s")
    for count in (3, 3, 5):
        point = SummaryDataPoint(time_unix_nano=S, count=count, sum=float(count))
        point.quantile_values.add(quantile=0.5, value=quantile_value)
        summary.summary.data_points.append(point)
    exp.consume(request(summary))
    assert metric_value(text(exp), "gc_pause_seconds_count") == 3
    assert dropped(metrics, "duplicate_series") == 1  # the identical second point loses nothing


def test_the_end_of_one_stream_made_alike_leaves_the_series_of_the_others() -> None:
    exp, _ = exporter()
    ended = number(0, a_b="x")
    ended.flags = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
    exp.consume(request(Metric(name="temp", gauge={"data_points": [number(20, **{"a:b": "x"}), ended]})))
    assert metric_value(text(exp), "temp", a_b="x") == 20


def test_resource_becomes_target_info_and_job_instance_labels_and_scope_becomes_labels() -> None:
    exp, _ = exporter()
    exp.consume(
        request(
            sum_metric("orders", number(2)),
            resource={
                "service.name": "checkout",
                "service.namespace": "shop",
                "service.instance.id": "pod-1",
                "deployment.environment": "prod",
            },
            scope=InstrumentationScope(name="shop.instrumentation", version="1.2.0"),
        )
    )
    out = text(exp)
    labels = {"job": "shop/checkout", "instance": "pod-1"}
    scope = {"otel_scope_name": "shop.instrumentation", "otel_scope_version": "1.2.0"}
    assert metric_value(out, "orders_total", **scope, **labels) == 2
    target = next(line for line in out.splitlines() if line.startswith("target_info{"))
    assert 'job="shop/checkout"' in target and 'instance="pod-1"' in target
    assert 'deployment_environment="prod"' in target and "service_name" not in target


def test_metrics_without_resource_or_scope_get_exactly_their_own_labels() -> None:
    exp, _ = exporter()
    exp.consume(request(sum_metric("orders", number(2, region="eu"))))
    out = text(exp)
    assert 'orders_total{region="eu"} 2.0' in out
    assert "target_info" not in out


def test_an_attribute_with_an_empty_value_adds_no_label() -> None:
    """Prometheus takes an empty label for an absent one: `{region=""}` and `{}` would be one series shown twice."""
    exp, _ = exporter()
    exp.consume(request(sum_metric("orders", number(2, region=""))))
    assert "orders_total 2.0" in text(exp)


def test_a_service_namespace_without_a_service_name_gives_no_job() -> None:
    exp, _ = exporter()
    exp.consume(
        request(sum_metric("orders", number(2)), resource={"service.namespace": "shop", "service.instance.id": "p"})
    )
    assert 'orders_total{instance="p"} 2.0' in text(exp)


def test_resource_attributes_can_be_copied_onto_every_series() -> None:
    exp, _ = exporter(PrometheusExporterConfig(resource_to_telemetry_conversion=True, without_scope_info=True))
    exp.consume(
        request(
            sum_metric("orders", number(2)),
            resource={"service.name": "checkout", "k8s.pod.name": "p"},
            scope=InstrumentationScope(name="s"),
        )
    )
    line = next(line for line in text(exp).splitlines() if line.startswith("orders_total"))
    assert 'k8s_pod_name="p"' in line and 'job="checkout"' in line and "otel_scope_name" not in line


def test_series_expire_to_make_room_for_new_ones_though_nothing_scrapes() -> None:
    """Only a scrape removed stale series: with Prometheus down, series long expired held max_series and every new
    series was dropped for good (a steady delta counter lost 60 increments in a soak)."""
    now = [100.0]
    drops: list[str] = []
    acc = Accumulator(20.0, 3, lambda reason, n: drops.append(reason), clock=lambda: now[0])
    for name in ("a", "b", "c"):
        acc.consume(request(sum_metric(name, number(1))))
    acc.fold_pending()
    acc.consume(request(sum_metric("early", number(1))))
    acc.fold_pending()
    assert drops == ["series_limit"]  # full, and nothing stale yet
    now[0] += 30
    acc.consume(request(sum_metric("late", number(1))))
    acc.fold_pending()
    assert drops == ["series_limit"]
    families, _ = acc.snapshot()
    assert [f.name for f in families] == ["late"]
    for n in range(2):  # full again; then a family whose every series went stale gets a new one
        acc.consume(request(sum_metric("late", number(1, k=str(n)))))
    now[0] += 30
    acc.consume(request(sum_metric("late", number(1, k="new"))))
    families, _ = acc.snapshot()
    assert [(f.name, [dict(key) for key in f.series]) for f in families] == [("late", [{"k": "new"}])]
    assert drops == ["series_limit"]


def test_metrics_refused_at_the_limit_leave_no_empty_families_behind() -> None:
    """Families were made before the limit was checked: with nothing scraping, 8,000 churned names left 8,000
    empty families, each new name's conflict check scanning them all."""
    drops: list[int] = []
    acc = Accumulator(300.0, 1, lambda reason, n: drops.append(n))
    acc.consume(request(sum_metric("held", number(1))))
    for n in range(50):
        acc.consume(request(sum_metric(f"churn{n}", number(1), number(2, x="y"))))
    acc.fold_pending()
    assert list(acc._families) == ["held"]
    assert sum(drops) == 100  # every point of the refused metrics, counted


def test_families_emptied_by_expiry_on_intake_go_though_nothing_scrapes() -> None:
    """Expiry on intake kept every family it emptied, for the fold's sake: churning names without a scrape left
    one empty family per name. Only the family the fold is adding a series to is kept."""
    now = [100.0]
    acc = Accumulator(20.0, 1, lambda reason, n: None, clock=lambda: now[0])
    for n in range(20):
        acc.consume(request(sum_metric(f"churn{n}", number(1))))
        acc.fold_pending()
        now[0] += 30
    assert list(acc._families) == ["churn19"]


@pytest.mark.parametrize(
    ("metric", "reasons"),
    [
        (sum_metric("gone", NumberDataPoint(as_double=1, time_unix_nano=S, flags=1)), []),  # "no recorded value"
        (sum_metric("nan", number(float("nan"))), [("malformed", 1)]),
        (sum_metric("held_total", number(1), monotonic=False), [("name_conflict", 1)]),  # exposed as held_total
    ],
    ids=["series-ended", "nan", "name-conflict"],
)
def test_a_new_metric_at_the_limit_has_each_point_counted_for_what_it_is(
    metric: Metric, reasons: list[tuple[str, int]]
) -> None:
    """A first fix refused a new family whole at the limit, counting every point as series_limit: an ended
    series, a NaN or a name conflict then pointed the operator at max_series."""
    drops: list[tuple[str, int]] = []
    acc = Accumulator(300.0, 1, lambda reason, n: drops.append((reason, n)))
    acc.consume(request(sum_metric("held", number(1))))
    acc.consume(request(metric))
    acc.fold_pending()
    assert drops == reasons
    assert list(acc._families) == ["held"]


def test_target_info_series_count_against_max_series_and_in_the_series_held() -> None:
    """target_info had a budget of its own: twice max_series were held and exposed, and the gauge said half."""
    drops: list[str] = []
    acc = Accumulator(300.0, 2, lambda reason, n: drops.append(reason))
    acc.consume(request(sum_metric("depth", number(1)), resource={"service.name": "one"}))
    acc.consume(request(sum_metric("depth", number(1)), resource={"service.name": "two"}))
    families, targets = acc.snapshot()
    assert [t.labels for t in targets] == [{"job": "one"}]
    assert [len(f.series) for f in families] == [1]
    assert acc.series_count == 2
    assert drops == ["series_limit"]  # the second resource's point; its target_info is no data point


def test_a_resource_that_keeps_sending_at_the_limit_keeps_its_target_info() -> None:
    """At max_series its target_info is refreshed like its series: it must not expire while they are held."""
    now = [100.0]
    acc = Accumulator(300.0, 2, lambda reason, n: None, clock=lambda: now[0])
    for _ in range(2):
        acc.consume(request(sum_metric("depth", number(1)), resource={"service.name": "one"}))
        acc.fold_pending()
        now[0] += 200
    families, targets = acc.snapshot()  # 400 s after the first point, 200 s after the second
    assert [len(f.series) for f in families] == [1]
    assert [t.labels for t in targets] == [{"job": "one"}]


def test_the_starts_remembered_of_ended_series_are_bounded_by_max_series() -> None:
    acc = Accumulator(300.0, 2, lambda reason, n: None)
    for n in range(5):
        ended = number(0, 5, 7, k=str(n))
        ended.flags = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
        acc.consume(request(sum_metric("jobs", number(1, 5, 6, k=str(n)))))
        acc.consume(request(sum_metric("jobs", ended)))
    assert acc.snapshot()[0] == []
    assert len(acc._ended_starts) == 2  # the oldest forgotten, not one per series that ever ended


def test_colliding_attribute_keys_are_joined_with_a_semicolon() -> None:
    exp, _ = exporter()
    exp.consume(request(sum_metric("c", number(1, **{"a.b": "x", "a_b": "y"}))))
    assert 'c_total{a_b="x;y"} 1.0' in text(exp)


def test_series_that_stop_receiving_points_expire() -> None:
    now = [100.0]
    drops: list[str] = []
    acc = Accumulator(300.0, 1000, lambda reason, n: drops.append(reason), clock=lambda: now[0])
    acc.consume(request(sum_metric("old", number(1)), resource={"service.name": "old"}))
    acc.consume(request(sum_metric("kept", number(1)), resource={"service.name": "kept"}))
    now[0] += 200
    acc.consume(request(sum_metric("kept", number(2, 0, 2)), resource={"service.name": "kept"}))
    now[0] += 150
    families, targets = acc.snapshot()
    assert [f.name for f in families] == ["kept"]
    assert acc.series_count == 2  # kept_total and its target_info
    assert [t.labels for t in targets] == [{"job": "kept"}]  # the old resource's target_info expired with it


def test_a_no_recorded_value_point_removes_its_series() -> None:
    exp, metrics = exporter()
    exp.consume(request(sum_metric("c", number(1, region="eu"), number(1, region="us"))))
    gone = number(0, 0, 2, region="eu")
    gone.flags = 1
    exp.consume(request(sum_metric("c", gone)))
    out = text(exp)
    assert 'region="us"' in out and 'region="eu"' not in out
    assert metrics.registry.get_sample_value("otel_sidecar_prometheus_series", {"exporter": "prometheus"}) == 1


def test_the_series_limit_drops_and_counts_new_series() -> None:
    exp, metrics = exporter(PrometheusExporterConfig(max_series=3))
    exp.consume(request(sum_metric("c", *[number(1, user=str(i)) for i in range(10)])))
    assert text(exp).count("c_total{") == 3
    assert dropped(metrics, "series_limit") == 7
    assert metrics.registry.get_sample_value("otel_sidecar_prometheus_series", {"exporter": "prometheus"}) == 3


def test_a_name_reused_with_another_type_is_dropped_and_counted() -> None:
    exp, metrics = exporter()
    exp.consume(request(sum_metric("thing", number(1))))  # counter family "thing" (thing_total)
    gauge = Metric(name="thing")
    gauge.gauge.data_points.append(number(5))
    exp.consume(request(gauge))
    exp.consume(request(histogram_metric("thing", HistogramDataPoint(count=1, bucket_counts=[1]), unit="")))
    out = text(exp)
    assert "# TYPE thing_total counter" in out and metric_value(out, "thing_total") == 1
    assert "# TYPE thing gauge" not in out
    assert dropped(metrics, "type_conflict") == 2


@pytest.mark.parametrize("counter_first", [True, False])
def test_a_metric_exposed_under_a_name_another_metric_already_uses_is_dropped(counter_first: bool) -> None:
    """A counter `x` is exposed as `x_total`; a gauge named `x.total` would expose `x_total` too, and a second
    HELP/TYPE for one name makes Prometheus reject the whole scrape."""
    exp, metrics = exporter()
    gauge = Metric(name="jobs.total")
    gauge.gauge.data_points.append(number(5))
    counter = sum_metric("jobs", number(1))
    for metric in (counter, gauge) if counter_first else (gauge, counter):
        exp.consume(request(metric))
    out = text(exp)
    assert out.count("# TYPE jobs_total") == 1
    assert dropped(metrics, "name_conflict") == 1
    openmetrics(exp)  # parses


@pytest.mark.parametrize("histogram_first", [True, False])
def test_a_family_named_like_another_familys_sample_is_dropped_so_openmetrics_stays_valid(
    histogram_first: bool,
) -> None:
    """A counter `x.count` is the OpenMetrics family `x_count`, a sample name of a histogram `x`: OpenMetrics
    forbids that clash and strict parsers reject the whole scrape."""
    exp, metrics = exporter()
    histogram = histogram_metric("x", HistogramDataPoint(count=1, sum=1.0, bucket_counts=[1]), unit="")
    counter = sum_metric("x.count", number(2))
    for metric in (histogram, counter) if histogram_first else (counter, histogram):
        exp.consume(request(metric))
    list(text_string_to_metric_families(openmetrics(exp)))  # raised "Clashing name: x_count"
    assert dropped(metrics, "name_conflict") == 1


def test_an_explicit_infinite_last_bound_is_folded_into_the_inf_bucket_and_nan_bounds_are_dropped() -> None:
    exp, metrics = exporter()
    point = HistogramDataPoint(count=3, sum=2.0, explicit_bounds=[1.0, math.inf], bucket_counts=[2, 1, 0])
    exp.consume(request(histogram_metric("lat", point)))
    out = text(exp)
    assert out.count('lat_seconds_bucket{le="+Inf"}') == 1
    assert metric_value(out, "lat_seconds_bucket", le="1.0") == 2
    assert metric_value(out, "lat_seconds_bucket", le="+Inf") == 3
    bad = HistogramDataPoint(count=1, explicit_bounds=[1.0, math.nan, 2.0], bucket_counts=[1, 0, 0, 0])
    exp.consume(request(histogram_metric("bad", bad)))
    assert "bad_seconds" not in text(exp)
    assert dropped(metrics, "malformed") == 1


def test_an_explicit_histogram_with_a_repeated_bound_is_dropped_not_exposed() -> None:
    """OpenMetrics wants bucket bounds unique: two `le="1.0"` lines make a strict parser refuse the scrape."""
    exp, metrics = exporter()
    point = HistogramDataPoint(count=2, sum=1.0, explicit_bounds=[1.0, 1.0], bucket_counts=[1, 1, 0])
    exp.consume(request(histogram_metric("lat", point)))
    assert "lat_seconds" not in text(exp)
    assert dropped(metrics, "malformed") == 1


def test_the_scope_schema_url_is_a_label_like_the_scope_name_and_version() -> None:
    exp, _ = exporter()
    req = request(sum_metric("orders", number(2)), scope=InstrumentationScope(name="shop"))
    req.resource_metrics[0].scope_metrics[0].schema_url = "https://opentelemetry.io/schemas/1.26.0"
    exp.consume(req)
    out = text(exp)
    assert 'otel_scope_schema_url="https://opentelemetry.io/schemas/1.26.0"' in out


def test_a_non_monotonic_sum_and_a_gauge_of_one_name_are_one_gauge() -> None:
    exp, metrics = exporter()
    exp.consume(request(sum_metric("level", number(1), monotonic=False)))
    gauge = Metric(name="level")
    gauge.gauge.data_points.append(number(5, 0, 2))
    exp.consume(request(gauge))
    assert metric_value(text(exp), "level") == 5
    assert dropped(metrics, "type_conflict") == 0


def _of_unspecified_temporality(kind: str) -> Metric:
    metric = Metric(name="payload.size", unit="By")
    if kind == "sum":
        metric.sum.data_points.append(number(1))
        metric.sum.is_monotonic = True
    elif kind == "histogram":
        metric.histogram.data_points.append(HistogramDataPoint(time_unix_nano=S, count=1, sum=1.5, bucket_counts=[1]))
    else:
        point = ExponentialHistogramDataPoint(time_unix_nano=S, count=1, sum=1.5, scale=0)
        point.positive.bucket_counts.extend([1])
        metric.exponential_histogram.data_points.append(point)
    return metric  # aggregation_temporality left unspecified


@pytest.mark.parametrize("kind", ["sum", "histogram", "exponential_histogram"])
def test_unspecified_temporality_is_dropped_and_counted_as_such(kind: str) -> None:
    exp, metrics = exporter()
    exp.consume(request(_of_unspecified_temporality(kind)))
    assert "payload_size" not in text(exp)
    assert dropped(metrics, "unspecified_temporality") == 1
    assert dropped(metrics, "delta_exponential_histogram") == 0  # an exponential histogram's was, once


# --- span metrics through the exporter ---------------------------------------------------------------------------


def catalogue_exporter(semconv: bool = False) -> PrometheusExporter:
    metrics = SelfMetrics()
    exp = PrometheusExporter(PrometheusExporterConfig(), settings(metrics))
    cfg = SpanMetricsConfig(genai=GenAiConfig(semconv_metrics=semconv))
    connector = SpanMetricsConnector(cfg, settings(metrics, "spanmetrics", Kind.CONNECTOR), {Signal.METRICS: exp})
    for batch, _ in Workload(seed=11, error_rate=0.1).requests(200):
        connector.consume(batch)
    exp.consume(_orchestrator_own_metrics())
    connector.flush()
    return exp


def _orchestrator_own_metrics() -> Any:
    # An orchestrator's own OTLP counter, passed through next to the span metrics.
    return request(
        sum_metric("orchestrator.active_workflows", number(3), monotonic=False),
        resource={"service.name": "orchestrator"},
        scope=InstrumentationScope(name="llm_orchestrator_core"),
    )


def test_span_metrics_are_exposed_under_the_catalogue_names_and_labels() -> None:
    exp = catalogue_exporter()  # its series exist before the first scrape: shown with their values at once
    out = text(exp)
    families = {
        "orchestrator_spans_total": "counter",
        "orchestrator_span_duration_seconds": "histogram",
        "orchestrator_workflow_executions_total": "counter",
        "orchestrator_workflow_duration_seconds": "histogram",
        "orchestrator_step_executions_total": "counter",
        "orchestrator_step_duration_seconds": "histogram",
        "orchestrator_llm_requests_total": "counter",
        "orchestrator_llm_request_duration_seconds": "histogram",
        "orchestrator_llm_tokens_total": "counter",
        "orchestrator_llm_cost_usd_total": "counter",
        "orchestrator_errors_total": "counter",
    }
    for name, kind in families.items():
        assert f"# TYPE {name} {kind}" in out, name
    spans = next(line for line in out.splitlines() if line.startswith("orchestrator_spans_total{"))
    assert sorted(label.split("=")[0] for label in spans[spans.index("{") + 1 : spans.index("}")].split(",")) == [
        "service_name",
        "span_kind",
        "span_name",
        "status_code",
    ]
    assert 'orchestrator_workflow_duration_seconds_bucket{le="120.0",workflow_name="rag-pipeline"}' in out
    assert 'orchestrator_step_duration_seconds_bucket{le="0.01",step_type="llm"}' in out
    assert 'orchestrator_llm_request_duration_seconds_bucket{le="60.0",model="gpt-4o",provider="openai"}' in out
    assert metric_value(out, "orchestrator_workflow_executions_total", status="failure") > 0
    assert 'orchestrator_active_workflows{job="orchestrator",otel_scope_name="llm_orchestrator_core"} 3.0' in out


def test_the_opentelemetry_genai_metrics_get_their_standard_prometheus_names() -> None:
    out = text(catalogue_exporter(semconv=True))
    assert "# TYPE gen_ai_client_operation_duration_seconds histogram" in out
    assert "# TYPE gen_ai_client_token_usage histogram" in out
    assert 'gen_ai_token_type="input"' in out and 'le="6.7108864e+07"' in out and 'le="81.92"' in out


# --- exposition ------------------------------------------------------------------------------------------------


def promtool(exposition: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=30, check=False
    )


def test_promtool_reports_nothing_on_the_text_format() -> None:
    exp = catalogue_exporter(semconv=True)
    _every_otlp_type(exp)
    result = promtool(text(exp))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_openmetrics_format_parses_strictly_and_promtool_reports_nothing_on_its_families() -> None:
    exp = catalogue_exporter(semconv=True)
    _every_otlp_type(exp)
    om = openmetrics(exp)
    assert om.endswith("# EOF\n") and " # {" in om  # exemplars are OpenMetrics only
    # prometheus_client's OpenMetrics parser enforces the OpenMetrics 1.0 grammar (EOF, suffixes, exemplar size).
    families = list(text_string_to_metric_families(om))
    assert {f.name for f in families} >= {"orchestrator_spans", "orchestrator_span_duration_seconds", "target"}
    # promtool only reads the text format: lint the very families OpenMetrics declared, re-encoded as text.

    class Parsed:
        def collect(self) -> list[Any]:
            return families

    result = promtool(generate_latest(Parsed()).decode())  # type: ignore[arg-type]
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def _every_otlp_type(exp: PrometheusExporter) -> None:
    gauge = Metric(name="process.memory.usage", unit="By", description="Resident memory.")
    gauge.gauge.data_points.append(number(1024))
    summary = Metric(name="gc.pause", unit="s", description="GC pauses.")
    point = SummaryDataPoint(time_unix_nano=S, count=3, sum=0.6)
    point.quantile_values.add(quantile=0.5, value=0.2)
    summary.summary.data_points.append(point)
    histogram = histogram_metric(
        "http.server.request.duration",
        HistogramDataPoint(
            time_unix_nano=S,
            count=2,
            sum=0.3,
            bucket_counts=[1, 1],
            explicit_bounds=[0.25],
            exemplars=[Exemplar(as_double=0.1, trace_id=b"\x01" * 16, span_id=b"\x02" * 8, time_unix_nano=S)],
        ),
    )
    exp.consume(
        request(
            gauge,
            summary,
            histogram,
            sum_metric("http.server.requests", number(2), unit="{request}"),
            resource={"service.name": "api", "service.instance.id": "i-1", "host.name": "h"},
            scope=InstrumentationScope(name="api.scope", version="0.1"),
        )
    )


@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("deflate, gzip;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("*;q=0.1, gzip;q=0", False),
        ("gzip;q=bad", False),
        ("identity", False),
        ("", False),
        ("br, notgzip", False),
    ],
)
def test_gzip_is_used_only_when_the_accept_encoding_header_allows_it(header: str, gzip_ok: bool) -> None:
    assert accepts_gzip(header) is gzip_ok


async def test_the_endpoint_negotiates_text_or_openmetrics_and_gzip() -> None:
    port = free_port()
    exp, metrics = exporter(PrometheusExporterConfig(endpoint=HostPort(f"127.0.0.1:{port}")))
    exp.consume(request(histogram_metric("rpc.duration", HistogramDataPoint(
        time_unix_nano=S, count=1, sum=0.2, bucket_counts=[1, 0], explicit_bounds=[0.5],
        exemplars=[Exemplar(as_double=0.2, trace_id=b"\x0a" * 16, span_id=b"\x0b" * 8, time_unix_nano=S)],
    ))))  # fmt: skip
    await exp.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(url, headers={"Accept-Encoding": "identity"}) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                body = (await response.read()).decode()
                assert "rpc_duration_seconds_bucket" in body and "# EOF" not in body and "trace_id" not in body
            prometheus_accept = (
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )
            headers = {"Accept": prometheus_accept, "Accept-Encoding": "gzip"}
            async with session.get(url, headers=headers) as response:
                assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
                assert response.headers["Content-Encoding"] == "gzip"
                body = gzip.decompress(await response.read()).decode()
                assert body.endswith("# EOF\n") and 'trace_id="' + "0a" * 16 + '"' in body
            async with session.get(url, headers={"Accept-Encoding": "gzip;q=0, identity"}) as response:
                assert "Content-Encoding" not in response.headers  # q=0 refuses gzip
                assert "rpc_duration_seconds_bucket" in (await response.read()).decode()
            async with session.get(f"http://127.0.0.1:{port}/other") as response:
                assert response.status == 404
    finally:
        await exp.shutdown(time.monotonic() + 1)
        await exp.shutdown(time.monotonic() + 1)
    for fmt, scrapes in (("text", 2), ("openmetrics", 1)):
        assert (
            metrics.registry.get_sample_value(
                "otel_sidecar_prometheus_scrapes_total", {"exporter": "prometheus", "format": fmt}
            )
            == scrapes
        )


async def test_concurrent_scrapes_share_one_render() -> None:
    """Rendering many series takes seconds of CPU: four scrapers each rendering their own shared the interpreter
    and all timed out. Those asking while a render is under way get its result; a later scrape renders anew."""
    port = free_port()
    exp, metrics = exporter(PrometheusExporterConfig(endpoint=HostPort(f"127.0.0.1:{port}")))
    exp.consume(request(sum_metric("jobs", number(3))))
    renders = []

    class SlowCollector:
        def collect(self) -> list[Any]:
            renders.append(time.monotonic())
            time.sleep(0.3)  # in the render's thread: the event loop serves the other scrapes meanwhile
            return []

    exp.registry.register(SlowCollector())  # type: ignore[arg-type]
    await exp.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession() as session:

            async def scrape(accept: str = "") -> str:
                async with session.get(url, headers={"Accept": accept}) as response:
                    assert response.status == 200
                    return await response.text()

            bodies = await asyncio.gather(*(scrape() for _ in range(4)))
            assert len(renders) == 1 and len(set(bodies)) == 1 and "jobs_total 3.0" in bodies[0]
            openmetrics_accept = "application/openmetrics-text;version=1.0.0"
            text_body, om_body = await asyncio.gather(scrape(), scrape(openmetrics_accept))
            assert len(renders) == 3  # one per format
            assert om_body.endswith("# EOF\n") and not text_body.endswith("# EOF\n")
    finally:
        await exp.shutdown(time.monotonic() + 1)
    scrapes = metrics.registry.get_sample_value(
        "otel_sidecar_prometheus_scrapes_total", {"exporter": "prometheus", "format": "text"}
    )
    assert scrapes == 5  # every scrape is still counted


def test_bad_exporter_settings_are_reported_with_their_paths() -> None:
    from agent.config.loader import load_text
    from agent.config.schema import ConfigInvalid

    with pytest.raises(ConfigInvalid) as caught:
        load_text(
            """
receivers: {otlp: {}}
exporters: {prometheus: {endpoint: "nowhere", path: metrics, max_series: 0}}
service: {pipelines: {metrics: {receivers: [otlp], exporters: [prometheus]}}}
"""
        )
    message = str(caught.value)
    assert "exporters.prometheus.endpoint: must be host:port" in message
    assert "exporters.prometheus.max_series: must be positive" in message


# --- edge cases of the OTLP-to-Prometheus rules ------------------------------------------------------------------


def test_a_histogram_without_a_sum_or_over_negative_values_has_no_sum_and_its_count_is_the_inf_bucket() -> None:
    exp, _ = exporter()
    no_sum = HistogramDataPoint(time_unix_nano=S, count=2, explicit_bounds=[1.0], bucket_counts=[1, 1])
    exp.consume(request(histogram_metric("no.sum", no_sum)))
    negative = ExponentialHistogramDataPoint(time_unix_nano=S, count=2, sum=-3.0, scale=0)
    negative.negative.bucket_counts.extend([2])
    metric = Metric(name="offsets", unit="s")
    metric.exponential_histogram.aggregation_temporality = CUMULATIVE
    metric.exponential_histogram.data_points.append(negative)
    exp.consume(request(metric))
    out = text(exp)
    for name in ("no_sum_seconds", "offsets_seconds"):
        assert metric_value(out, f"{name}_bucket", le="+Inf") == 2
        assert f"{name}_sum" not in out and f"{name}_count" not in out  # a _count needs a _sum in OpenMetrics
    list(text_string_to_metric_families(openmetrics(exp)))  # valid OpenMetrics


def test_an_le_or_quantile_attribute_is_kept_as_exported_le_not_overwritten() -> None:
    exp, _ = exporter()
    points = [
        HistogramDataPoint(time_unix_nano=S, count=n, explicit_bounds=[1.0], bucket_counts=[n, 0], sum=n, **kw)
        for n, kw in ((1, {"attributes": [attr("le", "a")]}), (5, {"attributes": [attr("le", "b")]}))
    ]
    exp.consume(request(histogram_metric("lat", *points)))
    summary = Metric(name="gc", unit="s")
    summary.summary.data_points.append(SummaryDataPoint(time_unix_nano=S, count=1, attributes=[attr("quantile", "x")]))
    exp.consume(request(summary))
    out = text(exp)
    assert metric_value(out, "lat_seconds_bucket", le="1.0", exported_le="a") == 1
    assert metric_value(out, "lat_seconds_bucket", le="1.0", exported_le="b") == 5
    assert metric_value(out, "gc_seconds_count", exported_quantile="x") == 1


def test_a_metric_named_target_info_is_dropped_not_merged_into_the_resource_family() -> None:
    exp, metrics = exporter()
    gauge = Metric(name="target.info")
    gauge.gauge.data_points.append(number(1))
    exp.consume(request(gauge, resource={"service.name": "svc"}))
    out = text(exp)
    assert out.count("# HELP target_info") == 1
    assert dropped(metrics, "name_conflict") == 1
    assert subprocess.run(["promtool", "check", "metrics"], input=out, text=True, capture_output=True).returncode == 0


def test_resource_attributes_without_a_service_name_still_make_a_target_info() -> None:
    exp, _ = exporter()
    exp.consume(request(sum_metric("c", number(1)), resource={"host.name": "h1", "k8s.pod.name": "p1"}))
    exp.consume(request(sum_metric("d", number(1)), resource={"host.name": "h2"}))
    targets = sorted(line for line in text(exp).splitlines() if line.startswith("target_info{"))
    assert targets == ['target_info{host_name="h1",k8s_pod_name="p1"} 1.0', 'target_info{host_name="h2"} 1.0']


@pytest.mark.parametrize("conversion", [False, True])
def test_resource_attributes_named_job_or_instance_are_kept_as_exported_names(conversion: bool) -> None:
    """target_info took them as its own job/instance while the series got the scrape's (or service.*'s), so
    `* on(job, instance) group_left target_info` found nothing; copied to the series they were overwritten."""
    exp, _ = exporter(PrometheusExporterConfig(resource_to_telemetry_conversion=conversion))
    resource = {"service.name": "rj", "job": "res-job", "instance": "res-inst", "host.name": "h"}
    exp.consume(request(sum_metric("c", number(1)), resource=resource))
    lines = text(exp).splitlines()
    assert [line for line in lines if line.startswith("target_info{")] == [
        'target_info{exported_instance="res-inst",exported_job="res-job",host_name="h",job="rj"} 1.0'
    ]
    series = next(line for line in lines if line.startswith("c_total"))
    assert 'job="rj"' in series and 'instance="' not in series.replace("exported_instance", "")
    assert ('exported_job="res-job"' in series and 'exported_instance="res-inst"' in series) is conversion


def test_a_bytes_attribute_is_a_base64_label_alone_as_inside_an_array() -> None:
    exp, _ = exporter()
    point = number(1)
    point.attributes.add(key="raw").value.bytes_value = b"hello"
    point.attributes.add(key="arr").value.array_value.values.add().bytes_value = b"hello"
    exp.consume(request(Metric(name="g", gauge={"data_points": [point]})))
    assert metric_value(text(exp), "g", raw="aGVsbG8=", arr=r"[\"aGVsbG8=\"]") == 1


def test_colliding_attribute_values_are_joined_in_the_order_of_their_original_keys() -> None:
    exp, _ = exporter()
    exp.consume(request(sum_metric("c", number(1, **{"a_b": "y", "a.b": "x"}))))
    exp.consume(request(sum_metric("c", number(2, end=2, **{"a.b": "x", "a_b": "y"}))))
    assert [line for line in text(exp).splitlines() if line.startswith("c_total")] == ['c_total{a_b="x;y"} 2.0']


@pytest.mark.parametrize("first", ["host.name", "host_name"])
def test_resource_attributes_that_collide_are_joined_in_target_info_and_copied_labels(first: str) -> None:
    # The specification joins them like point attributes; first or last winning would depend on the SDK's order.
    second = "host_name" if first == "host.name" else "host.name"
    values = {"host.name": "a", "host_name": "b"}
    for conversion in (False, True):
        exp, _ = exporter(PrometheusExporterConfig(resource_to_telemetry_conversion=conversion))
        resource = {"service.name": "svc", first: values[first], second: values[second]}
        exp.consume(request(sum_metric("c", number(1)), resource=resource))
        lines = text(exp).splitlines()
        assert [line for line in lines if line.startswith("target_info{")] == [
            'target_info{host_name="a;b",job="svc"} 1.0'
        ]
        series = next(line for line in lines if line.startswith("c_total"))
        assert ('host_name="a;b"' in series) is conversion


def test_scope_attributes_that_collide_are_joined() -> None:
    exp, _ = exporter()
    scope = InstrumentationScope(name="s")
    scope.attributes.add(key="lib_mode").value.string_value = "b"
    scope.attributes.add(key="lib.mode").value.string_value = "a"
    exp.consume(request(sum_metric("c", number(1)), scope=scope))
    assert 'otel_scope_lib_mode="a;b"' in next(line for line in text(exp).splitlines() if line.startswith("c_total"))


def test_delta_points_without_a_start_time_accumulate() -> None:
    exp, metrics = exporter(NO_ZERO_HOLD)  # a sum of deltas is shown at zero first (tested below)
    for end, value in ((10, 3), (20, 4)):
        exp.consume(request(sum_metric("hits", number(value, 0, end), temporality=DELTA)))
    assert metric_value(text(exp), "hits_total") == 7
    assert dropped(metrics, "misaligned_delta") == 0


def test_a_colon_in_an_otlp_name_gives_one_family_name_in_both_formats() -> None:
    """prometheus_client's OpenMetrics writer turns a sample name's colon into "_" but not its # TYPE line's: the
    counter lost its type there, was named differently in the text format, and collided with `http_requests`."""
    exp, _ = exporter()
    exp.consume(request(sum_metric("http:requests", number(2))))
    for exposition in (text(exp), openmetrics(exp)):
        assert metric_value(exposition, "http_requests_total") == 2
        type_line = next(line for line in exposition.splitlines() if line.startswith("# TYPE"))
        assert type_line.split()[2] in ("http_requests", "http_requests_total")  # OpenMetrics, text 0.0.4
    families = {f.name: f.type for f in text_string_to_metric_families(openmetrics(exp))}
    assert families["http_requests"] == "counter"


def test_a_non_finite_exemplar_is_left_out_not_shown_as_zero_in_the_first_bucket() -> None:
    exp, _ = exporter()
    point = HistogramDataPoint(
        time_unix_nano=5 * S,
        count=3,
        sum=0.05,
        bucket_counts=[1, 0, 2],
        explicit_bounds=[0.1, 1.0],
        exemplars=[
            Exemplar(as_double=0.05, trace_id=b"\xaa" * 16, span_id=b"\xbb" * 8),
            Exemplar(as_double=math.nan, trace_id=b"\xcc" * 16, span_id=b"\xdd" * 8),
            Exemplar(as_double=math.inf, trace_id=b"\xee" * 16, span_id=b"\xff" * 8),
        ],
    )
    exp.consume(request(histogram_metric("rpc.duration", point)))
    om = openmetrics(exp)
    first = next(line for line in om.splitlines() if 'le="0.1"' in line)
    assert "aa" * 16 in first and first.endswith(" 0.05")  # the real exemplar, not pushed out by a made-up 0.0
    assert "cc" * 16 not in om and "ee" * 16 not in om


def test_an_attribute_already_named_exported_job_is_not_overwritten_by_the_renamed_job() -> None:
    """Two points differing only in exported_job merged into one series (the last value won)."""
    exp, _ = exporter()
    exp.consume(
        request(
            Metric(name="queue.depth", gauge={"data_points": [number(1, job="a", exported_job="x")]}),
            Metric(name="queue.depth", gauge={"data_points": [number(2, job="a", exported_job="y")]}),
            resource={"service.name": "svc"},
        )
    )
    out = text(exp)
    assert metric_value(out, "queue_depth", job="svc", exported_job="x", exported_exported_job="a") == 1
    assert metric_value(out, "queue_depth", job="svc", exported_job="y", exported_exported_job="a") == 2


def test_exponential_bucket_bounds_at_powers_of_two_are_exact() -> None:
    exp, _ = exporter()
    point = ExponentialHistogramDataPoint(time_unix_nano=S, count=3, sum=5.0, scale=3)
    point.positive.offset = 7
    point.positive.bucket_counts.extend([1, 2])  # (2**(7/8), 2] and (2, 2**(9/8)]
    metric = Metric(name="payload.size", unit="By")
    metric.exponential_histogram.aggregation_temporality = CUMULATIVE
    metric.exponential_histogram.data_points.append(point)
    exp.consume(request(metric))
    assert metric_value(text(exp), "payload_size_bytes_bucket", le="2.0") == 1  # was le="2.0000000000000004"


# --- new series rise from zero ------------------------------------------------------------------------------------


def at_zero_for(seconds: float) -> PrometheusExporterConfig:
    return PrometheusExporterConfig(new_series_at_zero_for=Duration(seconds))


def test_a_counter_that_started_recently_is_scraped_at_zero_for_a_while_then_with_its_value() -> None:
    """Prometheus's rate() and increase() ignore the value a series is first seen with: a sporadic error's new
    series would never count. Every scraper in the window sees the zero (an HA pair, a curl), not only the first."""
    exp, _ = exporter(at_zero_for(0.2))
    text(exp)  # scraped since the agent started
    now_s = time.time_ns() // S
    exp.consume(request(sum_metric("jobs.failed", number(1, start=now_s - 1, end=now_s, reason="timeout"))))
    assert 'jobs_failed_total{reason="timeout"} 0.0' in text(exp)  # one scraper
    assert 'jobs_failed_total{reason="timeout"} 0.0' in text(exp)  # another, a moment later
    time.sleep(0.25)
    assert 'jobs_failed_total{reason="timeout"} 1.0' in text(exp)


def test_a_counter_that_starts_again_rises_from_zero_even_when_its_value_did_not_drop() -> None:
    """A span-metrics series that expired and came back, or an app that restarted, may report the value it had
    (a sporadic error: 1, then 1 again). Prometheus sees a reset only when the value drops, so the new event
    would never show in increase(); the new start time says it is a new count."""
    exp, _ = exporter(at_zero_for(0.05))
    text(exp)
    now_s = time.time_ns() // S
    exp.consume(request(sum_metric("jobs.failed", number(1, start=now_s - 600, end=now_s - 1, reason="timeout"))))
    assert 'jobs_failed_total{reason="timeout"} 1.0' in text(exp)  # started long ago: its value at once
    exp.consume(request(sum_metric("jobs.failed", number(1, start=now_s - 1, end=now_s, reason="timeout"))))
    assert 'jobs_failed_total{reason="timeout"} 0.0' in text(exp)  # the reset Prometheus would not have seen
    time.sleep(0.1)
    assert 'jobs_failed_total{reason="timeout"} 1.0' in text(exp)


def test_a_source_that_moves_the_start_on_every_point_is_not_taken_for_restarting_each_time() -> None:
    """Some sources set a new start time on every cumulative point: zeroing each time would hide the series."""
    exp, _ = exporter(at_zero_for(0.05))
    text(exp)
    now_s = time.time_ns() // S
    exp.consume(request(sum_metric("jobs.done", number(5, start=now_s - 600, end=now_s - 4))))
    assert "jobs_done_total 5.0" in text(exp)
    exp.consume(request(sum_metric("jobs.done", number(6, start=now_s - 4, end=now_s - 3))))  # a restart, maybe
    assert "jobs_done_total 0.0" in text(exp)
    time.sleep(0.1)
    assert "jobs_done_total 6.0" in text(exp)
    exp.consume(request(sum_metric("jobs.done", number(7, start=now_s - 3, end=now_s - 2))))  # moved again
    assert "jobs_done_total 7.0" in text(exp)
    exp.consume(request(sum_metric("jobs.done", number(8, start=now_s - 2, end=now_s - 1))))
    assert "jobs_done_total 8.0" in text(exp)


def test_a_counter_that_started_long_ago_keeps_its_value_on_the_first_scrape() -> None:
    """Seen again after a restart of the agent, or after being idle past expiration: a zero would read as a
    reset, and Prometheus would count the counter's whole history again."""
    exp, _ = exporter()
    text(exp)  # scraped since the agent started: only the start time tells this series from a new one
    now_s = time.time_ns() // S
    exp.consume(request(sum_metric("jobs.done", number(12345, start=now_s - 3600, end=now_s))))
    assert "jobs_done_total 12345.0" in text(exp)


def test_a_histogram_that_started_recently_is_scraped_empty_at_first() -> None:
    exp, _ = exporter(at_zero_for(0.05))
    now_s = time.time_ns() // S
    point = HistogramDataPoint(
        start_time_unix_nano=(now_s - 1) * S,
        time_unix_nano=now_s * S,
        count=2,
        sum=0.7,
        explicit_bounds=[0.5],
        bucket_counts=[1, 1],
    )
    text(exp)  # scraped since the agent started
    exp.consume(request(histogram_metric("step.duration", point)))
    first = text(exp)
    time.sleep(0.06)
    second = text(exp)
    assert 'step_duration_seconds_bucket{le="+Inf"} 0.0' in first and "step_duration_seconds_sum 0.0" in first
    assert 'step_duration_seconds_bucket{le="+Inf"} 2.0' in second and "step_duration_seconds_sum 0.7" in second


def test_a_histogram_without_a_sum_held_at_zero_has_no_sum_either() -> None:
    exp, _ = exporter()  # held at zero for a minute
    text(exp)  # scraped since the agent started
    now_s = time.time_ns() // S
    point = HistogramDataPoint(
        start_time_unix_nano=(now_s - 1) * S,
        time_unix_nano=now_s * S,
        count=2,
        explicit_bounds=[0.5],
        bucket_counts=[1, 1],
    )
    exp.consume(request(histogram_metric("step.duration", point)))
    out = openmetrics(exp)
    assert metric_value(out, "step_duration_seconds_bucket", le="+Inf") == 0
    assert "step_duration_seconds_sum" not in out and "step_duration_seconds_count" not in out


def test_a_counter_that_restarted_shows_no_exemplar_of_its_previous_run() -> None:
    exp, _ = exporter(NO_ZERO_HOLD)
    text(exp)
    now_s = time.time_ns() // S
    first = number(5, start=now_s - 600, end=now_s - 2)
    first.exemplars.append(an_exemplar(5.0))
    exp.consume(request(sum_metric("jobs", first)))
    text(exp)  # its value shown
    exp.consume(request(sum_metric("jobs", number(1, start=now_s - 1, end=now_s))))  # a new start: a new run
    (family,) = [f for f in text_string_to_metric_families(openmetrics(exp)) if f.name == "jobs"]
    (sample,) = [s for s in family.samples if s.name == "jobs_total"]
    assert (sample.value, sample.exemplar) == (1.0, None)


def test_what_an_agent_holds_before_its_first_scrape_keeps_its_value() -> None:
    """After an agent restart, a counter that started a moment before it was scraped from the agent before: a
    zero would read as a reset, and increase() would count what it had already counted."""
    exp, _ = exporter()
    now_s = time.time_ns() // S
    exp.consume(request(sum_metric("jobs.done", number(7, start=now_s - 30, end=now_s))))
    assert "jobs_done_total 7.0" in text(exp)


def test_a_series_its_source_ended_and_resumed_with_the_same_start_keeps_its_value() -> None:
    exp, _ = exporter(at_zero_for(0.05))
    text(exp)
    now_s = time.time_ns() // S
    exp.consume(request(sum_metric("jobs.done", number(5, start=now_s - 1, end=now_s))))
    assert "jobs_done_total 0.0" in text(exp)
    time.sleep(0.06)
    assert "jobs_done_total 5.0" in text(exp)
    ended = number(0, start=now_s - 1, end=now_s + 1)
    ended.flags = 1  # NO_RECORDED_VALUE
    exp.consume(request(sum_metric("jobs.done", ended)))
    assert "jobs_done_total" not in text(exp)
    exp.consume(request(sum_metric("jobs.done", number(6, start=now_s - 1, end=now_s + 2))))
    assert "jobs_done_total 6.0" in text(exp)  # not 0 then 6: Prometheus would count 6 on top of the 5


def test_a_series_that_expired_and_came_back_with_the_same_start_keeps_its_value() -> None:
    """With a short metric_expiration an idle counter expires between two points of its own run: shown at zero
    when it returns, Prometheus would count its value again."""
    now = [100.0]
    acc = Accumulator(30.0, 1000, lambda reason, n: None, clock=lambda: now[0], new_series_at_zero_for=5.0)
    acc.snapshot()  # scraped since the start
    start_s = time.time_ns() // S
    acc.consume(request(sum_metric("jobs.done", number(1, start=start_s, end=start_s + 1))))
    assert [s.value for f in acc.snapshot()[0] for s in f.series.values()] == [0.0]  # new: zero first
    now[0] += 6
    assert [s.value for f in acc.snapshot()[0] for s in f.series.values()] == [1.0]
    now[0] += 40
    assert acc.snapshot()[0] == []  # expired
    acc.consume(request(sum_metric("jobs.done", number(2, start=start_s, end=start_s + 50))))
    assert [s.value for f in acc.snapshot()[0] for s in f.series.values()] == [2.0]


def _held_accumulator(now: list[float]) -> Accumulator:
    acc = Accumulator(300.0, 1000, lambda reason, n: None, clock=lambda: now[0], new_series_at_zero_for=60.0)
    acc.snapshot()  # scraped since the start
    return acc


def _values(acc: Accumulator) -> list[float]:
    return [s.value for f in acc.snapshot()[0] for s in f.series.values()]


def test_an_app_restarting_while_its_new_counter_is_still_at_zero_loses_no_run() -> None:
    """A crash-looping app (a restart every 16 s): each restart re-armed the zero window, so Prometheus saw 0 for
    as long as it looped and then only the last run's count."""
    now = [100.0]
    acc = _held_accumulator(now)
    start_s = time.time_ns() // S
    for run in range(3):
        run_start = start_s + 16 * run
        acc.consume(request(sum_metric("crashes", number(40, start=run_start, end=run_start + 8))))
        acc.consume(request(sum_metric("crashes", number(75, start=run_start, end=run_start + 15))))
        assert _values(acc) == [0.0]  # every scraper sees the new series rise from zero
        now[0] += 16
    now[0] += 13  # 61 s after its first scrape
    assert _values(acc) == [225.0]  # the three runs; was 0.0 (the window re-armed), then 75.0
    acc.consume(request(sum_metric("crashes", number(5, start=start_s + 100, end=start_s + 101))))
    assert _values(acc) == [0.0]  # a restart after the window: a reset, as before
    now[0] += 61
    assert _values(acc) == [5.0]


def test_a_restart_just_after_the_zero_window_but_before_any_scrape_showed_the_value_loses_nothing() -> None:
    now = [100.0]
    acc = _held_accumulator(now)
    start_s = time.time_ns() // S
    acc.consume(request(sum_metric("crashes", number(40, start=start_s, end=start_s + 8))))
    assert _values(acc) == [0.0]
    now[0] += 61  # the window is over, but no scrape has seen the 40 yet
    acc.consume(request(sum_metric("crashes", number(3, start=start_s + 60, end=start_s + 61))))
    assert _values(acc) == [43.0]  # was 0.0 for another minute, then 3.0: the 40 never counted


def test_two_sources_writing_one_counter_are_not_taken_for_restarts_and_zeroed_forever() -> None:
    """Two replicas with one resource (no service.instance.id) alternate their start times: each point of the
    later-started one looked like a restart and put the series back at zero, for as long as both ran."""
    now = [100.0]
    acc = _held_accumulator(now)
    a, b = time.time_ns() // S, time.time_ns() // S + 5
    acc.consume(request(sum_metric("jobs.done", number(10, start=a, end=a + 10))))
    assert _values(acc) == [0.0]
    now[0] += 61
    assert _values(acc) == [10.0]
    for step in range(1, 4):
        acc.consume(request(sum_metric("jobs.done", number(3 + step, start=b, end=a + 10 + 2 * step))))
        acc.consume(request(sum_metric("jobs.done", number(10 + step, start=a, end=a + 11 + 2 * step))))
        acc.snapshot()
        now[0] += 61
    acc.consume(request(sum_metric("jobs.done", number(20, start=b, end=a + 30))))
    assert _values(acc) == [20.0]  # the latest point, as the Collector exposes it; was 0.0


def test_a_point_attribute_named_job_or_instance_does_not_merge_two_services() -> None:
    exp, _ = exporter()
    for service, value in (("svcA", 3), ("svcB", 100)):
        exp.consume(
            request(sum_metric("jobs.done", number(value, job="batch")), resource={"service.name": service,
                    "service.instance.id": "i-1"})
        )  # fmt: skip
    out = text(exp)
    assert 'exported_job="batch"' in out and 'job="svcA"' in out and 'job="svcB"' in out


def test_an_application_metric_named_target_cannot_clash_with_target_info() -> None:
    exp, metrics = exporter()
    exp.consume(request(Metric(name="target", gauge={"data_points": [number(1)]}), resource={"service.name": "a"}))
    list(text_string_to_metric_families(openmetrics(exp)))  # valid OpenMetrics
    assert dropped(metrics, "name_conflict") == 1


def test_exemplar_labels_past_the_openmetrics_limit_are_left_out_so_the_scrape_stays_valid() -> None:
    """OpenMetrics allows an exemplar 128 runes of label names and values: a strict parser rejects the scrape."""
    exp, _ = exporter()
    point = number(1)
    exemplar = point.exemplars.add(as_double=1.0, trace_id=b"\xaa" * 16, span_id=b"\xbb" * 8, time_unix_nano=S)
    exemplar.filtered_attributes.extend([attr("user.id", "u" * 60), attr("tenant", "t1")])
    exp.consume(request(sum_metric("jobs", point)))
    om = openmetrics(exp)
    (family,) = [f for f in text_string_to_metric_families(om) if f.name == "jobs"]
    (sample,) = family.samples
    assert sample.exemplar is not None
    assert sample.exemplar.labels == {"trace_id": "aa" * 16, "span_id": "bb" * 8, "tenant": "t1"}


def test_exemplar_labels_of_exactly_the_openmetrics_limit_are_kept_and_empty_ones_left_out() -> None:
    exp, _ = exporter()
    point = number(1)
    exemplar = point.exemplars.add(as_double=1.0, trace_id=b"\xaa" * 16, span_id=b"\xbb" * 8, time_unix_nano=S)
    # trace_id and span_id take 63 runes; tenant and its value the other 65 of the 128.
    exemplar.filtered_attributes.extend([attr("note", ""), attr("tenant", "t" * 59)])
    exp.consume(request(sum_metric("jobs", point)))
    (family,) = [f for f in text_string_to_metric_families(openmetrics(exp)) if f.name == "jobs"]
    (sample,) = family.samples
    assert sample.exemplar is not None
    assert sample.exemplar.labels == {"trace_id": "aa" * 16, "span_id": "bb" * 8, "tenant": "t" * 59}


def test_array_attributes_are_json_with_their_element_types() -> None:
    exp, _ = exporter()
    point = number(1)
    array = point.attributes.add(key="arr").value.array_value
    array.values.add(int_value=1)
    array.values.add(int_value=2)
    exp.consume(request(sum_metric("c", point)))
    assert 'arr="[1,2]"' in text(exp)


def test_an_attribute_reads_alike_as_a_prometheus_label_and_a_loki_line() -> None:
    """Pass 128: labels spelled ``caf\\u00e9`` and ``nan`` where Loki's lines had the text (one formatter now)."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from agent.config.service import ServiceConfig
    from agent.exporters._helper.retention import RetentionClassifier
    from agent.exporters.loki.convert import StreamMapper

    value = AnyValue()
    value.kvlist_value.values.add(key="place").value.string_value = "café"
    value.kvlist_value.values.add(key="ratio").value.double_value = float("inf")
    logs = ExportLogsServiceRequest()
    logs.resource_logs.add().scope_logs.add().log_records.add(time_unix_nano=1).body.CopyFrom(value)
    ((_, entries),) = StreamMapper([], RetentionClassifier(ServiceConfig()), 1 << 18).streams(logs).items()
    exp, _ = exporter()
    point = number(1)
    point.attributes.add(key="where").value.CopyFrom(value)
    exp.consume(request(Metric(name="g", gauge={"data_points": [point]})))
    (family,) = [f for f in exp.registry.collect() if f.name == "g"]
    assert entries[0][1] == family.samples[0].labels["where"] == '{"place":"café","ratio":"Infinity"}'


def _exponential(scale: int, offset: int = 0, zero_threshold: float = 0.0) -> Metric:
    point = ExponentialHistogramDataPoint(
        time_unix_nano=S, count=3, sum=1.0, scale=scale, zero_threshold=zero_threshold
    )
    point.positive.offset = offset
    point.positive.bucket_counts.extend([1, 1, 1])
    metric = Metric(name="bad.exp")
    metric.exponential_histogram.aggregation_temporality = CUMULATIVE
    metric.exponential_histogram.data_points.append(point)
    return metric


@pytest.mark.parametrize(
    ("scale", "offset", "zero_threshold"),
    [
        (60, 0, 0.0),  # base rounds to 1.0: every bound is 1.0
        (0, -2000, 0.0),  # bounds underflow to 0.0, the zero threshold's
        (0, 0, math.nan),
        (0, 0, math.inf),
        (0, 0, 100.0),  # the zero bucket ends above the positive buckets
        (0, 0, -5.0),
    ],
)
def test_an_exponential_histogram_whose_bounds_cannot_be_exposed_is_dropped_not_exposed(
    scale: int, offset: int, zero_threshold: float
) -> None:
    exp, metrics = exporter()
    exp.consume(request(_exponential(scale, offset, zero_threshold), sum_metric("ok", number(1.0))))
    out = openmetrics(exp)
    list(text_string_to_metric_families(out))  # the scrape stays valid OpenMetrics
    assert "bad_exp" not in out
    assert "ok_total" in out
    assert dropped(metrics, "malformed") == 1


@pytest.mark.parametrize("quantiles", [[0.5, 0.5], [math.nan], [2.0], [-0.1]])
def test_a_summary_with_quantiles_outside_0_1_or_repeated_is_dropped_not_exposed(quantiles: list[float]) -> None:
    exp, metrics = exporter()
    point = SummaryDataPoint(time_unix_nano=S, count=3, sum=1.0)
    for index, quantile in enumerate(quantiles):
        point.quantile_values.add(quantile=quantile, value=float(index))
    metric = Metric(name="bad.summary")
    metric.summary.data_points.append(point)
    exp.consume(request(metric, sum_metric("ok", number(1.0))))
    out = openmetrics(exp)
    list(text_string_to_metric_families(out))
    assert "bad_summary" not in out
    assert "ok_total" in out
    assert dropped(metrics, "malformed") == 1


@pytest.mark.parametrize("value", [math.nan, -1.0])
def test_a_counter_that_is_nan_or_negative_is_dropped_not_exposed(value: float) -> None:
    exp, metrics = exporter()
    exp.consume(request(sum_metric("bad", number(value)), sum_metric("ok", number(1.0))))
    out = openmetrics(exp)
    list(text_string_to_metric_families(out))
    assert "bad_total" not in out and "ok_total" in out
    assert dropped(metrics, "malformed") == 1


@pytest.mark.parametrize(
    ("bounds", "counts", "total"),
    [([1.0], [1, 1], math.nan), ([1.0], [1, 1], -1.0), ([-5.0, 0.0], [1, 1, 1], -3.0), ([-5.0, 0.0], [1, 1, 1], 3.0)],
)
def test_a_histogram_sum_openmetrics_forbids_is_left_out_and_the_buckets_kept(
    bounds: list[float], counts: list[int], total: float
) -> None:
    exp, _ = exporter()
    point = HistogramDataPoint(
        time_unix_nano=S, count=sum(counts), sum=total, explicit_bounds=bounds, bucket_counts=counts
    )
    exp.consume(request(histogram_metric("lat", point)))
    out = openmetrics(exp)
    list(text_string_to_metric_families(out))
    assert metric_value(out, "lat_seconds_bucket", le="+Inf") == sum(counts)
    assert "lat_seconds_sum" not in out


@pytest.mark.parametrize("total", [math.nan, -0.75])
def test_a_summary_whose_sum_is_nan_or_negative_is_shown_without_its_sum(total: float) -> None:
    """Pass 129: such a summary (a clock offset's sum is negative) was dropped whole as malformed. The compatibility
    spec produces the quantiles and _count always, and {name}_sum "only if the sum is positive and monotonic"."""
    exp, metrics = exporter()
    point = SummaryDataPoint(time_unix_nano=S, count=3, sum=total)
    point.quantile_values.add(quantile=0.5, value=0.25)
    metric = Metric(name="clock.offset")
    metric.summary.data_points.append(point)
    exp.consume(request(metric))
    (family,) = [f for f in text_string_to_metric_families(openmetrics(exp)) if f.name == "clock_offset"]
    assert {(s.name, s.labels.get("quantile"), s.value) for s in family.samples} == {
        ("clock_offset", "0.5", 0.25),
        ("clock_offset_count", None, 3.0),
    }
    assert dropped(metrics, "malformed") == 0


def test_a_negative_quantile_value_is_left_out_so_the_openmetrics_scrape_stays_valid() -> None:
    """Pass 129 (found writing the test above): OpenMetrics forbids negative quantile values, and the strict
    parser refused the whole scrape for one. The others and _count are shown; the point counts as malformed."""
    exp, metrics = exporter()
    point = SummaryDataPoint(time_unix_nano=S, count=3, sum=1.0)
    point.quantile_values.add(quantile=0.5, value=-0.25)
    point.quantile_values.add(quantile=0.99, value=0.5)
    metric = Metric(name="clock.offset")
    metric.summary.data_points.append(point)
    exp.consume(request(metric))
    (family,) = [f for f in text_string_to_metric_families(openmetrics(exp)) if f.name == "clock_offset"]
    assert {(s.name, s.labels.get("quantile")) for s in family.samples} == {
        ("clock_offset", "0.99"),
        ("clock_offset_count", None),
        ("clock_offset_sum", None),
    }
    assert dropped(metrics, "malformed") == 1


def test_a_zero_window_as_long_as_the_expiry_is_a_config_error() -> None:
    """A sporadic series would be scraped at zero from its first scrape until it expired: no count would show."""
    from agent.config.schema import ConfigError, build

    errors: list[ConfigError] = []
    build(PrometheusExporterConfig, {"metric_expiration": "60s"}, "exporters.prometheus", errors)  # the 60s default
    assert [str(e) for e in errors] == [
        "exporters.prometheus.new_series_at_zero_for: must be shorter than metric_expiration (60s)"
    ]


def test_target_info_series_are_bounded_by_max_series_too() -> None:
    """Every resource recorded a target_info series, even when all its points were refused at the limit."""
    exp, metrics = exporter(PrometheusExporterConfig(max_series=5))
    for n in range(50):
        exp.consume(
            request(
                sum_metric("c", number(1.0, 0, 1)), resource={"service.name": "svc", "service.instance.id": f"i{n}"}
            )
        )
    out = text(exp)
    assert len([line for line in out.splitlines() if line.startswith("target_info{")]) <= 5
    assert dropped(metrics, "series_limit") >= 45


def test_unusable_scrape_tls_files_are_refused_when_the_exporter_is_built_naming_the_setting(tmp_path: Path) -> None:
    """As the receivers' (tests/unit/test_otlp_receiver_tls.py): before anything binds, so a reload with bad files
    is refused while the running scrape endpoint goes on."""
    cert, key = self_signed_certificate(tmp_path)
    other_cert, _ = self_signed_certificate(tmp_path, "other")
    cases = [
        (TlsServerConfig(cert_file=str(tmp_path / "absent.pem"), key_file=str(key)), "TLS file not found"),
        (TlsServerConfig(cert_file=str(other_cert), key_file=str(key)), "TLS file(s) not usable"),
    ]
    for tls, message in cases:
        with pytest.raises(RuntimeError) as raised:
            exporter(PrometheusExporterConfig(tls=tls))
        assert str(raised.value).startswith(f"exporters.prometheus.tls: {message}"), raised.value
    assert exporter(PrometheusExporterConfig(tls=TlsServerConfig(cert_file=str(cert), key_file=str(key))))


async def test_the_scrape_endpoint_serves_https_with_its_certificate_and_nothing_in_plain_text(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    endpoint = HostPort(f"127.0.0.1:{free_port()}")
    target, _ = exporter(
        PrometheusExporterConfig(endpoint=endpoint, tls=TlsServerConfig(cert_file=str(cert), key_file=str(key)))
    )
    await target.start()
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://localhost:{endpoint.port}/metrics", ssl=trusting) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://localhost:{endpoint.port}/metrics") as response:
                    await response.read()
    finally:
        await target.shutdown(time.monotonic() + 2)


# --- the handover at a reload ----------------------------------------------------------------------------------


def _counter_point(acc: Accumulator, name: str, value: float, start_ns: int, ended: bool = False) -> None:
    point = NumberDataPoint(as_double=value, start_time_unix_nano=start_ns, time_unix_nano=start_ns + 1)
    point.flags = 1 if ended else 0  # NO_RECORDED_VALUE: its source ended it
    acc.consume(request(sum_metric(name, point)))


def test_a_series_no_scrape_showed_yet_still_begins_at_zero_after_a_reload() -> None:
    """Pushed after the old exporter's last scrape, it waited to be shown at zero first: handed over as seen, it
    was shown at its value, and Prometheus (which counts no increase on a first sample) lost those counts."""
    now = [100.0]
    old = _held_accumulator(now)
    start = time.time_ns()
    _counter_point(old, "jobs", 4, start)  # after the last scrape: zero first, pending
    old.fold_pending()  # as the exporter's drain task does
    new = Accumulator(300.0, 1000, lambda reason, n: None, clock=lambda: now[0], new_series_at_zero_for=60.0)
    new.resume_after(old)
    _counter_point(new, "jobs", 4, start)
    assert _values(new) == [0.0]


def test_handed_over_starts_survive_series_ending_after_the_reload() -> None:
    """The handover filled the ended-starts memory; the first series to end after the reload found it full and
    cleared it, and an application's counter running through the reload was then shown at zero: counted twice."""
    now = [100.0]
    old = Accumulator(300.0, 4, lambda reason, n: None, clock=lambda: now[0], new_series_at_zero_for=60.0)
    old.snapshot()
    start = time.time_ns()
    for index in range(3):
        _counter_point(old, f"app.{index}", 20, start)
    old.snapshot()  # shown at zero
    new = Accumulator(300.0, 4, lambda reason, n: None, clock=lambda: now[0], new_series_at_zero_for=60.0)
    new.resume_after(old)
    for index in range(2):  # two series of the new exporter's own end, filling the memory past its bound
        _counter_point(new, f"own.{index}", 1, start + 10)
        _counter_point(new, f"own.{index}", 1, start + 10, ended=True)
    _counter_point(new, "app.2", 21, start)  # went on through the reload
    assert _values(new) == [21.0]


def test_a_histogram_running_through_a_reload_keeps_its_counts() -> None:
    """Its start is handed over like a counter's: shown at zero again after the reload, it would read as a reset."""
    now = [100.0]
    old = _held_accumulator(now)
    start = time.time_ns()

    def point(end: int) -> HistogramDataPoint:
        return HistogramDataPoint(
            start_time_unix_nano=start,
            time_unix_nano=end,
            count=3,
            sum=1.0,
            explicit_bounds=[0.5],
            bucket_counts=[1, 2],
        )

    old.consume(request(histogram_metric("step.duration", point(start + 1))))
    old.snapshot()  # shown, at zero
    new = Accumulator(300.0, 1000, lambda reason, n: None, clock=lambda: now[0], new_series_at_zero_for=60.0)
    new.resume_after(old)
    new.consume(request(histogram_metric("step.duration", point(start + 2))))
    assert [s.counts for f in new.snapshot()[0] for s in f.series.values()] == [[1.0, 2.0]]


def test_a_sum_of_deltas_is_shown_at_zero_first_even_at_the_agents_first_scrape() -> None:
    """After an agent restart, Prometheus had seen the old agent's sum (1); the new one began at 1 too and was
    shown at once: 1 → 1, the new error never counted (pass 93). A sum of deltas is new to this agent: zero first."""
    now = [100.0]
    acc = Accumulator(300.0, 1000, lambda reason, n: None, clock=lambda: now[0], new_series_at_zero_for=60.0)
    acc.consume(request(sum_metric("errors", number(1, 10, 20), temporality=DELTA)))
    assert _values(acc) == [0.0]  # the first scrape of this agent
    now[0] += 61
    assert _values(acc) == [1.0]


def test_ratio_is_added_to_otlp_gauges_of_unit_1_not_to_up_down_counters() -> None:
    """As Prometheus's OTLP translation names them (MetricTypeGauge only): an up-down counter of unit 1 is exposed
    as a gauge, and was named `_ratio` too (pass 93), so queries ported from a Collector setup did not match."""
    exp, _ = exporter()
    gauge = Metric(name="pool.utilization", unit="1", description="used share")
    gauge.gauge.data_points.append(number(0.5))
    exp.consume(request(gauge, sum_metric("pool.connections", number(3), monotonic=False, unit="1")))
    out = text(exp)
    assert metric_value(out, "pool_utilization_ratio") == 0.5
    assert metric_value(out, "pool_connections") == 3
