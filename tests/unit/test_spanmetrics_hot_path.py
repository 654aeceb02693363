"""The spanmetrics hot path's shortcuts keep the exact behaviour: lookup caches, fast attribute reads, exemplars."""

from __future__ import annotations

import logging
import os

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from agent.component import CreateSettings, Kind
from agent.config.schema import Duration
from agent.config.service import ServiceConfig
from agent.connectors.spanmetrics.config import ExemplarsConfig, SpanMetricsConfig
from agent.connectors.spanmetrics.connector import SpanMetricsConnector
from agent.otlp.probability import is_sampled, threshold_for_percentage
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.workload import to_request


def make(cfg: SpanMetricsConfig) -> tuple[SpanMetricsConnector, SelfMetrics]:
    metrics = SelfMetrics()
    log = logging.getLogger("test.spanmetrics.hot")
    settings = CreateSettings("spanmetrics", Kind.CONNECTOR, log, metrics, ServiceConfig(), {})
    return SpanMetricsConnector(cfg, settings, {}), metrics


def span(name: str, trace_id: bytes = b"\x01" * 16, **attributes: AnyValue) -> Span:
    found = Span(trace_id=trace_id, span_id=b"\x01" * 8, name=name, start_time_unix_nano=0, end_time_unix_nano=10**6)
    found.attributes.extend(KeyValue(key=k, value=v) for k, v in attributes.items())
    return found


def text(value: str) -> AnyValue:
    return AnyValue(string_value=value)


def key(name: str, status: str = "STATUS_CODE_UNSET") -> tuple[str, str, str, str]:
    return ("svc", name, "SPAN_KIND_UNSPECIFIED", status)


def overflowed(metrics: SelfMetrics, family: str) -> float:
    value = metrics.registry.get_sample_value(
        "otel_sidecar_spanmetrics_overflow_total", {"connector": "spanmetrics", "metric": family}
    )
    return value or 0.0


def test_every_span_of_an_overflowing_combination_is_counted_as_overflowed_even_when_repeated() -> None:
    connector, metrics = make(SpanMetricsConfig(cardinality_limit=2))
    connector.consume(to_request({"svc": [span(n) for n in ("a", "b", "c", "c", "c")]}))
    connector.consume(to_request({"svc": [span("c"), span("a")]}))
    connector.collect()
    spans = connector.families.spans
    assert spans.value(key("a")) == 2 and spans.value(key("b")) == 1 and key("c") not in spans.series
    assert [spans.value(k) for k in spans.series if len(k) == 1] == [4.0]
    assert overflowed(metrics, "orchestrator.spans") == 4
    assert overflowed(metrics, "orchestrator.span.duration") == 4


def test_every_step_and_workflow_of_an_overflowing_combination_is_counted_as_overflowed() -> None:
    connector, metrics = make(SpanMetricsConfig(cardinality_limit=1))
    steps = [span("s", **{"step.type": text(t)}) for t in ("a", "b", "b")]
    workflows = [span("w", **{"workflow.name": text(w)}) for w in ("x", "y", "y")]
    connector.consume(to_request({"svc": steps + workflows}))
    connector.collect()
    f = connector.families
    assert f.step_executions.value(("a", "success")) == 1 and ("b", "success") not in f.step_executions.series
    assert f.workflow_executions.value(("x", "success")) == 1
    assert overflowed(metrics, "orchestrator.step.executions") == 2
    assert overflowed(metrics, "orchestrator.workflow.duration") == 2


def test_a_combination_that_overflowed_gets_its_own_series_once_expiry_makes_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1_000 * 10**9]
    monkeypatch.setattr("agent.connectors.spanmetrics.connector.time.time_ns", lambda: clock[0])
    connector, _ = make(SpanMetricsConfig(cardinality_limit=1, metrics_expiration=Duration(60.0)))
    connector.consume(to_request({"svc": [span("old"), span("new")]}))
    assert key("new") not in connector.families.spans.series
    clock[0] += 120 * 10**9
    connector.collect()  # "old" and the overflow series expire
    connector.consume(to_request({"svc": [span("new"), span("new")]}))
    assert connector.families.spans.value(key("new")) == 2
    assert key("old") not in connector.families.spans.series


