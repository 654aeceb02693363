"""The spanmetrics connector: exact counts from a known workload, tokens and cost, exemplars, cardinality, expiry."""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import math
import time
import tracemalloc
from typing import Any

import pytest
from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from agent.component import CreateSettings, Kind, Refused, Signal
from agent.config.loader import load_text
from agent.config.schema import ConfigInvalid, Duration
from agent.config.service import ServiceConfig
from agent.connectors.spanmetrics.config import (
    AttributesConfig,
    ExemplarsConfig,
    GenAiAttributesConfig,
    GenAiConfig,
    LabelMaskingConfig,
    ModelPriceConfig,
    PricingConfig,
    SpanMetricsConfig,
)
from agent.connectors.spanmetrics.connector import (
    GENAI_DURATION_BUCKETS,
    GENAI_TOKEN_BUCKETS,
    SpanMetricsConnector,
    label_masker,
)
from agent.connectors.spanmetrics.pricing import PriceTable
from agent.otlp.probability import encode_threshold, is_sampled, threshold_for
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.workload import Workload, attr, to_request

RED = ("service.name", "span.name", "span.kind", "status.code")


class Capture:
    def __init__(self) -> None:
        self.batches: list[ExportMetricsServiceRequest] = []
        self.refuse = False

    def consume(self, batch: Message) -> None:
        if self.refuse:
            raise Refused("full")
        self.batches.append(batch)  # type: ignore[arg-type]


def make(cfg: SpanMetricsConfig | None = None, out: Any = None) -> tuple[SpanMetricsConnector, SelfMetrics]:
    metrics = SelfMetrics()
    settings = CreateSettings(
        "spanmetrics", Kind.CONNECTOR, logging.getLogger("test.spanmetrics"), metrics, ServiceConfig(), {}
    )
    consumers = {Signal.METRICS: out} if out is not None else {}
    return SpanMetricsConnector(cfg or SpanMetricsConfig(), settings, consumers), metrics


def all_spans(requests: list[ExportTraceServiceRequest]) -> list[tuple[str, Span]]:
    found = []
    for request in requests:
        for rs in request.resource_spans:
            service = next(kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name")
            found.extend((service, span) for ss in rs.scope_spans for span in ss.spans)
    return found


def attributes(span: Span) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


def llm_span(trace_id: bytes, span_id: bytes, **attrs: str | int) -> ExportTraceServiceRequest:
    span = Span(
        trace_id=trace_id,
        span_id=span_id,
        name="chat",
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=1_000_000_000,
        end_time_unix_nano=1_500_000_000,
    )
    span.attributes.extend(attr(k, v) for k, v in attrs.items())
    return to_request({"llm-gateway": [span]})


@pytest.fixture(scope="module")
def workload() -> tuple[list[ExportTraceServiceRequest], list[Any]]:
    requests, truths = [], []
    for request, truth in Workload(seed=7, error_rate=0.05).requests(400):
        requests.append(request)
        truths.extend(truth)
    return requests, truths


def test_red_metrics_count_every_span_by_service_name_kind_and_status(workload: Any) -> None:
    requests, _ = workload
    connector, _ = make()
    for request in requests:
        connector.consume(request)
    expected: collections.Counter[tuple[str, ...]] = collections.Counter()
    durations: dict[tuple[str, ...], float] = collections.defaultdict(float)
    for service, span in all_spans(requests):
        key = (service, span.name, Span.SpanKind.Name(span.kind), Status.StatusCode.Name(span.status.code))
        expected[key] += 1
        durations[key] += (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9
    spans = connector.families.spans
    assert {key: spans.value(key) for key in spans.series} == dict(expected)
    for key, count in expected.items():
        snapshot = connector.families.span_duration.snapshot(key)
        assert snapshot is not None
        buckets, total, observed = snapshot
        assert observed == count and sum(buckets) == count
        assert math.isclose(total, durations[key], rel_tol=1e-9)
    assert ("orchestrator", "workflow rag-pipeline", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR") in expected


def test_a_duration_exactly_on_a_bucket_bound_counts_in_that_bucket() -> None:
    """OTLP explicit buckets are (previous bound, bound]: 100 ms is in the 0.1 s bucket, for RED and for the
    families recorded through an Execution alike."""
    connector, _ = make()
    on_bound = Span(name="op", start_time_unix_nano=1_000_000_000, end_time_unix_nano=1_100_000_000)
    on_bound.attributes.append(attr("workflow.name", "wf"))
    connector.consume(to_request({"svc": [on_bound]}))
    red = connector.families.span_duration
    workflow = connector.families.workflow_duration
    for family, key in ((red, ("svc", "op", "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_UNSET")), (workflow, ("wf",))):
        snapshot = family.snapshot(key)
        assert snapshot is not None
        index = family.bounds.index(0.1)
        assert snapshot[0][index] == 1, (key, snapshot[0])


def test_workflow_and_step_executions_are_counted_from_their_attributes(workload: Any) -> None:
    requests, truths = workload
    connector, _ = make()
    for request in requests:
        connector.consume(request)
    workflows: collections.Counter[tuple[str, str]] = collections.Counter(
        (t.workflow, "failure" if t.error else "success") for t in truths
    )
    steps: collections.Counter[tuple[str, str]] = collections.Counter()
    for _, span in all_spans(requests):
        step_type = attributes(span).get("step.type")
        if step_type is not None:
            steps[(step_type, "failure" if span.status.code == Status.STATUS_CODE_ERROR else "success")] += 1
    f = connector.families
    assert {k: f.workflow_executions.value(k) for k in f.workflow_executions.series} == dict(workflows)
    assert {k: f.step_executions.value(k) for k in f.step_executions.series} == dict(steps)
    assert len(f.workflow_duration.series) == len({w for w, _ in workflows})
    assert all(f.workflow_duration.exemplars(k) for k in f.workflow_duration.series)


def test_tokens_and_cost_per_model_equal_the_ground_truth(workload: Any) -> None:
    requests, truths = workload
    connector, _ = make()
    for request in requests:
        connector.consume(request)
    prices = PriceTable.from_config(PricingConfig())
    tokens: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for truth in truths:
        for (provider, model, kind), count in truth.tokens.items():
            tokens[(provider, prices.lookup(model).model, kind)] += count  # type: ignore[union-attr]
    f = connector.families
    assert {k: f.llm_tokens.value(k) for k in f.llm_tokens.series} == {k: float(v) for k, v in tokens.items()}
    for (provider, model), _ in f.llm_cost.series.items():
        price = prices.lookup(model)
        assert price is not None
        expected = (
            tokens[(provider, model, "input")] * price.per_token[0]
            + tokens[(provider, model, "output")] * price.per_token[3]
        )
        assert math.isclose(f.llm_cost.value((provider, model)), expected, rel_tol=1e-9)
    assert len(f.llm_cost.series) == 3
    assert not f.llm_unpriced.series


def test_failed_spans_are_counted_as_errors_by_type_and_component(workload: Any) -> None:
    requests, truths = workload
    connector, _ = make()
    for request in requests:
        connector.consume(request)
    errors = connector.families.errors
    failed_traces = sum(t.error for t in truths)
    assert failed_traces > 0
    # Each failed trace has a failing workflow root, step and child span (LLM call, vector search or tool).
    assert errors.value(("UpstreamError", "executor")) == failed_traces
    assert errors.value(("UpstreamError", "step_executor")) == failed_traces
    children = sum(errors.value(k) for k in errors.series if k[1] not in ("executor", "step_executor"))
    assert children == failed_traces
    assert {k[1] for k in errors.series} <= {"executor", "step_executor", "provider", "vector-store", "tools"}


def test_error_type_falls_back_to_the_exception_event_then_to_other() -> None:
    connector, _ = make()
    with_event = Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="a", status=Status(code=2))
    event = with_event.events.add(name="exception")
    event.attributes.append(attr("exception.type", "TimeoutError"))
    bare = Span(trace_id=b"\x02" * 16, span_id=b"\x02" * 8, name="b", status=Status(code=2))
    connector.consume(to_request({"svc": [with_event, bare]}))
    errors = connector.families.errors
    assert errors.value(("TimeoutError", "svc")) == 1
    assert errors.value(("_OTHER", "svc")) == 1


def test_a_configured_component_attribute_names_the_component_of_an_error() -> None:
    connector, _ = make(SpanMetricsConfig(attributes=AttributesConfig(component=["orchestrator.component"])))
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="a", status=Status(code=2))
    span.attributes.extend([attr("orchestrator.component", "executor"), attr("error.type", "timeout")])
    connector.consume(to_request({"svc": [span]}))
    assert connector.families.errors.value(("timeout", "executor")) == 1


@pytest.mark.parametrize(("key", "value"), [("step.status", "skipped"), ("step_status", "Skipped")])
def test_skipped_steps_are_counted_as_skipped(key: str, value: str) -> None:
    """`step_status = ?status` in a Rust orchestrator's tracing fields records the enum's Debug form."""
    connector, _ = make()
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="step")
    span.attributes.extend([attr("step.type", "transform"), attr(key, value)])
    connector.consume(to_request({"svc": [span]}))
    assert connector.families.step_executions.value(("transform", "skipped")) == 1


