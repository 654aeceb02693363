"""The prometheus exporter folds large batches in slices, off the caller's time, with the same result."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from prometheus_client.exposition import generate_latest

import agent.exporters.prometheus.exporter as exporter_module
from agent.component import CreateSettings, Kind, Refused
from agent.config.schema import HostPort
from agent.config.service import ServiceConfig
from agent.exporters.prometheus import FACTORY
from agent.exporters.prometheus.accumulator import Accumulator
from agent.exporters.prometheus.config import PrometheusExporterConfig
from agent.exporters.prometheus.exporter import PrometheusExporter
from agent.telemetry.selfmetrics import SelfMetrics
from tests.helpers import free_port, metric_value

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


def exporter(port: int | None = None) -> PrometheusExporter:
    cfg = PrometheusExporterConfig(endpoint=HostPort(f"127.0.0.1:{port or free_port()}"))
    settings = CreateSettings(
        "prometheus", Kind.EXPORTER, logging.getLogger("test.prometheus"), SelfMetrics(), ServiceConfig(), {}
    )
    return PrometheusExporter(cfg, settings)


def big_request(series: int, value: float = 1.0) -> ExportMetricsServiceRequest:
    """A span-metrics-sized flush: a counter and a histogram with ``series`` points each."""
    counter = Metric(name="jobs", unit="{job}")
    counter.sum.aggregation_temporality = CUMULATIVE  # type: ignore[assignment]
    counter.sum.is_monotonic = True
    histogram = Metric(name="job.duration", unit="s")
    histogram.histogram.aggregation_temporality = CUMULATIVE  # type: ignore[assignment]
    for index in range(series):
        attributes = [KeyValue(key="job.name", value=AnyValue(string_value=f"job-{index}"))]
        counter.sum.data_points.add(as_double=value, time_unix_nano=1, attributes=attributes)
        histogram.histogram.data_points.add(
            count=2, sum=value, bucket_counts=[1, 1], explicit_bounds=[0.5], time_unix_nano=1, attributes=attributes
        )
    request = ExportMetricsServiceRequest()
    request.resource_metrics.add().scope_metrics.add().metrics.extend([counter, histogram])
    return request


def text(exp: PrometheusExporter) -> str:
    return generate_latest(exp.registry).decode()


def test_a_scrape_shows_everything_consumed_even_what_is_still_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exporter_module, "FOLD_SLICE_SECONDS", 0.0)  # consume folds one slice at most
    exp = exporter()
    exp.consume(big_request(500))
    assert exp.accumulator.pending == 1
    out = text(exp)
    assert exp.accumulator.pending == 0
    assert out.count("jobs_total{") == 500
    assert metric_value(out, "job_duration_seconds_count", job_name="job-499") == 2


def test_a_batch_folded_in_many_slices_exposes_exactly_what_one_fold_does() -> None:
    sliced, whole = exporter(), exporter()
    for value in (1.0, 5.0):
        batch = big_request(300, value)
        sliced.accumulator.consume(batch)
        while sliced.accumulator.fold_pending(0.0) != "done":  # 16 points per slice
            pass
        whole.accumulator.consume(batch)
        whole.accumulator.fold_pending()
    assert text(sliced) == text(whole)
    assert metric_value(text(sliced), "jobs_total", job_name="job-7") == 5.0


async def test_the_drain_task_folds_large_batches_between_other_callbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exporter_module, "FOLD_SLICE_SECONDS", 0.0)
    exp = exporter()
    await exp.start()
    try:
        exp.consume(big_request(2000))
        assert exp.accumulator.pending == 1
        ticks = 0
        deadline = time.monotonic() + 20
        while exp.accumulator.pending and time.monotonic() < deadline:
            await asyncio.sleep(0)
            ticks += 1  # this coroutine ran while the batch was being folded
        assert exp.accumulator.pending == 0
        assert ticks > 10
        assert exp.accumulator.series_count == 4000
    finally:
        await exp.shutdown(time.monotonic() + 1)


def test_consume_refuses_when_too_many_batches_wait_to_be_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exporter_module, "FOLD_SLICE_SECONDS", 0.0)
    monkeypatch.setattr(exporter_module, "MAX_PENDING_BATCHES", 3)
    exp = exporter()
    for _ in range(3):
        exp.consume(big_request(50))
    with pytest.raises(Refused):
        exp.consume(big_request(50))
    assert text(exp).count("jobs_total{") == 50  # what was accepted is exposed
    exp.consume(big_request(50))  # room again


def test_a_malformed_batch_is_counted_and_the_next_ones_are_folded(caplog: pytest.LogCaptureFixture) -> None:
    exp = exporter()

    class Broken:
        @property
        def resource_metrics(self) -> Any:
            raise ValueError("not a metrics request")

    exp.consume(Broken())  # type: ignore[arg-type]
    exp.consume(big_request(2))
    assert text(exp).count("jobs_total{") == 2
    dropped = exp._settings.metrics.registry.get_sample_value(
        "otel_sidecar_prometheus_dropped_points_total", {"exporter": "prometheus", "reason": "malformed"}
    )
    assert dropped == 1
    assert any("cannot expose a metrics batch" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fail_at", [0, 3, 5, 10])
def test_a_batch_failing_part_way_counts_every_point_it_did_not_fold(
    monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    """A fault while folding point ``fail_at`` (of the counter's 5, then the histogram's 5) loses that point and
    the rest of the request; the points before it stay folded, and the count says how many were lost."""
    exp = exporter()
    labels = Accumulator._labels
    calls = [0]

    def failing_labels(self: Accumulator, *args: Any) -> Any:
        calls[0] += 1
        if calls[0] == fail_at + 1:
            raise RuntimeError("a fault in the fold")
        return labels(self, *args)

    monkeypatch.setattr(Accumulator, "_labels", failing_labels)
    exp.consume(big_request(5))
    exposed = text(exp)
    assert exposed.count("jobs_total{") == min(fail_at, 5)
    assert exposed.count("job_duration_seconds_count{") == max(fail_at - 5, 0)
    dropped = exp._settings.metrics.registry.get_sample_value(
        "otel_sidecar_prometheus_dropped_points_total", {"exporter": "prometheus", "reason": "malformed"}
    )
    assert (dropped or 0) == 10 - fail_at  # 10: no fault, nothing lost


def test_a_fault_after_a_metric_is_folded_counts_only_the_metrics_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pass 140: a fault in the clean-up after a metric's last point counted that point lost as well."""
    exp = exporter()
    fold_metric = Accumulator._metric

    def failing_after_jobs(self: Accumulator, metric: Metric, *args: Any) -> Any:
        yield from fold_metric(self, metric, *args)
        if metric.name == "jobs":
            raise RuntimeError("a fault after the metric")

    monkeypatch.setattr(Accumulator, "_metric", failing_after_jobs)
    exp.consume(big_request(5))
    assert text(exp).count("jobs_total{") == 5
    dropped = exp._settings.metrics.registry.get_sample_value(
        "otel_sidecar_prometheus_dropped_points_total", {"exporter": "prometheus", "reason": "malformed"}
    )
    assert dropped == 5  # the histogram's


def test_the_exporter_declares_that_it_keeps_batches_after_consume() -> None:
    # A queued batch is read after consume() returns: fan-out must not hand it to a mutating pipeline as well.
    assert FACTORY.retains_data is True


def test_series_without_new_points_still_expire_after_a_sliced_fold() -> None:
    now = [100.0]
    accumulator = Accumulator(300.0, 1000, lambda reason, count: None, clock=lambda: now[0])
    accumulator.consume(big_request(40))
    now[0] += 200
    while accumulator.fold_pending(0.0) != "done":  # folded late: the points still date from their arrival
        pass
    now[0] += 101
    families, _ = accumulator.snapshot()
    assert families == [] and accumulator.series_count == 0
