"""The agent's own metrics registry."""

from __future__ import annotations

import re

import pytest

from agent.telemetry.selfmetrics import RETIRED_COMPONENTS_KEPT, SelfMetrics
from tests.helpers import REPO, metric_value


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


def declared_self_metrics() -> set[str]:
    """Every name the agent's code declares through ``SelfMetrics`` (counter, gauge, histogram)."""
    declared = re.compile(r"\.(?:counter|gauge|histogram)\(\s*\"([a-z0-9_]+)\"")
    return {name for path in (REPO / "agent").rglob("*.py") for name in declared.findall(path.read_text())}


def documented_names(text: str) -> set[str]:
    """``otel_sidecar_*`` names in the docs, the tables' shorthand expanded: `otel_sidecar_exporter_queue_size` /
    `_queue_bytes` names otel_sidecar_exporter_queue_bytes too (the suffix replaces as many words as it has)."""
    names = set(re.findall(r"otel_sidecar_[a-z0-9_]+", text))
    for first, rest in re.findall(r"`(otel_sidecar_[a-z0-9_]+)`((?:\s*[/,]\s*`_[a-z0-9_]+`)+)", text):
        words = first.split("_")
        for suffix in re.findall(r"`_([a-z0-9_]+)`", rest):
            names.update("_".join(words[:cut] + suffix.split("_")) for cut in range(2, len(words)))
    return names


def test_every_self_metric_the_agent_declares_is_documented() -> None:
    docs = (REPO / "README.md").read_text() + "".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
    documented = documented_names(docs)
    declared = declared_self_metrics()
    assert len(declared) >= 50  # the scan still finds the declarations
    assert sorted(f"otel_sidecar_{name}" for name in declared if f"otel_sidecar_{name}" not in documented) == []