def test_a_rust_orchestrators_error_type_field_labels_its_errors() -> None:
    """The seeds' `record_error("timeout", ..)` as a tracing field: without it every error is `_OTHER`, and the
    WorkflowTimeout alert cannot match."""
    connector, _ = make()
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="workflow", status=Status(code=2))
    span.attributes.extend([attr("workflow_name", "rag"), attr("error_type", "timeout")])
    connector.consume(to_request({"svc": [span]}))
    assert connector.families.errors.value(("timeout", "executor")) == 1


def test_a_rust_orchestrators_tracing_fields_count_as_workflows_and_snake_cased_step_types() -> None:
    # #[instrument(fields(workflow_name = %..))] and fields(step_type = ?step.step_type): the Debug form of an enum
    connector, _ = make()
    workflow = Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="workflow.execute:rag")
    workflow.attributes.extend([attr("workflow_id", "abc123"), attr("workflow_name", "rag-pipeline")])
    steps = []
    for index, step_type in enumerate(["Llm", "VectorSearch", "vector_search", "LLMCall", 'Custom("x")']):
        step = Span(trace_id=b"\x01" * 16, span_id=bytes([2 + index]) * 8, name="step.execute")
        step.attributes.extend([attr("step_id", f"s{index}"), attr("step_type", step_type)])
        steps.append(step)
    connector.consume(to_request({"svc": [workflow, *steps]}))
    f = connector.families
    assert {k: f.workflow_executions.value(k) for k in f.workflow_executions.series} == {("rag-pipeline", "success"): 1}
    assert {k: f.step_executions.value(k) for k in f.step_executions.series} == {
        ("llm", "success"): 1,
        ("vector_search", "success"): 2,
        ("llm_call", "success"): 1,
        ('Custom("x")', "success"): 1,
    }


def test_an_instrumentations_own_llm_keys_are_read_when_configured() -> None:
    """An in-house instrumentation naming the model and token counts its own way counts as an LLM call once
    its keys are given, ahead of the conventions' keys."""
    call = llm_span(
        b"\x01" * 16, b"\x02" * 8, **{"acme.llm.model": "gpt-4o", "acme.usage.prompt": 1000, "acme.usage.reply": 100}
    )
    plain, _ = make()
    plain.consume(call)
    assert not plain.families.llm_requests.series
    own = GenAiAttributesConfig(
        request_model=["acme.llm.model"], input_tokens=["acme.usage.prompt"], output_tokens=["acme.usage.reply"]
    )
    connector, _ = make(SpanMetricsConfig(genai=GenAiConfig(attributes=own)))
    connector.consume(call)
    f = connector.families
    assert {labels for labels in f.llm_requests.series} == {("openai", "gpt-4o", "success")}
    tokens = {labels[2]: f.llm_tokens.value(labels) for labels in f.llm_tokens.series}
    assert tokens == {"input": 1000.0, "output": 100.0}
    assert f.llm_cost.value(("openai", "gpt-4o")) == pytest.approx((1000 * 2.5 + 100 * 10.0) / 1e6)


@pytest.mark.parametrize(
    ("model_label", "expected"),
    [
        ("priced", {"claude-3-5-sonnet", "gpt-4o", "my-finetune-2024-01-01"}),
        ("reported", {"claude-3-5-sonnet-20241022", "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
                      "gpt-4o-2024-08-06", "my-finetune-2024-01-01"}),
    ],
)  # fmt: skip
def test_the_model_label_is_the_price_entry_a_call_matched_unless_reported_names_are_asked_for(
    model_label: str, expected: set[str]
) -> None:
    connector, _ = make(SpanMetricsConfig(genai=GenAiConfig(model_label=model_label)))  # type: ignore[arg-type]
    spans = []
    for index, model in enumerate(
        ["claude-3-5-sonnet-20241022", "us.anthropic.claude-3-5-sonnet-20241022-v2:0", "gpt-4o-2024-08-06",
         "my-finetune-2024-01-01"]
    ):  # fmt: skip
        span = Span(trace_id=b"\x01" * 16, span_id=bytes([1 + index]) * 8, name="chat")
        span.attributes.extend([attr("gen_ai.response.model", model), attr("gen_ai.usage.input_tokens", 10)])
        spans.append(span)
    connector.consume(to_request({"svc": spans}))
    f = connector.families
    assert {model for _, model, _ in f.llm_requests.series} == expected
    assert {model for _, model in f.llm_unpriced.series} == {"my-finetune-2024-01-01"}


_ONE_PERCENT = f"th:{encode_threshold(threshold_for(0.01))}"


def _kept_by_any_sampler(index: int) -> bytes:
    """A trace id whose randomness (its last 7 bytes) reaches every threshold: a consistent sampler kept it."""
    return index.to_bytes(9, "big") + b"\xff" * 7


def test_head_sampled_spans_count_with_their_adjusted_count() -> None:
    connector, _ = make()
    spans = []
    for index in range(100):
        span = Span(
            trace_id=_kept_by_any_sampler(index),
            span_id=(index + 1).to_bytes(8, "big"),
            name="op",
            trace_state=f"ot=th:{encode_threshold(threshold_for(0.1))},vendor=x",
            start_time_unix_nano=0,
            end_time_unix_nano=10_000_000,
        )
        span.attributes.extend(
            [
                attr("gen_ai.request.model", "gpt-4o"),
                attr("gen_ai.usage.input_tokens", 100),
                attr("gen_ai.usage.output_tokens", 10),
            ]
        )
        spans.append(span)
    connector.consume(to_request({"svc": spans}))
    f = connector.families
    key = ("svc", "op", "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_UNSET")
    assert f.spans.value(key) == 1000.0  # 100 spans sampled at 10% stand for 1000
    snapshot = f.span_duration.snapshot(key)
    assert snapshot is not None and snapshot[2] == 1000
    assert f.llm_tokens.value(("openai", "gpt-4o", "input")) == 100_000
    assert f.llm_requests.value(("openai", "gpt-4o", "success")) == 1000


def test_fractional_adjusted_counts_are_exact_in_counters_and_rounded_without_bias_in_histograms() -> None:
    connector, _ = make()
    connector._random.seed(3)
    threshold = threshold_for(0.3)  # adjusted count 3.333...
    spans = [
        Span(
            trace_id=_kept_by_any_sampler(index),
            span_id=(index + 1).to_bytes(8, "big"),
            name="op",
            trace_state=f"ot=th:{encode_threshold(threshold)}",
        )
        for index in range(3000)
    ]
    connector.consume(to_request({"svc": spans}))
    key = ("svc", "op", "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_UNSET")
    assert math.isclose(connector.families.spans.value(key), 10_000.0, rel_tol=1e-9)
    snapshot = connector.families.span_duration.snapshot(key)
    assert snapshot is not None
    assert abs(snapshot[2] - 10_000) < 150  # stochastic rounding: 3 or 4 per span, 10 000 on average