def test_a_series_that_expired_is_not_updated_through_a_stale_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_000 * 10**9]
    monkeypatch.setattr("agent.connectors.spanmetrics.connector.time.time_ns", lambda: clock[0])
    connector, _ = make(SpanMetricsConfig(metrics_expiration=Duration(60.0)))
    llm = {"gen_ai.request.model": text("gpt-4o"), "gen_ai.usage.input_tokens": AnyValue(int_value=5)}
    batch = [span("a", **{"step.type": text("t"), "workflow.name": text("w"), **llm})]
    connector.consume(to_request({"svc": batch}))
    clock[0] += 120 * 10**9
    connector.collect()
    assert len(connector.families.spans) == 0
    connector.consume(to_request({"svc": batch}))
    f = connector.families
    assert f.spans.value(key("a")) == 1
    assert f.step_executions.value(("t", "success")) == 1
    assert f.workflow_executions.value(("w", "success")) == 1
    assert f.llm_tokens.value(("openai", "gpt-4o", "input")) == 5
    request = connector.collect()
    metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
    assert [p.start_time_unix_nano for p in metrics["orchestrator.llm.requests"].sum.data_points] == [clock[0]]


def test_attributes_of_other_kinds_than_string_are_read_as_before() -> None:
    """A bool is spelled as the exporters spell it (``true``: pass 131 found ``True`` beside their ``true``)."""
    connector, _ = make(SpanMetricsConfig())
    spans = [
        span("int step", **{"step.type": AnyValue(int_value=7)}),
        span("bool workflow", **{"workflow.name": AnyValue(bool_value=True)}),
        span("empty workflow", **{"workflow.name": text("")}),
        span("list step", **{"step.type": AnyValue(array_value={"values": [text("x")]})}),
        span(
            "llm",
            **{
                "gen_ai.request.model": text("gpt-4o"),
                "gen_ai.usage.input_tokens": text("120"),  # stringified by some SDKs
                "gen_ai.usage.output_tokens": AnyValue(double_value=12.0),
                "gen_ai.usage.reasoning.output_tokens": AnyValue(int_value=-3),  # negative: not a count
            },
        ),
    ]
    connector.consume(to_request({"svc": spans}))
    f = connector.families
    assert set(f.step_executions.series) == {("7", "success")}
    assert set(f.workflow_executions.series) == {("true", "success")}
    assert f.llm_tokens.value(("openai", "gpt-4o", "input")) == 120
    assert f.llm_tokens.value(("openai", "gpt-4o", "output")) == 12
    assert ("openai", "gpt-4o", "reasoning") not in f.llm_tokens.series


def test_an_empty_genai_alias_wins_over_the_next_one_as_before() -> None:
    connector, _ = make(SpanMetricsConfig())
    attributes = {"gen_ai.response.model": text(""), "llm.response.model_name": text("ignored")}
    connector.consume(to_request({"svc": [span("llm", **attributes, **{"gen_ai.request.model": text("gpt-4o")})]}))
    assert set(connector.families.llm_requests.series) == {("openai", "gpt-4o", "success")}


@pytest.mark.parametrize("percentage", [0.0, 10.0, 37.5, 100.0])
def test_exemplars_come_from_exactly_the_trace_ids_the_tail_sampler_keeps(percentage: float) -> None:
    connector, _ = make(SpanMetricsConfig(exemplars=ExemplarsConfig(sampled_percentage=percentage)))
    threshold = threshold_for_percentage(percentage)
    trace_ids = [os.urandom(16) for _ in range(200)] + [b"", b"\x01", os.urandom(6), os.urandom(7), b"\xff" * 16]
    for index, trace_id in enumerate(trace_ids):
        connector.consume(to_request({"svc": [span(f"op{index}", trace_id)]}))
        found = connector.families.span_duration.exemplars(key(f"op{index}"))
        assert len(found) == is_sampled(trace_id, threshold), (percentage, trace_id.hex())


def test_each_trace_of_a_batch_is_judged_on_its_own_randomness_for_exemplars() -> None:
    """Spans of several traces in one batch, each with an explicit rv: A's keeps it at 10%, B's does not (pass 144:
    the first trace's verdict was reused for the others)."""
    connector, _ = make(SpanMetricsConfig(exemplars=ExemplarsConfig(sampled_percentage=10.0)))
    kept, dropped = span("a", b"\x0a" * 16), span("b", b"\x0b" * 16)
    kept.trace_state, dropped.trace_state = "ot=rv:ffffffffffffff", "ot=rv:00000000000000"
    connector.consume(to_request({"svc": [kept, dropped, span("a", b"\x0a" * 16)]}))
    assert len(connector.families.span_duration.exemplars(key("a"))) == 1
    assert connector.families.span_duration.exemplars(key("b")) == []


