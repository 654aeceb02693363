"""Each policy's verdict on a whole trace, and how verdicts combine into one decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from agent.config.service import DEFAULT_RETENTION_CLASSES
from agent.otlp.probability import MAX_THRESHOLD, is_sampled, threshold_for
from agent.processors.tail_sampling.buffer import BufferedTrace, group_by_trace
from agent.processors.tail_sampling.config import PoliciesConfig
from agent.processors.tail_sampling.policies import DROP, EvaluationContext, PolicySet, build_policies
from tests.unit.test_tail_sampling_support import (
    DROPPED_AT_10,
    KEPT_AT_10,
    TEN_PERCENT_THRESHOLD,
    config,
    resource,
    span,
    trace_id_with_randomness,
)

HALF = threshold_for(0.5)


def trace_of(*parts: tuple[Any, list[Span]], trace_id: bytes | None = None) -> BufferedTrace:
    """A buffered trace holding ``(resource, spans)`` parts, each as its own ResourceSpans."""
    tid = trace_id or (parts[0][1][0].trace_id if parts and parts[0][1] else trace_id_with_randomness(1))
    trace = BufferedTrace(tid, 0.0)
    for res, spans in parts:
        rs = ResourceSpans(resource=res, scope_spans=[ScopeSpans(spans=spans)])
        ss = rs.scope_spans[0]
        groups, _, failed, _ = group_by_trace(ss.spans)  # as the sampler reads each scope
        for indices in groups.values():
            trace.add_spans(rs, ss, indices, 0)
        trace.failed = trace.failed or bool(failed)
    return trace


def policies(**raw: Any) -> Any:
    return build_policies(config(policies=raw).policies, DEFAULT_RETENTION_CLASSES)


def decide(trace: BufferedTrace, **raw: Any) -> Any:
    return policies(**raw).decide(trace, EvaluationContext())


NOT_SAMPLED = trace_id_with_randomness(DROPPED_AT_10)
SAMPLED = trace_id_with_randomness(KEPT_AT_10)


def test_a_trace_with_an_error_span_is_kept_as_error_with_probability_one() -> None:
    trace = trace_of((resource(), [span(NOT_SAMPLED, 1, root=True), span(NOT_SAMPLED, 2, error=True)]))
    decision = decide(trace)
    assert (decision.keep, decision.retention_class, decision.policy, decision.threshold) == (
        True,
        "error",
        "errors",
        0,
    )


def test_error_type_and_http_5xx_count_as_errors_only_when_enabled() -> None:
    typed = trace_of((resource(), [span(NOT_SAMPLED, 1, attributes={"error.type": "Timeout"})]))
    http = trace_of((resource(), [span(NOT_SAMPLED, 1, attributes={"http.response.status_code": 503})]))
    first_5xx = trace_of((resource(), [span(NOT_SAMPLED, 1, attributes={"http.response.status_code": 500})]))
    last_4xx = trace_of((resource(), [span(NOT_SAMPLED, 1, attributes={"http.response.status_code": 499})]))
    assert decide(typed) is DROP and decide(http) is DROP
    assert decide(typed, errors={"error_type": True}).policy == "errors"
    assert decide(http, errors={"http_server_errors": True}).policy == "errors"
    assert decide(first_5xx, errors={"http_server_errors": True}).policy == "errors"
    assert decide(last_4xx, errors={"http_server_errors": True}) is DROP


def test_a_trace_touching_a_critical_service_is_kept_as_critical() -> None:
    trace = trace_of(
        (resource("orchestrator"), [span(NOT_SAMPLED, 1, root=True)]),
        (resource("payments"), [span(NOT_SAMPLED, 2)]),
    )
    assert decide(trace) is DROP
    decision = decide(trace, critical_services={"services": ["payments"]})
    assert (decision.retention_class, decision.policy, decision.threshold) == ("critical", "critical_services", 0)
    # Service names are compared as written, as the Collector's string matchers do.
    shouted = trace_of((resource("Payments"), [span(NOT_SAMPLED, 1, root=True)]))
    assert decide(shouted, critical_services={"services": ["payments"]}) is DROP


def test_latency_is_measured_from_the_earliest_start_to_the_latest_end_of_the_whole_trace() -> None:
    trace = trace_of(
        (resource(), [span(NOT_SAMPLED, 1, start_ms=0, duration_ms=100), span(NOT_SAMPLED, 2, start_ms=2900)])
    )  # 0 .. 2910 ms
    assert decide(trace, latency={"threshold": "3s"}) is DROP
    decision = decide(trace, latency={"threshold": "2900ms", "retention_class": "critical"})
    assert (decision.policy, decision.retention_class) == ("latency", "critical")


def test_a_trace_lasting_exactly_the_latency_threshold_is_kept_and_an_unset_start_is_not_the_epoch() -> None:
    exact = trace_of((resource(), [span(NOT_SAMPLED, 1, start_ms=1000, duration_ms=5000)]))
    assert decide(exact, latency={"threshold": "5s"}).policy == "latency"
    assert decide(exact, latency={"threshold": "5001ms"}) is DROP
    unset = span(NOT_SAMPLED, 1, start_ms=0, duration_ms=2000)
    unset.start_time_unix_nano = 0  # a span without its start: not a trace lasting since 1970
    late = span(NOT_SAMPLED, 2, start_ms=1000, duration_ms=1000)
    assert decide(trace_of((resource(), [unset, late])), latency={"threshold": "5s"}) is DROP


def rule(**fields: Any) -> dict[str, Any]:
    return {"name": "rule", "key": "k", **fields}


def test_attribute_rules_match_strings_exactly_or_by_regex_numbers_by_range_and_booleans() -> None:
    cases = [
        (rule(values=["development"]), "development", True),
        (rule(values=["development"]), "dev", False),
        (rule(regex="dev.*"), "development", True),
        (rule(regex="dev"), "development", False),  # the whole value must match
        (rule(min_value=1, max_value=5), 5, True),
        (rule(min_value=1, max_value=5), 1, True),  # both bounds are inclusive
        (rule(min_value=1, max_value=5), 0.99, False),
        (rule(min_value=1, max_value=5), 5.5, False),
        (rule(min_value=1.5), 2.0, True),
        (rule(max_value=0), 1, False),
        (rule(bool_value=True), True, True),
        (rule(bool_value=True), False, False),
        (rule(bool_value=True), "true", False),  # types are not coerced
    ]
    for raw, value, expected in cases:
        trace = trace_of((resource(), [span(NOT_SAMPLED, 1, attributes={"k": value})]))
        decision = decide(trace, attributes=[raw])
        assert decision.keep is expected, (raw, value)
        if expected:
            assert (decision.policy, decision.threshold) == ("rule", 0)


def test_attribute_rules_look_at_span_resource_or_both_attributes() -> None:
    on_resource = trace_of((resource(**{"deployment.environment": "development"}), [span(NOT_SAMPLED, 1)]))
    on_span = trace_of((resource(), [span(NOT_SAMPLED, 1, attributes={"deployment.environment": "development"})]))
    base = {"name": "dev", "key": "deployment.environment", "values": ["development"]}
    for match_on, resource_hit, span_hit in (("any", True, True), ("resource", True, False), ("span", False, True)):
        assert decide(on_resource, attributes=[{**base, "match_on": match_on}]).keep is resource_hit
        assert decide(on_span, attributes=[{**base, "match_on": match_on}]).keep is span_hit


def test_an_attribute_rule_also_tests_its_also_keys_on_spans_and_resources() -> None:
    rule = {"name": "dev", "key": "deployment.environment", "also_keys": ["deployment.environment.name"]}
    renamed = {"deployment.environment.name": "development"}
    on_resource = trace_of((resource(**renamed), [span(NOT_SAMPLED, 1)]))
    on_span = trace_of((resource(), [span(NOT_SAMPLED, 1, attributes=renamed)]))
    other = trace_of((resource(**{"deployment.environment.name": "production"}), [span(NOT_SAMPLED, 1)]))
    assert decide(on_resource, attributes=[{**rule, "values": ["development"]}]).keep
    assert decide(on_span, attributes=[{**rule, "values": ["development"]}]).keep
    assert not decide(other, attributes=[{**rule, "values": ["development"]}]).keep


def test_an_attribute_rule_with_a_percentage_keeps_matching_traces_consistently_by_trace_id() -> None:
    raw = [{"name": "half", "key": "k", "values": ["v"], "percentage": 50}]
    kept = trace_of((resource(), [span(trace_id_with_randomness(HALF), 1, attributes={"k": "v"})]))
    dropped = trace_of((resource(), [span(trace_id_with_randomness(HALF - 1), 1, attributes={"k": "v"})]))
    assert decide(kept, attributes=raw, probabilistic={"enabled": False}).threshold == HALF
    assert decide(dropped, attributes=raw, probabilistic={"enabled": False}) is DROP


def test_the_probabilistic_policy_keeps_exactly_the_traces_an_otep_235_sampler_at_ten_percent_keeps() -> None:
    assert threshold_for(0.1) == TEN_PERCENT_THRESHOLD
    set_ = policies()
    for value in (0, DROPPED_AT_10, TEN_PERCENT_THRESHOLD, KEPT_AT_10, MAX_THRESHOLD - 1):
        trace_id = trace_id_with_randomness(value)
        decision = set_.decide(trace_of((resource(), [span(trace_id, 1)])), EvaluationContext())
        assert decision.keep is is_sampled(trace_id, TEN_PERCENT_THRESHOLD)
        if decision.keep:
            assert (decision.policy, decision.retention_class, decision.threshold) == (
                "probabilistic",
                "standard",
                TEN_PERCENT_THRESHOLD,
            )


def test_when_several_policies_keep_the_longest_retained_class_wins_and_the_threshold_is_the_lowest() -> None:
    trace = trace_of((resource("payments"), [span(SAMPLED, 1, error=True)]))
    retention = {"error": 30 * 86400.0, "critical": 90 * 86400.0, "standard": 7 * 86400.0}
    set_ = build_policies(config(policies={"critical_services": {"services": ["payments"]}}).policies, retention)
    decision = set_.decide(trace, EvaluationContext())
    assert (decision.policy, decision.retention_class, decision.threshold) == ("critical_services", "critical", 0)


def test_on_equal_retention_the_first_configured_policy_wins() -> None:
    trace = trace_of((resource("payments"), [span(SAMPLED, 1, error=True)]))
    decision = decide(trace, critical_services={"services": ["payments"]})  # error and critical: both 30d
    assert decision.policy == "errors"


def test_a_sampled_normal_trace_matching_a_half_rule_is_stamped_with_the_half_threshold() -> None:
    # The trace would be kept at 10% and at 50%: the sampler that applies is the OR of both, i.e. 50%.
    raw = [{"name": "half", "key": "k", "values": ["v"], "percentage": 50, "retention_class": "critical"}]
    trace = trace_of((resource(), [span(SAMPLED, 1, attributes={"k": "v"})]))
    decision = decide(trace, attributes=raw)
    assert (decision.policy, decision.retention_class, decision.threshold) == ("half", "critical", HALF)


def test_a_trace_no_policy_keeps_is_dropped_with_policy_none() -> None:
    decision = decide(trace_of((resource(), [span(NOT_SAMPLED, 1)])))
    assert decision is DROP and (decision.keep, decision.policy) == (False, "none")


def test_decisions_are_interned_so_cache_entries_share_them() -> None:
    set_ = policies()
    a = set_.decide(trace_of((resource(), [span(SAMPLED, 1)])), EvaluationContext())
    b = set_.decide(trace_of((resource(), [span(trace_id_with_randomness(KEPT_AT_10 + 1), 1)])), EvaluationContext())
    assert a is b


def test_a_default_policy_set_evaluates_errors_then_probabilistic() -> None:
    assert policies().names == ["errors", "probabilistic"]
    full = policies(
        critical_services={"services": ["x"]},
        latency={"threshold": "1s"},
        attributes=[{"name": "a", "key": "k", "values": ["v"]}],
    )
    assert full.names == ["errors", "critical_services", "latency", "a", "probabilistic"]
    assert PoliciesConfig().errors.enabled


@dataclass
class FixedVerdict:
    """A policy double with a given verdict for every trace."""

    name: str
    retention_class: str
    verdict: int | None

    def threshold(self, trace: BufferedTrace, context: EvaluationContext) -> int | None:
        return self.verdict


verdicts = st.one_of(
    st.none(), st.sampled_from([0, HALF, TEN_PERCENT_THRESHOLD, MAX_THRESHOLD]), st.integers(0, MAX_THRESHOLD)
)


@given(
    st.lists(st.tuples(st.sampled_from(["error", "critical", "standard"]), verdicts), min_size=1, max_size=6),
    st.integers(0, MAX_THRESHOLD - 1),
)
def test_the_decision_is_the_lowest_applying_threshold_and_the_longest_kept_keeping_policy_first_configured(
    specs: list[tuple[str, int | None]], rand: int
) -> None:
    retention = {"error": 30.0, "critical": 30.0, "standard": 7.0}
    configured = [FixedVerdict(f"p{i}", cls, verdict) for i, (cls, verdict) in enumerate(specs)]
    decision = PolicySet(configured, retention).decide(
        trace_of(trace_id=trace_id_with_randomness(rand)), EvaluationContext()
    )
    applying = [p for p in configured if p.verdict is not None]
    keeping = [p for p in applying if rand >= p.verdict]
    if not keeping:
        assert decision is DROP
        return
    longest = max(retention[p.retention_class] for p in keeping)
    winner = next(p for p in keeping if retention[p.retention_class] == longest)
    assert (decision.keep, decision.policy, decision.retention_class) == (True, winner.name, winner.retention_class)
    assert decision.threshold == min(p.verdict for p in applying)