@pytest.mark.parametrize(
    ("trace_id", "trace_state", "count"),
    [
        (_kept_by_any_sampler(1), f"ot={_ONE_PERCENT}", 100.0),  # 1%, and the trace id reaches it
        (bytes(15) + b"\x01", f"ot={_ONE_PERCENT}", 1.0),  # a 1% sampler could not have kept this trace id
        (_kept_by_any_sampler(1), f"ot={_ONE_PERCENT};rv:00000000000010", 1.0),  # nor this explicit randomness
        (bytes(15) + b"\x01", f"ot={_ONE_PERCENT};rv:ffffffffffffff", 100.0),  # rv, not the id, is the randomness
        (b"\xff" * 4, f"ot={_ONE_PERCENT}", 1.0),  # a short id is zero-padded, as randomness() reads it (pass 132)
    ],
    ids=["consistent", "id-below-threshold", "rv-below-threshold", "rv-above-threshold", "short-id"],
)
def test_a_threshold_the_spans_randomness_does_not_reach_counts_the_span_once(
    trace_id: bytes, trace_state: str, count: float
) -> None:
    """Pass 130: an error span with th:fd70a4 and an rv below it counted 100 times. The OpenTelemetry tracestate
    rules: stages "should erase the threshold when it is apparently inconsistent" (probability unknown)."""
    connector, _ = make()
    span = Span(trace_id=trace_id, span_id=b"\x01" * 8, name="op", trace_state=trace_state)
    connector.consume(to_request({"svc": [span]}))
    assert connector.families.spans.value(("svc", "op", "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_UNSET")) == count


def test_exemplars_come_only_from_error_spans_and_trace_ids_the_tail_sampler_keeps(workload: Any) -> None:
    requests, _ = workload
    connector, _ = make()
    for request in requests:
        connector.consume(request)
    failed_spans = {
        (s.trace_id, s.span_id) for _, s in all_spans(requests) if s.status.code == Status.STATUS_CODE_ERROR
    }
    threshold = threshold_for(0.1)
    seen = []
    f = connector.families
    for family in (f.span_duration, f.workflow_duration, f.step_duration, f.llm_duration):
        for key in family.series:
            seen.extend(family.exemplars(key))
    assert seen
    for trace_id, span_id, _, _ in seen:
        assert (trace_id, span_id) in failed_spans or is_sampled(trace_id, threshold)
    assert any((t, s) in failed_spans for t, s, _, _ in seen)
    assert any(is_sampled(t, threshold) for t, _, _, _ in seen)


def test_error_span_exemplars_can_be_turned_off_and_exemplars_altogether() -> None:
    unsampled = next(
        i.to_bytes(16, "big") for i in range(1, 10_000) if not is_sampled(i.to_bytes(16, "big"), threshold_for(0.1))
    )
    failed = Span(trace_id=unsampled, span_id=b"\x01" * 8, name="a", status=Status(code=2), end_time_unix_nano=5)
    for cfg, expected in (
        (ExemplarsConfig(), 1),
        (ExemplarsConfig(error_spans=False), 0),
        (ExemplarsConfig(enabled=False), 0),
    ):
        connector, _ = make(SpanMetricsConfig(exemplars=cfg))
        connector.consume(to_request({"svc": [failed]}))
        key = ("svc", "a", "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_ERROR")
        assert len(connector.families.span_duration.exemplars(key)) == expected


@pytest.mark.parametrize(
    ("id_randomness", "trace_state", "expected"),
    [
        (1, "ot=rv:ffffffffffffff", 1),  # the explicit randomness keeps the trace, so an exemplar may come from it
        ((1 << 56) - 1, "ot=rv:00000000000001", 0),  # and drops it, whatever the trace id says
        ((1 << 56) - 1, "", 1),
    ],
)
def test_exemplars_follow_the_explicit_randomness_the_tail_sampler_decides_by(
    id_randomness: int, trace_state: str, expected: int
) -> None:
    connector, _ = make()
    span = Span(
        trace_id=id_randomness.to_bytes(16, "big"), span_id=b"\x01" * 8, name="a", trace_state=trace_state,
        end_time_unix_nano=5,
    )  # fmt: skip
    connector.consume(to_request({"svc": [span]}))
    key = ("svc", "a", "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_UNSET")
    assert len(connector.families.span_duration.exemplars(key)) == expected


def test_the_connector_neither_mutates_nor_keeps_the_batch(workload: Any) -> None:
    requests, _ = workload
    connector, _ = make()
    batch = ExportTraceServiceRequest()
    batch.CopyFrom(requests[0])
    before = batch.SerializeToString(deterministic=True)
    connector.consume(batch)
    assert batch.SerializeToString(deterministic=True) == before
    first = connector.collect().SerializeToString(deterministic=True)
    # The receiver's other pipelines may now change or free the batch: the connector's state must not move.
    batch.resource_spans[0].scope_spans[0].spans[0].name = "changed"
    batch.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\xff" * 16
    del batch.resource_spans[:]
    assert _strip_times(connector.collect()) == _strip_times(ExportMetricsServiceRequest.FromString(first))


def _strip_times(request: ExportMetricsServiceRequest) -> bytes:
    copy = ExportMetricsServiceRequest()
    copy.CopyFrom(request)
    for rm in copy.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                for point in getattr(metric, kind).data_points:
                    point.time_unix_nano = 0
    return copy.SerializeToString(deterministic=True)


def test_a_cardinality_flood_goes_to_one_overflow_series_is_counted_and_memory_stays_flat() -> None:
    limit = 50
    connector, metrics = make(SpanMetricsConfig(cardinality_limit=limit))

    def flood(start: int, count: int) -> None:
        spans = [
            Span(trace_id=i.to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"), name=f"GET /users/{i}")
            for i in range(start, start + count)
        ]
        connector.consume(to_request({"svc": spans}))

    flood(1, 5000)
    connector.collect()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for round_ in range(1, 5):
        flood(round_ * 10_000, 5000)
        connector.collect()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))

    spans = connector.families.spans
    assert len(spans) == limit + 1
    overflow = [key for key in spans.series if len(key) == 1]
    assert len(overflow) == 1
    assert spans.value(overflow[0]) == 25_000 - limit
    assert len(connector.families.span_duration) == limit + 1
    overflowed = metrics.registry.get_sample_value(
        "otel_sidecar_spanmetrics_overflow_total", {"connector": "spanmetrics", "metric": "orchestrator.spans"}
    )
    assert overflowed == 25_000 - limit
    series = metrics.registry.get_sample_value(
        "otel_sidecar_spanmetrics_series", {"connector": "spanmetrics", "metric": "orchestrator.spans"}
    )
    assert series == limit + 1
    assert growth < 256 * 1024, f"connector memory grew by {growth} bytes under 20 000 new span names"
    request = connector.collect()
    metric = next(m for m in request.resource_metrics[0].scope_metrics[0].metrics if m.name == "orchestrator.spans")
    overflow_points = [p for p in metric.sum.data_points if any(a.key == "otel.metric.overflow" for a in p.attributes)]
    assert len(overflow_points) == 1
    assert [(a.key, a.value.string_value) for a in overflow_points[0].attributes] == [("otel.metric.overflow", "true")]


def test_idle_series_expire_and_come_back_from_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_000 * 10**9]
    monkeypatch.setattr("agent.connectors.spanmetrics.connector.time.time_ns", lambda: clock[0])
    connector, _ = make(SpanMetricsConfig(metrics_expiration=Duration(60.0)))
    connector.consume(to_request({"svc": [Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="old")]}))
    clock[0] += 30 * 10**9
    connector.consume(to_request({"svc": [Span(trace_id=b"\x02" * 16, span_id=b"\x02" * 8, name="new")]}))
    clock[0] += 45 * 10**9
    connector.collect()
    names = {key[1] for key in connector.families.spans.series}
    assert names == {"new"}
    connector.consume(to_request({"svc": [Span(trace_id=b"\x03" * 16, span_id=b"\x03" * 8, name="old")]}))
    request = connector.collect()
    metric = next(m for m in request.resource_metrics[0].scope_metrics[0].metrics if m.name == "orchestrator.spans")
    old = next(p for p in metric.sum.data_points if any(a.value.string_value == "old" for a in p.attributes))
    assert old.as_double == 1.0 and old.start_time_unix_nano == clock[0]