def test_a_threshold_its_trace_id_reaches_exactly_counts_the_span_1_over_p() -> None:
    """R >= T keeps: a randomness equal to th:8 (50%) stands for 2 spans; one below it is an inconsistent sampler."""
    connector, _ = make(SpanMetricsConfig())
    at = span("at", bytes(9) + bytes.fromhex("80000000000000"))
    below = span("below", bytes(9) + bytes.fromhex("7fffffffffffff"))
    at.trace_state = below.trace_state = "ot=th:8"
    connector.consume(to_request({"svc": [at, below]}))
    assert connector.families.spans.value(key("at")) == 2.0
    assert connector.families.spans.value(key("below")) == 1.0


def test_a_span_ending_before_it_starts_lasts_zero_seconds() -> None:
    connector, _ = make(SpanMetricsConfig())
    backwards = span("backwards")
    backwards.start_time_unix_nano, backwards.end_time_unix_nano = 5 * 10**9, 3 * 10**9
    connector.consume(to_request({"svc": [backwards]}))
    snapshot = connector.families.span_duration.snapshot(key("backwards"))
    assert snapshot is not None
    buckets, total, count = snapshot
    assert (total, count, buckets[0]) == (0.0, 1, 1)


def test_failed_spans_without_attributes_count_as_errors_of_their_service() -> None:
    connector, _ = make(SpanMetricsConfig())
    failed = span("boom")
    failed.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR))
    connector.consume(to_request({"svc": [failed, failed]}))
    assert connector.families.errors.value(("_OTHER", "svc")) == 2
    assert connector.families.spans.value(key("boom", "STATUS_CODE_ERROR")) == 2


def test_only_the_keys_of_interest_give_a_span_more_than_red() -> None:
    connector, _ = make(SpanMetricsConfig())
    step = span("s", **{"step.type": text("llm"), "http.method": text("GET")})
    workflow = span("w", **{"workflow.name": text("w"), "llm.token_count.prompt": text("3")})
    plain = span("plain", **{"db.system": text("qdrant")})
    connector.consume(to_request({"svc": [step, workflow, plain]}))
    families = connector.families
    assert [families.spans.value(key(name)) for name in ("s", "w", "plain")] == [1, 1, 1]
    assert families.step_executions.value(("llm", "success")) == 1 and len(families.step_executions) == 1
    assert families.workflow_executions.value(("w", "success")) == 1 and len(families.workflow_executions) == 1
    assert len(families.llm_requests) == 0  # a token count without a model is no LLM call


def failed(name: str, **attributes: AnyValue) -> Span:
    out = span(name, **attributes)
    out.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR))
    return out


def test_an_error_s_component_is_the_first_role_its_span_plays_and_its_type_the_attribute_before_the_event() -> None:
    """Pass 146: the role order (executor, step_executor, provider) and the error type's precedence were unseen."""
    connector, _ = make(SpanMetricsConfig())
    workflow_step = failed("a", **{"workflow.name": text("w"), "step.type": text("llm")})
    workflow_call = failed(
        "b",
        **{"workflow.name": text("w"), "gen_ai.request.model": text("gpt-4o"), "gen_ai.provider.name": text("openai")},
    )
    typed = failed("c", **{"error.type": text("timeout")})
    typed.events.add(name="exception").attributes.add(key="exception.type", value=text("ValueError"))
    not_an_exception = failed("d")
    not_an_exception.events.add(name="log").attributes.add(key="exception.type", value=text("ValueError"))
    connector.consume(to_request({"svc": [workflow_step, workflow_call, typed, not_an_exception]}))
    errors = connector.families.errors
    assert {key: errors.value(key) for key in errors.series} == {
        ("_OTHER", "executor"): 2,
        ("timeout", "svc"): 1,
        ("_OTHER", "svc"): 1,
    }


def test_a_resource_with_an_empty_service_name_is_the_unknown_service() -> None:
    connector, _ = make(SpanMetricsConfig())
    request = to_request({"": [failed("op")]})
    connector.consume(request)
    assert set(connector.families.errors.series) == {("_OTHER", "unknown_service")}
    assert connector.families.spans.value(("unknown_service", "op", "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_ERROR")) == 1
