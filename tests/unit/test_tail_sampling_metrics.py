"""The decision latency histogram, counted in plain lists and rendered at scrape time."""

from __future__ import annotations

import logging

from agent.component import CreateSettings, Kind
from agent.config.service import ServiceConfig
from agent.processors.tail_sampling.metrics import SamplingMetrics
from agent.telemetry.selfmetrics import SelfMetrics
from tests.helpers import metric_value

NAME = "otel_sidecar_sampling_decision_latency_seconds"


def metrics_of(registry: SelfMetrics, component_id: str) -> SamplingMetrics:
    settings = CreateSettings(component_id, Kind.PROCESSOR, logging.getLogger("test"), registry, ServiceConfig(), {})
    return SamplingMetrics(settings)


def test_decision_latencies_render_as_a_cumulative_histogram_per_processor() -> None:
    registry = SelfMetrics()
    first, second = metrics_of(registry, "tail_sampling"), metrics_of(registry, "tail_sampling/b")
    for seconds in (0.05, 0.1, 2.0, 2.1, 100.0):
        first.decision_latency.observe(seconds)
    second.decision_latency.observe(1.0)
    text = registry.render().decode()

    def value(suffix: str, **labels: str) -> float:
        return metric_value(text, NAME + suffix, processor="tail_sampling", **labels)

    assert value("_bucket", le="0.1") == 2  # a bound is inclusive
    assert value("_bucket", le="2.0") == 3
    assert value("_bucket", le="2.5") == 4
    assert value("_bucket", le="60.0") == 4
    assert value("_bucket", le="+Inf") == value("_count") == 5
    assert value("_sum") == 104.25
    assert metric_value(text, NAME + "_count", processor="tail_sampling/b") == 1


def test_the_same_processor_id_on_one_registry_shares_its_histogram() -> None:
    registry = SelfMetrics()
    assert metrics_of(registry, "x").decision_latency is metrics_of(registry, "x").decision_latency


def test_latencies_observed_together_count_a_value_on_a_bound_in_that_bounds_bucket() -> None:
    """The sampler observes each tick's decisions at once (observe_all): a bound is inclusive there too."""
    registry = SelfMetrics()
    metrics_of(registry, "tail_sampling").decision_latency.observe_all([0.1, 2.0, 2.1])
    text = registry.render().decode()
    assert metric_value(text, NAME + "_bucket", processor="tail_sampling", le="0.1") == 1
    assert metric_value(text, NAME + "_bucket", processor="tail_sampling", le="2.0") == 2
    assert metric_value(text, NAME + "_sum", processor="tail_sampling") == 4.2


def test_a_processor_removed_by_a_reload_leaves_no_latency_histogram_behind() -> None:
    registry = SelfMetrics()
    metrics_of(registry, "tail_sampling").decision_latency.observe(1.0)
    metrics_of(registry, "tail_sampling/old").decision_latency.observe(1.0)
    registry.forget_components({"processor": {"tail_sampling"}})
    text = registry.render().decode()
    assert metric_value(text, NAME + "_count", processor="tail_sampling") == 1
    assert 'processor="tail_sampling/old"' not in text
