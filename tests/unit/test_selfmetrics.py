"""The agent's own metrics registry."""

from __future__ import annotations

import pytest

from agent.telemetry.selfmetrics import RETIRED_COMPONENTS_KEPT, SelfMetrics
from tests.helpers import metric_value


def test_counters_and_histograms_come_without_created_series() -> None:
    metrics = SelfMetrics()
    metrics.counter("things_total", "Things.", ["kind"]).labels("a").inc()
    metrics.histogram("wait_seconds", "Waits.").observe(0.1)
    text = metrics.render().decode()
    assert 'otel_sidecar_things_total{kind="a"} 1.0' in text and "otel_sidecar_wait_seconds_count 1.0" in text
    assert "_created" not in text


def test_forgetting_components_removes_only_the_gauges_of_ids_no_longer_running() -> None:
    """Counters stay: a renamed exporter's flush at the reload gave up its queue, counted, and the count was
    removed 4 ms later, before any scrape could see it (pass 90)."""
    metrics = SelfMetrics()
    queue = metrics.gauge("exporter_queue_size", "Batches.", ["exporter"])
    queue.labels("otlp").set(5)  # a full queue of an exporter a reload removed
    queue.labels("loki").set(1)
    failed = metrics.counter("exporter_send_failed_items_total", "Items.", ["exporter", "signal", "reason"])
    failed.labels("otlp", "traces", "shutdown").inc(50)
    failed.labels("otlp", "logs", "shutdown")  # counted nothing: no news worth a series
    metrics.counter("receiver_accepted_items_total", "Items.", ["receiver", "signal"]).labels("otlp", "traces").inc()
    metrics.counter("config_reloads_total", "Reloads.", ["result"]).labels("invalid").inc()  # no component label
    removed = metrics.forget_components({"exporter": {"loki"}, "receiver": {"otlp"}})
    text = metrics.render().decode()
    assert removed == 2
    assert 'otel_sidecar_exporter_queue_size{exporter="otlp"}' not in text
    assert 'signal="logs"' not in text
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", exporter="otlp") == 50
    assert 'otel_sidecar_exporter_queue_size{exporter="loki"} 1.0' in text
    assert 'otel_sidecar_receiver_accepted_items_total{receiver="otlp",signal="traces"} 1.0' in text
    assert 'otel_sidecar_config_reloads_total{result="invalid"} 1.0' in text


def test_counters_of_removed_components_are_kept_for_the_latest_removed_only() -> None:
    """A config renaming its exporter at every reload added three series for good each time (pass 100)."""
    metrics = SelfMetrics()
    sent = metrics.counter("exporter_sent_items_total", "Items.", ["exporter", "signal"])
    for n in range(RETIRED_COMPONENTS_KEPT + 5):
        sent.labels(f"otlp/v{n}", "traces").inc()
        metrics.forget_components({"exporter": {f"otlp/v{n}"}})  # the reload that renamed it
    metrics.forget_components({"exporter": {"otlp/v30"}})  # an earlier name comes back: running, not retired
    text = metrics.render().decode()
    running_and_kept = [line for line in text.splitlines() if line.startswith("otel_sidecar_exporter_sent_items_total")]
    assert len(running_and_kept) == RETIRED_COMPONENTS_KEPT + 1
    assert all(f'exporter="otlp/v{n}"' not in text for n in range(4))  # the longest removed went
    assert all(f'exporter="otlp/v{n}"' in text for n in range(4, RETIRED_COMPONENTS_KEPT + 5))


def test_the_tests_metric_reader_refuses_a_name_no_family_declares() -> None:
    """tests.helpers.metric_value reads 0 for a family without samples; a misspelt name must not read 0 too."""
    metrics = SelfMetrics()
    metrics.counter("things_total", "Things.", ["kind"])
    metrics.histogram("wait_seconds", "Waits.")
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_things_total") == 0
    assert metric_value(text, "otel_sidecar_wait_seconds_count") == 0
    with pytest.raises(AssertionError, match="no metric family declares otel_sidecar_thing_total"):
        metric_value(text, "otel_sidecar_thing_total")
