"""The agent's own metrics registry."""

from __future__ import annotations

from agent.telemetry.selfmetrics import SelfMetrics


def test_counters_and_histograms_come_without_created_series() -> None:
    metrics = SelfMetrics()
    metrics.counter("things_total", "Things.", ["kind"]).labels("a").inc()
    metrics.histogram("wait_seconds", "Waits.").observe(0.1)
    text = metrics.render().decode()
    assert 'otel_sidecar_things_total{kind="a"} 1.0' in text and "otel_sidecar_wait_seconds_count 1.0" in text
    assert "_created" not in text