def test_flushes_periodically_and_once_more_at_shutdown_as_cumulative_otlp() -> None:
    capture = Capture()
    connector, metrics = make(SpanMetricsConfig(metrics_flush_interval=Duration(0.05)), capture)

    async def run() -> None:
        await connector.start()
        connector.consume(to_request({"svc": [Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="a")]}))
        deadline = time.monotonic() + 5
        while not capture.batches and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        connector.consume(to_request({"svc": [Span(trace_id=b"\x02" * 16, span_id=b"\x02" * 8, name="a")]}))
        await connector.shutdown(time.monotonic() + 1)
        await connector.shutdown(time.monotonic() + 1)  # idempotent

    asyncio.run(run())
    assert len(capture.batches) >= 2
    last = capture.batches[-1].resource_metrics[0]
    assert not last.resource.attributes and not last.scope_metrics[0].scope.name
    spans = next(m for m in last.scope_metrics[0].metrics if m.name == "orchestrator.spans")
    assert spans.sum.is_monotonic and spans.sum.aggregation_temporality == 2  # CUMULATIVE
    assert spans.unit == "{span}"
    assert [p.as_double for p in spans.sum.data_points] == [2.0]
    duration = next(m for m in last.scope_metrics[0].metrics if m.name == "orchestrator.span.duration")
    assert duration.unit == "s" and duration.histogram.aggregation_temporality == 2
    assert (
        metrics.registry.get_sample_value("otel_sidecar_spanmetrics_spans_total", {"connector": "spanmetrics"}) == 2.0
    )


def test_a_refused_flush_is_counted_and_the_next_flush_carries_everything() -> None:
    capture = Capture()
    capture.refuse = True
    connector, metrics = make(out=capture)
    connector.consume(to_request({"svc": [Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="a")]}))
    connector.flush()
    assert (
        metrics.registry.get_sample_value(
            "otel_sidecar_spanmetrics_flushes_total", {"connector": "spanmetrics", "outcome": "refused"}
        )
        == 1.0
    )
    capture.refuse = False
    connector.flush()
    spans = next(m for m in capture.batches[0].resource_metrics[0].scope_metrics[0].metrics if m.name.endswith("spans"))
    assert spans.sum.data_points[0].as_double == 1.0


def test_llm_calls_are_recognised_across_conventions_and_agent_spans_are_not() -> None:
    connector, _ = make()
    requests = [
        llm_span(
            b"\x01" * 16,
            b"\x01" * 8,
            **{
                "openinference.span.kind": "LLM",
                "llm.provider": "anthropic",
                "llm.model_name": "claude-3-5-sonnet",
                "llm.token_count.prompt": 1000,
                "llm.token_count.prompt_details.cache_read": 800,
                "llm.token_count.completion": 50,
            },
        ),
        llm_span(
            b"\x02" * 16,
            b"\x02" * 8,
            **{
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.prompt_tokens": 10,
                "gen_ai.usage.completion_tokens": 5,
            },
        ),
        llm_span(
            b"\x03" * 16,
            b"\x03" * 8,
            **{
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 999,
            },
        ),
        llm_span(b"\x04" * 16, b"\x04" * 8, **{"openinference.span.kind": "CHAIN", "llm.model_name": "gpt-4o"}),
    ]
    for request in requests:
        connector.consume(request)
    f = connector.families
    assert f.llm_requests.value(("anthropic", "claude-3-5-sonnet", "success")) == 1
    assert f.llm_tokens.value(("anthropic", "claude-3-5-sonnet", "input")) == 200
    assert f.llm_tokens.value(("anthropic", "claude-3-5-sonnet", "cache_read")) == 800
    assert f.llm_requests.value(("openai", "gpt-4o", "success")) == 1  # the price entry of gpt-4o-2024-08-06
    assert sum(f.llm_requests.value(k) for k in f.llm_requests.series) == 2
    claude = (200 * 3.0 + 800 * 0.3 + 50 * 15.0) / 1e6
    assert math.isclose(f.llm_cost.value(("anthropic", "claude-3-5-sonnet")), claude, rel_tol=1e-9)
    assert math.isclose(f.llm_cost.value(("openai", "gpt-4o")), (10 * 2.5 + 5 * 10.0) / 1e6, rel_tol=1e-9)


def test_an_unknown_model_is_counted_as_unpriced_logged_once_and_never_given_a_cost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connector, _ = make()
    with caplog.at_level(logging.WARNING, logger="test.spanmetrics"):
        for index in range(3):
            connector.consume(
                llm_span(
                    bytes([index + 1]) * 16, b"\x01" * 8,
                    **{"gen_ai.provider.name": "acme", "gen_ai.request.model": "acme-llm",
                       "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 1},
                )
            )  # fmt: skip
    f = connector.families
    assert f.llm_unpriced.value(("acme", "acme-llm")) == 3
    assert ("acme", "acme-llm") not in f.llm_cost.series
    assert f.llm_tokens.value(("acme", "acme-llm", "input")) == 30
    warnings = [r for r in caplog.records if "has no price" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].model == "acme-llm"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("attributes", "provider"),
    [
        ({"gen_ai.system": "Langchain"}, "openai"),  # OpenLLMetry's LangChain spans name the framework
        ({"gen_ai.system": "crewai"}, "openai"),
        ({}, "openai"),  # only a model attribute
        ({"gen_ai.system": "azure_openai"}, "azure.ai.openai"),  # a vendor named is kept
        ({"gen_ai.system": "Langchain", "gen_ai.request.model": "acme-llm"}, "langchain"),  # unpriced: as given
    ],
)
def test_the_provider_label_is_the_models_vendor_when_the_span_names_none_or_a_framework(
    attributes: dict[str, str], provider: str
) -> None:
    connector, _ = make()
    connector.consume(llm_span(b"\x01" * 16, b"\x01" * 8, **{"gen_ai.request.model": "gpt-4o", **attributes}))
    (labels,) = connector.families.llm_requests.series
    assert labels[0] == provider


def test_a_successful_llm_call_that_reports_no_usage_is_counted_as_such_not_only_costed_zero() -> None:
    """An OpenAI stream without include_usage reports no tokens: its cost is not known, and must not pass for $0."""
    connector, _ = make()
    model = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}
    connector.consume(llm_span(b"\x01" * 16, b"\x01" * 8, **model))  # no usage
    connector.consume(llm_span(b"\x02" * 16, b"\x01" * 8, **model, **{"gen_ai.usage.output_tokens": 0}))  # zero
    failed = llm_span(b"\x03" * 16, b"\x01" * 8, **model)
    failed.resource_spans[0].scope_spans[0].spans[0].status.code = Status.STATUS_CODE_ERROR  # errors report none
    connector.consume(failed)
    f = connector.families
    assert f.llm_without_usage.value(("openai", "gpt-4o")) == 1
    assert f.llm_requests.value(("openai", "gpt-4o", "success")) == 2


@pytest.mark.parametrize("count", ["inf", "1e999", "Infinity", "nan", math.inf])
def test_a_token_count_that_is_not_a_finite_number_is_ignored_not_made_infinite(count: str | float) -> None:
    """One span saying its usage is "inf" must not make a cumulative counter (and its rate) infinite for good."""
    connector, _ = make()
    connector.consume(
        llm_span(
            b"\x01" * 16, b"\x01" * 8,
            **{"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
               "gen_ai.usage.input_tokens": count, "gen_ai.usage.output_tokens": 10},  # type: ignore[dict-item]
        )
    )  # fmt: skip
    f = connector.families
    assert f.llm_requests.value(("openai", "gpt-4o", "success")) == 1
    assert f.llm_tokens.value(("openai", "gpt-4o", "output")) == 10
    assert f.llm_tokens.value(("openai", "gpt-4o", "input")) == 0
    assert math.isfinite(f.llm_cost.value(("openai", "gpt-4o")))


