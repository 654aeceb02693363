"""tail_sampling configuration: defaults, validation with paths, the retention-class cross-check, default config."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from agent.config.loader import AgentConfig, default_config_text, load_text
from agent.config.schema import ConfigInvalid
from agent.processors.tail_sampling.config import TailSamplingConfig


def load(processor: dict[str, Any], pipelines: dict[str, Any] | None = None, retention: Any = None) -> AgentConfig:
    service: dict[str, Any] = {
        "pipelines": pipelines
        or {"traces": {"receivers": ["otlp"], "processors": ["tail_sampling"], "exporters": ["file"]}}
    }
    if retention is not None:
        service["retention"] = retention
    raw = {
        "receivers": {"otlp": {}},
        "processors": {"tail_sampling": processor},
        "exporters": {"file": {"path": "/tmp/out"}},
        "service": service,
    }
    return load_text(yaml.safe_dump(raw), environ={})


def errors_of(processor: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigInvalid) as raised:
        load(processor, **kwargs)
    return sorted(str(e) for e in raised.value.errors)


def test_defaults_wait_thirty_seconds_six_after_the_root_and_keep_errors_and_ten_percent() -> None:
    cfg = load({}).processors["tail_sampling"].config
    assert isinstance(cfg, TailSamplingConfig)
    assert (float(cfg.decision_wait), float(cfg.decision_wait_after_root)) == (30.0, 6.0)
    assert cfg.policies.errors.enabled and cfg.policies.errors.retention_class == "error"
    assert cfg.policies.probabilistic.percentage == 10.0
    assert cfg.policies.probabilistic.retention_class == "standard"
    assert cfg.policies.critical_services.retention_class == "critical"


@pytest.mark.parametrize(("wait", "grace"), [("5s", 5.0), ("2s", 2.0), ("10s", 6.0)])
def test_a_short_decision_wait_written_alone_shortens_the_default_grace_after_the_root(wait: str, grace: float) -> None:
    """Configs written for the old 2s grace set only decision_wait; a 6s default must not refuse them."""
    cfg = load({"decision_wait": wait}).processors["tail_sampling"].config
    assert float(cfg.decision_wait_after_root) == grace


def test_a_grace_written_longer_than_the_wait_is_still_an_error() -> None:
    errors = errors_of({"decision_wait": "5s", "decision_wait_after_root": "6s"})
    assert errors == ["processors.tail_sampling.decision_wait_after_root: must not exceed decision_wait"]


def test_a_policy_naming_an_undefined_retention_class_is_reported_at_its_path() -> None:
    errors = errors_of({"policies": {"errors": {"retention_class": "forever"}}})
    assert errors == [
        "processors.tail_sampling.policies.errors.retention_class: retention class 'forever' is not defined in "
        "service.retention.classes (error, critical, standard)"
    ]


def test_classes_defined_in_the_service_section_can_be_named_by_policies() -> None:
    retention = {"classes": {"error": "30d", "critical": "30d", "standard": "7d", "audit": "365d"}}
    config = load({"policies": {"latency": {"threshold": "30s", "retention_class": "audit"}}}, retention=retention)
    assert config.processors["tail_sampling"].config.policies.latency.retention_class == "audit"


def test_attribute_rules_need_exactly_one_valid_matcher_and_an_unreserved_name() -> None:
    rules = [
        {"name": "both", "key": "k", "values": ["a"], "bool_value": True},
        {"name": "none_set", "key": "k"},
        {"name": "bad_regex", "key": "k", "regex": "("},
        {"name": "errors", "key": "k", "values": ["a"]},
        {"name": "backwards", "key": "k", "min_value": 5, "max_value": 1},
    ]
    errors = errors_of({"policies": {"attributes": rules}})
    base = "processors.tail_sampling.policies.attributes"
    one = "set exactly one matcher: values, regex, min_value/max_value or bool_value"
    assert errors[:2] == [f"{base}[0]: {one}", f"{base}[1]: {one}"]
    assert errors[2].startswith(f"{base}[2].regex: not a valid regular expression")
    assert errors[3:] == [
        f"{base}[3].name: errors is a reserved policy name",
        f"{base}[4].max_value: must not be below min_value",
    ]


def test_edge_settings_that_are_allowed_stay_allowed() -> None:
    """A range of one value, and a tick as long as the wait, are valid (the checks are strict inequalities)."""
    rules = [{"name": "five", "key": "k", "min_value": 5, "max_value": 5}]
    load({"policies": {"attributes": rules}})
    load({"decision_wait": "30s", "tick_interval": "30s"})
    assert errors_of({"decision_wait": "30s", "tick_interval": "31s"}) == [
        "processors.tail_sampling.tick_interval: must not exceed decision_wait"
    ]


def test_attribute_rule_names_must_be_unique() -> None:
    rules = [{"name": "dup", "key": "k", "values": ["a"]}, {"name": "dup", "key": "j", "bool_value": True}]
    assert errors_of({"policies": {"attributes": rules}}) == [
        "processors.tail_sampling.policies.attributes[1].name: policy name dup is used twice"
    ]


def test_bounds_are_checked_per_field() -> None:
    errors = errors_of({"max_traces": 0, "policies": {"probabilistic": {"percentage": 150}}})
    assert errors == [
        "processors.tail_sampling.max_traces: must be positive",
        "processors.tail_sampling.policies.probabilistic.percentage: must be at most 100",
    ]


def test_a_latency_threshold_of_zero_is_refused_rather_than_keeping_every_trace() -> None:
    """Elsewhere 0s turns a setting off; a latency policy at 0s kept every trace, so sampling was off (pass 111)."""
    assert errors_of({"policies": {"latency": {"threshold": 0}}}) == [
        "processors.tail_sampling.policies.latency.threshold: must be longer than 0s (0s keeps every trace); "
        "leave it unset to turn the policy off"
    ]
    assert float(load({"policies": {"latency": {"threshold": "1ms"}}}).processors["tail_sampling"].config.policies
                 .latency.threshold) == 0.001  # fmt: skip


def test_decision_caches_have_an_upper_bound_since_they_are_allocated_at_start() -> None:
    """A few zeros too many validated, then the start failed with a bare MemoryError (pass 111)."""
    assert errors_of({"decision_cache": {"dropped_size": 10**14, "kept_size": 10**9}}) == [
        "processors.tail_sampling.decision_cache.dropped_size: must be at most 100_000_000",
        "processors.tail_sampling.decision_cache.kept_size: must be at most 10_000_000",
    ]


def test_the_wait_after_the_root_cannot_exceed_the_decision_wait() -> None:
    assert errors_of({"decision_wait": "1s", "decision_wait_after_root": "2s"}) == [
        "processors.tail_sampling.decision_wait_after_root: must not exceed decision_wait"
    ]


def test_one_tail_sampler_cannot_serve_two_traces_pipelines() -> None:
    pipelines = {
        "traces": {"receivers": ["otlp"], "processors": ["tail_sampling"], "exporters": ["file"]},
        "traces/b": {"receivers": ["otlp"], "processors": ["tail_sampling"], "exporters": ["file"]},
        "logs": {"receivers": ["otlp"], "processors": ["tail_sampling"], "exporters": ["file"]},
    }
    (error,) = errors_of({}, pipelines=pipelines)
    assert error.startswith("processors.tail_sampling: used in several traces pipelines (traces, traces/b)")


def test_the_same_sampler_in_one_traces_and_one_logs_pipeline_is_valid() -> None:
    pipelines = {
        "traces": {"receivers": ["otlp"], "processors": ["tail_sampling"], "exporters": ["file"]},
        "logs": {"receivers": ["otlp"], "processors": ["tail_sampling"], "exporters": ["file"]},
    }
    assert "tail_sampling" in load({}, pipelines=pipelines).processors


def test_the_default_config_tail_samples_and_redacts_traces_and_their_logs_into_the_file_exporter() -> None:
    config = load_text(default_config_text(), environ={})
    pipelines = config.service.pipelines
    assert pipelines["traces"].processors == ["memory_limiter", "tail_sampling", "redaction"]
    assert pipelines["traces"].exporters == ["file"]
    assert pipelines["logs"].processors == ["memory_limiter", "tail_sampling", "redaction"]
    policies = config.processors["tail_sampling"].config.policies
    assert policies.errors.enabled
    assert policies.probabilistic.percentage == 10.0
    assert [r.name for r in policies.attributes] == ["development"]


def test_the_default_config_reads_critical_services_from_the_environment() -> None:
    config = load_text(default_config_text(), environ={"OTEL_SIDECAR_CRITICAL_SERVICES": "[payments, billing]"})
    assert config.processors["tail_sampling"].config.policies.critical_services.services == ["payments", "billing"]