@pytest.mark.parametrize("count", [1e308, "1e308", 2.0**60])
def test_token_counts_no_float_can_sum_are_ignored_not_made_infinite(count: str | float) -> None:
    """Finite but absurd counts: two spans of 1e308 tokens each would make the counter +Inf for good."""
    connector, _ = make()
    for index in range(2):
        connector.consume(
            llm_span(
                bytes([index + 1]) * 16, b"\x01" * 8,
                **{"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                   "gen_ai.usage.input_tokens": count, "gen_ai.usage.output_tokens": 10},  # type: ignore[dict-item]
            )
        )  # fmt: skip
    f = connector.families
    assert f.llm_tokens.value(("openai", "gpt-4o", "output")) == 20
    assert f.llm_tokens.value(("openai", "gpt-4o", "input")) == 0
    assert math.isfinite(f.llm_cost.value(("openai", "gpt-4o")))


def test_configured_prices_and_conventions_are_used() -> None:
    cfg = SpanMetricsConfig(
        pricing=PricingConfig(models={"acme-llm": ModelPriceConfig(input=1.0, output=2.0, cache_read=0.5)}),
        genai=GenAiConfig(cache_tokens_in_input={"acme": False}),
    )
    connector, _ = make(cfg)
    connector.consume(
        llm_span(b"\x01" * 16, b"\x01" * 8, **{
            "gen_ai.provider.name": "acme", "gen_ai.request.model": "acme-llm-2026-01-01",
            "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.cache_read.input_tokens": 400,
            "gen_ai.usage.output_tokens": 100,
        })
    )  # fmt: skip
    f = connector.families
    assert f.llm_tokens.value(("acme", "acme-llm", "input")) == 1000  # not reduced: exclusive provider
    expected = (1000 * 1.0 + 400 * 0.5 + 100 * 2.0) / 1e6
    assert math.isclose(f.llm_cost.value(("acme", "acme-llm")), expected, rel_tol=1e-9)


def test_the_opentelemetry_genai_metrics_use_the_spec_buckets_when_enabled() -> None:
    connector, _ = make(SpanMetricsConfig(genai=GenAiConfig(semconv_metrics=True)))
    connector.consume(
        llm_span(b"\x01" * 16, b"\x01" * 8, **{
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 100, "gen_ai.usage.cache_read.input_tokens": 60,
            "gen_ai.usage.output_tokens": 30, "gen_ai.usage.reasoning.output_tokens": 10,
        })
    )  # fmt: skip
    f = connector.families
    assert f.genai_duration is not None and f.genai_tokens is not None
    assert f.genai_duration.bounds[0] == 0.01 and math.isclose(f.genai_duration.bounds[-1], 81.92)
    assert f.genai_tokens.bounds == GENAI_TOKEN_BUCKETS and GENAI_TOKEN_BUCKETS[-1] == 67108864
    assert len(GENAI_DURATION_BUCKETS) == 14
    base = ("chat", "openai", "gpt-4o", "")
    assert f.genai_tokens.snapshot((*base, "input"))[1] == 100  # type: ignore[index]  # every input token
    assert f.genai_tokens.snapshot((*base, "output"))[1] == 30  # type: ignore[index]  # output incl. reasoning
    assert make()[0].families.genai_duration is None


def test_the_genai_token_histogram_records_only_the_token_types_a_call_reported() -> None:
    """An embedding call reports input tokens only: an output observation of 0 would pull the distribution to
    zero and count a call that produced no output."""
    connector, _ = make(SpanMetricsConfig(genai=GenAiConfig(semconv_metrics=True)))
    connector.consume(
        llm_span(b"\x01" * 16, b"\x01" * 8, **{
            "gen_ai.operation.name": "embeddings", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "text-embedding-3-small", "gen_ai.usage.input_tokens": 50,
        })
    )  # fmt: skip
    f = connector.families
    assert f.genai_tokens is not None
    assert {key[-1] for key in f.genai_tokens.series} == {"input"}


def anthropic_call_with_cache(sdk: str | None) -> ExportTraceServiceRequest:
    request = llm_span(b"\x02" * 16, b"\x02" * 8, **{
        "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-sonnet-4-20250514",
        "gen_ai.usage.input_tokens": 3000, "gen_ai.usage.cache_read.input_tokens": 2000,
        "gen_ai.usage.cache_creation.input_tokens": 0, "gen_ai.usage.output_tokens": 500,
    })  # fmt: skip
    if sdk is not None:
        request.resource_spans[0].resource.attributes.append(attr("telemetry.sdk.name", sdk))
    return request


@pytest.mark.parametrize(("sdk", "uncached_input"), [("openlit", 3000), ("opentelemetry", 1000), (None, 1000)])
def test_openlits_anthropic_input_tokens_leave_the_cache_out_unlike_the_conventions(
    sdk: str | None, uncached_input: int
) -> None:
    """OpenLIT copies Anthropic's own input_tokens (cache reads and writes not included) and marks the resource
    it creates telemetry.sdk.name=openlit; the GenAI conventions (and OpenLLMetry) include the cache."""
    connector, _ = make()
    connector.consume(anthropic_call_with_cache(sdk))
    f = connector.families
    model = "claude-sonnet-4"
    assert f.llm_tokens.value(("anthropic", model, "input")) == uncached_input
    assert f.llm_tokens.value(("anthropic", model, "cache_read")) == 2000


def vercel_call(provider: str, model: str, input_tokens: int, **usage: int) -> ExportTraceServiceRequest:
    """A Vercel AI SDK ``doStream`` span as SDK 5 writes it, with its ``ai.usage.*`` counts."""
    return llm_span(b"\x05" * 16, b"\x05" * 8, **{
        "ai.operationId": "ai.streamText.doStream", "gen_ai.system": provider, "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": input_tokens, "gen_ai.usage.output_tokens": 500,
        "ai.usage.totalTokens": input_tokens + 500, **usage,
    })  # fmt: skip


@pytest.mark.parametrize(
    ("provider", "usage", "uncached_input"),
    [
        # SDK 5 copies Anthropic's own input_tokens: the 2000 cache reads are outside the 3000.
        ("anthropic.messages", {"ai.usage.cachedInputTokens": 2000}, 3000),
        # SDK 5 with OpenAI copies prompt_tokens, which hold the cached tokens (the conventions' reading).
        ("openai.chat", {"ai.usage.cachedInputTokens": 2000}, 1000),
        # SDK 6 reports an inclusive input count beside its inputTokenDetails (and may keep the SDK 5 name too).
        (
            "anthropic.messages",
            {"ai.usage.inputTokenDetails.cacheReadTokens": 2000, "ai.usage.cachedInputTokens": 2000},
            1000,
        ),
    ],
)
def test_vercel_ai_sdk_5s_anthropic_input_count_leaves_the_cache_out(
    provider: str, usage: dict[str, int], uncached_input: int
) -> None:
    """Its total is input + output, so it agrees with the inclusive reading and cannot settle it: the attribute
    names do (pass 81)."""
    connector, _ = make()
    model = "claude-sonnet-4" if provider.startswith("anthropic") else "gpt-4o"
    connector.consume(vercel_call(provider, f"{model}-20250514" if "claude" in model else model, 3000, **usage))
    tokens = connector.families.llm_tokens
    vendor = "anthropic" if provider.startswith("anthropic") else "openai"
    assert tokens.value((vendor, model, "input")) == uncached_input
    assert tokens.value((vendor, model, "cache_read")) == 2000


def test_openlits_gemini_output_count_leaves_the_thoughts_out() -> None:
    connector, _ = make()
    request = llm_span(b"\x04" * 16, b"\x04" * 8, **{
        "gen_ai.system": "gemini", "gen_ai.request.model": "gemini-2.5-flash", "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 500, "gen_ai.usage.reasoning_tokens": 300,
    })  # fmt: skip
    request.resource_spans[0].resource.attributes.append(attr("telemetry.sdk.name", "openlit"))
    connector.consume(request)
    tokens = connector.families.llm_tokens
    assert tokens.value(("gcp.gemini", "gemini-2.5-flash", "output")) == 500  # candidates, without the thoughts
    assert tokens.value(("gcp.gemini", "gemini-2.5-flash", "reasoning")) == 300


def test_google_adks_thoughts_are_read_and_left_out_of_its_output_count() -> None:
    """ADK 1.x: output = candidates_token_count, thoughts under an experimental key; output >= thoughts would
    otherwise pass for an output holding them, and 200 output tokens would be taken for reasoning."""
    connector, _ = make()
    connector.consume(
        llm_span(b"\x05" * 16, b"\x05" * 8, **{
            "gen_ai.system": "gcp.vertex.agent", "gen_ai.request.model": "gemini-2.5-pro",
            "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 500,
            "gen_ai.usage.experimental.reasoning_tokens": 200,
        })
    )  # fmt: skip
    tokens = connector.families.llm_tokens
    assert tokens.value(("gcp.vertex.agent", "gemini-2.5-pro", "output")) == 500
    assert tokens.value(("gcp.vertex.agent", "gemini-2.5-pro", "reasoning")) == 200


def test_strands_cache_writes_are_counted_and_priced() -> None:
    connector, _ = make()
    connector.consume(
        llm_span(b"\x06" * 16, b"\x06" * 8, **{
            "gen_ai.system": "strands-agents", "gen_ai.request.model": "us.anthropic.claude-sonnet-4-20250514-v1:0",
            "gen_ai.usage.input_tokens": 4299, "gen_ai.usage.cache_read_input_tokens": 35574,
            "gen_ai.usage.cache_write_input_tokens": 17787, "gen_ai.usage.output_tokens": 631,
            "gen_ai.usage.total_tokens": 58291,
        })
    )  # fmt: skip
    tokens = connector.families.llm_tokens
    counted = sum(series.value for key, series in tokens.series.items() if key[0] == "strands-agents")
    assert tokens.value(("strands-agents", "claude-sonnet-4", "cache_write")) == 17787
    assert counted == 58291


def test_pydantic_ais_cache_and_reasoning_details_are_counted_and_priced() -> None:
    """Pydantic AI >= 1.0 (InstrumentedModel) puts its cache and reasoning counts under gen_ai.usage.details.*
    (RequestUsage.opentelemetry_attributes); its OpenAI input count includes the cached tokens."""
    connector, _ = make()
    connector.consume(
        llm_span(b"\x07" * 16, b"\x07" * 8, **{
            "gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 10000,
            "gen_ai.usage.output_tokens": 500, "gen_ai.usage.details.cache_read_tokens": 8000,
            "gen_ai.usage.details.reasoning_tokens": 100,
        })
    )  # fmt: skip
    f = connector.families
    assert f.llm_tokens.value(("openai", "gpt-4o", "input")) == 2000
    assert f.llm_tokens.value(("openai", "gpt-4o", "cache_read")) == 8000
    assert f.llm_tokens.value(("openai", "gpt-4o", "output")) == 400
    assert f.llm_tokens.value(("openai", "gpt-4o", "reasoning")) == 100
    assert f.llm_cost.value(("openai", "gpt-4o")) == pytest.approx((2000 * 2.5 + 8000 * 1.25 + 500 * 10.0) / 1e6)


@pytest.mark.parametrize(
    ("input_details", "output_details"),
    [
        ("{'audio': 0, 'cache_read': 8000, 'cache_creation': 1000}", "{'audio': 0, 'reasoning': 100}"),  # Python
        ('{"cache_read":8000,"cache_creation":1000}', '{"reasoning":100}'),  # JavaScript (JSON.stringify)
    ],
    ids=["python-repr", "json"],
)
def test_langsmiths_token_details_are_read_for_cache_and_reasoning(input_details: str, output_details: str) -> None:
    """LangSmith's OTel export writes LangChain's input/output_token_details as one serialized string each
    (str(dict) in Python, JSON in JavaScript), with the cache inside input_tokens."""
    connector, _ = make()
    connector.consume(
        llm_span(b"\x08" * 16, b"\x08" * 8, **{
            "langsmith.span.kind": "llm", "gen_ai.operation.name": "chat", "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 10000, "gen_ai.usage.output_tokens": 500,
            "gen_ai.usage.total_tokens": 10500, "gen_ai.usage.input_token_details": input_details,
            "gen_ai.usage.output_token_details": output_details,
        })
    )  # fmt: skip
    f = connector.families
    assert f.llm_tokens.value(("openai", "gpt-4o", "input")) == 1000
    assert f.llm_tokens.value(("openai", "gpt-4o", "cache_read")) == 8000
    assert f.llm_tokens.value(("openai", "gpt-4o", "cache_write")) == 1000
    assert f.llm_tokens.value(("openai", "gpt-4o", "output")) == 400
    assert f.llm_tokens.value(("openai", "gpt-4o", "reasoning")) == 100


def test_the_configured_cache_convention_wins_over_the_instrumentations() -> None:
    connector, _ = make(SpanMetricsConfig(genai=GenAiConfig(cache_tokens_in_input={"anthropic": True})))
    connector.consume(anthropic_call_with_cache("openlit"))
    assert connector.families.llm_tokens.value(("anthropic", "claude-sonnet-4", "input")) == 1000


def config_text(sampler: str, connector: str = "{}", traces_exporters: str = "[file]") -> str:
    return f"""
receivers: {{otlp: {{}}}}
processors: {{tail_sampling: {sampler}}}
connectors: {{spanmetrics: {connector}}}
exporters: {{file: {{path: /tmp/x}}, prometheus: {{}}}}
service:
  pipelines:
    traces: {{receivers: [otlp], processors: [tail_sampling], exporters: {traces_exporters}}}
    traces/spanmetrics: {{receivers: [otlp], exporters: [spanmetrics]}}
    metrics: {{receivers: [spanmetrics], exporters: [prometheus]}}
"""


def test_the_exemplar_percentage_must_match_the_tail_samplers_probabilistic_percentage() -> None:
    load_text(config_text("{policies: {probabilistic: {percentage: 10}}}"))
    load_text(config_text("{policies: {probabilistic: {percentage: 25}}}", "{exemplars: {sampled_percentage: 25}}"))
    load_text(config_text("{policies: {probabilistic: {percentage: 25}}}", "{exemplars: {enabled: false}}"))
    with pytest.raises(ConfigInvalid) as caught:
        load_text(config_text("{policies: {probabilistic: {percentage: 25}}}"))
    assert "connectors.spanmetrics.exemplars.sampled_percentage: is 10 but processors.tail_sampling keeps 25%" in str(
        caught.value
    )
    with pytest.raises(ConfigInvalid, match="keeps 0%"):
        load_text(config_text("{policies: {probabilistic: {enabled: false}}}"))


def test_error_exemplars_need_the_tail_samplers_errors_policy() -> None:
    with pytest.raises(ConfigInvalid, match=r"exemplars\.error_spans: must be false"):
        load_text(config_text("{policies: {errors: {enabled: false}}}"))
    load_text(config_text("{policies: {errors: {enabled: false}}}", "{exemplars: {error_spans: false}}"))


def test_error_exemplars_need_the_tail_sampler_to_keep_late_failures() -> None:
    """A failure arriving after its trace was dropped is dropped too with keep_late_failures off: an exemplar
    taken from it would point to a trace nobody kept (an acceptance audit of issue 4 scraped one)."""
    late_dropped = "{policies: {errors: {keep_late_failures: false}}}"
    with pytest.raises(ConfigInvalid, match=r"exemplars\.error_spans: must be false: .*keep_late_failures is false"):
        load_text(config_text(late_dropped))
    load_text(config_text(late_dropped, "{exemplars: {error_spans: false}}"))
    load_text(config_text("{policies: {errors: {keep_late_failures: true}}}"))


def test_the_connector_may_not_be_fed_by_a_sampled_pipeline() -> None:
    with pytest.raises(ConfigInvalid, match="span metrics must see every span"):
        load_text(config_text("{}", traces_exporters="[file, spanmetrics]"))


def test_bad_connector_settings_are_reported_with_their_paths() -> None:
    with pytest.raises(ConfigInvalid) as caught:
        load_text(
            config_text("{}", "{buckets: {step_duration: [1, 0.5], span_duration: [1, .inf]}, cardinality_limit: 0}")
        )
    message = str(caught.value)
    assert "connectors.spanmetrics.cardinality_limit: must be positive" in message
    assert "connectors.spanmetrics.buckets.span_duration[1]: must be a finite number, got inf" in message
    with pytest.raises(ConfigInvalid, match=r"buckets\.step_duration: bucket bounds must be strictly increasing"):
        load_text(config_text("{}", "{buckets: {step_duration: [1, 0.5]}}"))
    with pytest.raises(
        ConfigInvalid, match=r"buckets\.llm_request_duration: bucket bounds must be strictly increasing"
    ):
        load_text(
            config_text("{}", "{buckets: {llm_request_duration: [0.1, 0.1, 1]}}")
        )  # a bound twice: one bucket empty
    with pytest.raises(ConfigInvalid) as caught:
        load_text(config_text("{}", "{namespace: Orch-1, metrics_flush_interval: 0s}"))
    message = str(caught.value)
    assert "connectors.spanmetrics.namespace: must be lower_snake_case" in message
    assert "connectors.spanmetrics.metrics_flush_interval: must be longer than 0s" in message


def test_red_labels_are_the_collectors_span_metrics_dimensions() -> None:
    connector, _ = make()
    assert connector.families.spans.label_keys == RED


def test_credentials_in_span_names_and_error_labels_never_reach_a_label() -> None:
    """Span metrics are computed before redaction: the connector masks credentials in the text it labels with."""
    connector, _ = make()
    key = "AIzaSyA-1234567890abcdefghijklmnopqrstu"
    failing = Span(
        trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name=f"POST /v1/models:generate?key={key}", status=Status(code=2)
    )
    failing.attributes.extend([attr("error.type", "AuthError for Bearer eyJhbGciOiJIUzI1NiJ9abcdefgh")])
    workflow = Span(trace_id=b"\x02" * 16, span_id=b"\x02" * 8, name="wf")
    workflow.attributes.extend([attr("workflow.name", "sync postgres://app:Hunter2@db/app")])
    connector.consume(to_request({"svc": [failing, workflow]}))
    f = connector.families
    labels = [*f.spans.series, *f.errors.series, *f.workflow_executions.series]
    text = repr(labels)
    assert key not in text and "Hunter2" not in text and "eyJhbGciOiJIUzI1NiJ9abcdefgh" not in text
    assert (
        "svc",
        "POST /v1/models:generate?key=[REDACTED]",
        "SPAN_KIND_UNSPECIFIED",
        "STATUS_CODE_ERROR",
    ) in f.spans.series


def test_labels_are_masked_by_the_configured_value_patterns_too() -> None:
    """The docs say the labels are masked "by the same rules" as the redaction processor's: an operator's own
    shapes (an employee id) must not reach the scrape endpoint through a span name either."""
    masking = LabelMaskingConfig(value_patterns={"employee_id": r"\bEMP-\d{6}\b"})
    connector, _ = make(SpanMetricsConfig(label_masking=masking))
    span = Span(trace_id=b"\x04" * 16, span_id=b"\x04" * 8, name="GET /employees/EMP-123456?api_key=abc123def")
    connector.consume(to_request({"svc": [span]}))
    ((_, name, _, _),) = connector.families.spans.series
    assert name == "GET /employees/[REDACTED]?api_key=[REDACTED]"
    unmasked, _ = make(SpanMetricsConfig(label_masking=LabelMaskingConfig(mask_credentials=False)))
    unmasked.consume(to_request({"svc": [span]}))
    ((_, name, _, _),) = unmasked.families.spans.series
    assert name == span.name
    # A reload adding a shape (most likely because a value leaked) must not go on serving the leaked series.
    reloaded, _ = make(SpanMetricsConfig(label_masking=masking))
    reloaded.take_over_from(unmasked)
    assert not reloaded.took_over and len(reloaded.families.spans) == 0


def test_a_masked_label_is_masked_once_not_on_every_span(monkeypatch: pytest.MonkeyPatch) -> None:
    """Masking a text that holds a credential costs about 100 µs, and the error type of each failed span (or the
    model of each LLM span with semconv metrics) is masked per span (pass 108)."""
    from agent.processors.redaction.rules import Redactor

    scanned = collections.Counter[str]()
    original = Redactor.mask_text

    def counting(self: Redactor, text: str, counts: collections.Counter[str]) -> str:
        scanned[text] += 1
        return original(self, text, counts)

    monkeypatch.setattr(Redactor, "mask_text", counting)
    secret = "AuthError for Bearer eyJhbGciOiJIUzI1NiJ9abcdefgh"
    long_secret = secret + " " * 600  # too long to remember: scanned each time, the memo's memory stays bounded
    mask = label_masker(LabelMaskingConfig())
    for _ in range(100):
        assert mask(secret) == "AuthError for Bearer [REDACTED]"
        assert mask(long_secret).startswith("AuthError for Bearer [REDACTED]")
    assert scanned[secret] == 1 and scanned[long_secret] == 100


def test_label_masking_patterns_are_checked_at_load() -> None:
    with pytest.raises(ConfigInvalid) as caught:
        load_text(config_text("{}", "{label_masking: {value_patterns: {Bad-Name: 'x', empty: 'a*', broken: '('}}}"))
    message = str(caught.value)
    assert "connectors.spanmetrics.label_masking.value_patterns.Bad-Name: rule names are lower_snake_case" in message
    assert "connectors.spanmetrics.label_masking.value_patterns.empty: must not match the empty string" in message
    assert "connectors.spanmetrics.label_masking.value_patterns.broken: not a valid regular expression" in message


def test_credentials_in_a_model_or_provider_name_never_reach_a_label_or_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connector, _ = make(SpanMetricsConfig(genai=GenAiConfig(semconv_metrics=True)))
    model = "https://u:Hunter2pw@llm.internal/v1?api_key=modelkey123"
    connector.consume(
        llm_span(b"\x03" * 16, b"\x03" * 8, **{
            "gen_ai.provider.name": "acme sk-abcdefghijklmnopqrstuvwx", "gen_ai.request.model": model,
            "gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 5,
        })
    )  # fmt: skip
    f = connector.families
    assert f.genai_duration is not None and f.genai_tokens is not None
    labels = repr([*f.llm_requests.series, *f.llm_unpriced.series, *f.llm_tokens.series, *f.genai_duration.series,
                   *f.genai_tokens.series])  # fmt: skip
    assert "Hunter2pw" not in labels and "modelkey123" not in labels and "abcdefghijklmnopqrstuvwx" not in labels
    assert "Hunter2pw" not in caplog.text and "modelkey123" not in caplog.text


def test_an_openinference_embedding_span_is_a_priced_request() -> None:
    connector, _ = make()
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="CreateEmbeddingResponse")
    span.attributes.extend(
        [
            attr("openinference.span.kind", "EMBEDDING"),
            attr("llm.provider", "openai"),
            attr("embedding.model_name", "text-embedding-3-small"),
            attr("llm.token_count.prompt", 1_000_000),
            attr("llm.token_count.total", 1_000_000),
        ]
    )
    connector.consume(to_request({"svc": [span]}))
    f = connector.families
    assert f.llm_requests.value(("openai", "text-embedding-3-small", "success")) == 1
    assert f.llm_tokens.value(("openai", "text-embedding-3-small", "input")) == 1_000_000
    assert f.llm_cost.value(("openai", "text-embedding-3-small")) > 0


def vercel_span(name: str, span_id: int, **extra: str | int) -> Span:
    """A span of the Vercel AI SDK's telemetry: every span of a call names the model and the provider."""
    span = Span(trace_id=b"\x01" * 16, span_id=span_id.to_bytes(8, "big"), name=name)
    span.attributes.extend(
        [
            attr("operation.name", name),
            attr("ai.operationId", name),
            attr("ai.model.id", "text-embedding-3-small"),
            attr("ai.model.provider", "openai.embedding"),
        ]
    )
    span.attributes.extend(attr(key, value) for key, value in extra.items())
    return span


def test_a_vercel_ai_sdk_embedding_call_is_a_priced_request_and_the_function_around_it_is_not() -> None:
    """``embedMany`` records its function's span and one ``doEmbed`` span per provider call, each with the model
    and ``ai.usage.tokens``: counting both would count every request and token twice."""
    connector, _ = make(SpanMetricsConfig(genai=GenAiConfig(semconv_metrics=True)))
    spans = [
        vercel_span("ai.embedMany", 1, **{"ai.usage.tokens": 3000}),
        vercel_span("ai.embedMany.doEmbed", 2, **{"ai.usage.tokens": 2000}),
        vercel_span("ai.embedMany.doEmbed", 3, **{"ai.usage.tokens": 1000}),
        vercel_span("ai.embed", 4, **{"ai.usage.tokens": 500}),
        vercel_span("ai.embed.doEmbed", 5, **{"ai.usage.tokens": 500}),
    ]
    connector.consume(to_request({"svc": spans}))
    f = connector.families
    assert f.llm_requests.value(("openai", "text-embedding-3-small", "success")) == 3
    assert f.llm_tokens.value(("openai", "text-embedding-3-small", "input")) == 3500
    assert f.llm_cost.value(("openai", "text-embedding-3-small")) == pytest.approx(3500 * 0.02 / 1e6)
    assert f.llm_without_usage.series == {}
    assert f.genai_duration is not None
    assert {key[0] for key in f.genai_duration.series} == {"embeddings"}


def test_vercel_ai_sdk_embedding_spans_renamed_by_sentry_are_counted_once() -> None:
    """Sentry's Vercel AI integration (2025) renames, as each span starts, the ``ai.*`` attributes it has then to
    ``vercel.ai.*`` (``vercel.ai.operationId``) and sets ``gen_ai.response.model`` on every span of a call; the
    ``ai.usage.tokens`` set as the span ends keeps its name. Without the operation id, the function's span would be
    a request too, its tokens (the sum of its calls') counted again."""
    connector, _ = make(SpanMetricsConfig())

    def renamed(name: str, span_id: int, tokens: int) -> Span:
        span = Span(trace_id=b"\x01" * 16, span_id=span_id.to_bytes(8, "big"), name=name.removeprefix("ai."))
        span.attributes.extend(
            [
                attr("vercel.ai.operationId", name),
                attr("vercel.ai.model.id", "text-embedding-3-small"),
                attr("vercel.ai.model.provider", "openai.embedding"),
                attr("gen_ai.response.model", "text-embedding-3-small"),
                attr("ai.usage.tokens", tokens),
            ]
        )
        return span

    spans = [
        renamed("ai.embedMany", 1, 3000),
        renamed("ai.embedMany.doEmbed", 2, 2000),
        renamed("ai.embedMany.doEmbed", 3, 1000),
    ]
    connector.consume(to_request({"svc": spans}))
    f = connector.families
    assert f.llm_requests.value(("openai", "text-embedding-3-small", "success")) == 2
    assert f.llm_tokens.value(("openai", "text-embedding-3-small", "input")) == 3000


def test_vercel_ai_sdk_generation_spans_are_counted_once_by_their_provider_call() -> None:
    """``ai.generateText`` names the model too (``ai.model.id``): only its ``doGenerate`` span, which carries the
    GenAI attributes, is the call; its operation label stays what the GenAI attributes say (none)."""
    connector, _ = make(SpanMetricsConfig(genai=GenAiConfig(semconv_metrics=True)))
    outer = vercel_span("ai.generateText", 1, **{"ai.usage.promptTokens": 100, "ai.usage.completionTokens": 20})
    call = vercel_span(
        "ai.generateText.doGenerate",
        2,
        **{"gen_ai.system": "openai.chat", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 100,
           "gen_ai.usage.output_tokens": 20},
    )  # fmt: skip
    tool = vercel_span("ai.toolCall", 3)
    connector.consume(to_request({"svc": [outer, call, tool]}))
    f = connector.families
    assert sum(series.value for series in f.llm_requests.series.values()) == 1
    assert f.llm_requests.value(("openai", "gpt-4o", "success")) == 1
    assert f.llm_tokens.value(("openai", "gpt-4o", "input")) == 100
    assert f.genai_duration is not None
    assert {key[0] for key in f.genai_duration.series} == {""}


@pytest.mark.parametrize(
    ("error_type", "expected"), [(None, "openai.RateLimitError"), ("429", "429")], ids=["exception", "attribute"]
)
def test_the_genai_duration_error_type_is_the_attribute_else_the_exception_type_as_errors_total_has_it(
    error_type: str | None, expected: str
) -> None:
    connector, _ = make(SpanMetricsConfig(genai=GenAiConfig(semconv_metrics=True)))
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="chat gpt-4o", status=Status(code=2))
    span.attributes.extend([attr("gen_ai.operation.name", "chat"), attr("gen_ai.provider.name", "openai"),
                            attr("gen_ai.request.model", "gpt-4o")])  # fmt: skip
    if error_type is not None:
        span.attributes.append(attr("error.type", error_type))
    span.events.add(name="exception").attributes.append(attr("exception.type", "openai.RateLimitError"))
    connector.consume(to_request({"svc": [span]}))
    f = connector.families
    assert f.genai_duration is not None
    assert {key[-1] for key in f.genai_duration.series} == {expected}
    assert f.errors.value((expected, "provider")) == 1


def test_the_default_workflow_buckets_keep_the_catalogues_and_reach_past_a_five_minute_sla() -> None:
    """histogram_quantile cannot return more than the last finite bound: with 120 s last, a p95 > 300 s SLA alert
    (seed 003) could never fire, and long workflows' p95/p99 panels stopped at 120 s."""
    from agent.connectors.spanmetrics.config import BucketsConfig

    bounds = BucketsConfig().workflow_duration
    assert bounds[:9] == [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]  # the catalogue's, for its dashboards
    assert any(bound > 300 for bound in bounds)


def test_a_series_created_while_a_flush_is_paused_never_starts_after_its_point() -> None:
    """A sliced flush takes its time first and yields to the event loop between points; a span arriving in that
    pause makes a series that starts after the flush's time, an invalid OTLP point for any exporter downstream."""
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

    from agent.connectors.spanmetrics.aggregation import SumFamily

    family = SumFamily("calls", "", "1", ["service"], 100)
    family.add(("checkout",), 1.0, now_ns=2_000)  # created after the flush below took its time
    metric = Metric()
    for _ in family.write_points(metric, 1_000, list(family.series.values())):
        pass
    (point,) = metric.sum.data_points
    assert point.start_time_unix_nano <= point.time_unix_nano == 1_000


def test_the_default_llm_and_step_buckets_keep_the_catalogues_and_reach_past_ten_minute_calls() -> None:
    """histogram_quantile cannot return more than the last finite bound: with 60 s (LLM) and 30 s (step) last, a
    reasoning model's 200-400 s calls read 60 s on the LLM latency panels and their steps 30 s. The OpenAI and
    Anthropic SDKs time a call out after 600 s, so the bounds reach 600 s; the catalogue's (seed 000) are kept."""
    from agent.connectors.spanmetrics.config import BucketsConfig

    buckets = BucketsConfig()
    assert buckets.llm_request_duration[:8] == [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]
    assert {0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0} <= set(buckets.step_duration)
    # The pipeline catalogue's (seed 003) SLA thresholds are bounds, so a quantile alert on one is exact at it:
    # tasks p50 2 s / p95 5 s (web_search) and p50 5 s / p95 15 s (ai_analysis); pipelines 10, 30, 60 s.
    assert {2.0, 5.0, 15.0} <= set(buckets.step_duration)
    assert {10.0, 30.0, 60.0} <= set(buckets.workflow_duration)
    for bounds in (buckets.llm_request_duration, buckets.step_duration):
        assert bounds[-1] >= 600
        assert 120.0 in bounds and 300.0 in bounds  # quantiles between 60 s and 600 s stay within 2.5x


def test_a_reload_with_the_same_settings_goes_on_with_the_series_their_counts_and_start_times(
    workload: Any,
) -> None:
    """A reload made a new connector counting from zero: what the old one counted since the last scrape was lost,
    all of it for a series still at zero in its first minute (500 of 800 spans), and a series counted only before
    the reload was never shown (pass 91)."""
    requests, _ = workload
    before, _ = make()
    for request in requests[:200]:
        before.consume(request)
    starts = {key: series.start for key, series in before.families.spans.series.items()}
    after, _ = make()
    after.take_over_from(before)
    for request in requests[200:]:
        after.consume(request)
    whole, _ = make()
    for request in requests:
        whole.consume(request)
    spans = after.families.spans
    assert {key: spans.value(key) for key in spans.series} == {
        key: whole.families.spans.value(key) for key in whole.families.spans.series
    }
    assert all(spans.series[key].start == start for key, start in starts.items())  # no restart for Prometheus
    assert after.collect().resource_metrics  # flushed like its own
    # Families built otherwise (here another namespace): the series start anew.
    changed, _ = make(SpanMetricsConfig(namespace="agents"))
    changed.take_over_from(before)
    assert len(changed.families.spans) == 0


def test_exemplars_turned_off_at_a_reload_are_not_sent_on(workload: Any) -> None:
    """The adopted histograms kept the old connector's exemplars and flushed them for as long as their series lived
    (pass 95)."""
    from agent.connectors.spanmetrics.config import ExemplarsConfig

    requests, _ = workload
    before, _ = make()
    for request in requests[:100]:
        before.consume(request)
    assert any(s.exemplars for s in before.families.span_duration.series.values())
    after, _ = make(SpanMetricsConfig(exemplars=ExemplarsConfig(enabled=False)))
    after.take_over_from(before)
    exported = after.collect()
    assert not [
        e
        for rm in exported.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.WhichOneof("data") == "histogram"
        for p in m.histogram.data_points
        for e in p.exemplars
    ]


def test_a_connector_told_to_forgo_its_state_flushes_nothing_at_shutdown() -> None:
    """A failed reload's connector that began anew beside the one the fallback goes back to: its fresh series,
    flushed into the Prometheus state the two share, read as restarts (5 → 0 → 5; pass 95)."""
    capture = Capture()
    connector, _ = make(out=capture)

    async def run() -> None:
        await connector.start()
        connector.consume(to_request({"svc": [Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="a")]}))
        connector.forgo_state()
        await connector.shutdown(time.monotonic() + 1)

    asyncio.run(run())
    assert capture.batches == []
