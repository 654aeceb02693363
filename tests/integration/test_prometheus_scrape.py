"""A real Prometheus scraping a real agent after a known workload sent through the OpenTelemetry SDK.

The agent runs the Collector-style layout: the receiver feeds the sampled traces pipeline (tail_sampling → file)
and, next to it, the span-metrics pipeline (spanmetrics → prometheus). Prometheus (the Debian package) scrapes
the agent every second with exemplar storage on; PromQL sums must equal the ground truth exactly, and every
exemplar must open a trace the tail sampler exported.
"""

from __future__ import annotations

import collections
import math
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from agent.otlp.probability import is_sampled, threshold_for
from agent.testing.workload import Workload
from tests.helpers import (
    REPO,
    AgentProcess,
    PrometheusServer,
    base_config,
    free_port,
    http_get,
    output_spans,
    wait_until,
)

pytestmark = pytest.mark.integration

TRACES = 300
FLOOD = 400
CARDINALITY_LIMIT = 150
SDK_KINDS = {
    ProtoSpan.SPAN_KIND_INTERNAL: SpanKind.INTERNAL,
    ProtoSpan.SPAN_KIND_SERVER: SpanKind.SERVER,
    ProtoSpan.SPAN_KIND_CLIENT: SpanKind.CLIENT,
    ProtoSpan.SPAN_KIND_PRODUCER: SpanKind.PRODUCER,
    ProtoSpan.SPAN_KIND_CONSUMER: SpanKind.CONSUMER,
}
PRICES = yaml.safe_load((REPO / "config" / "pricing.yaml").read_text())["models"]

# LLM calls in other attribute conventions, with the price-table entry each must match and its disjoint tokens.
EXTRA_CALLS: list[tuple[dict[str, Any], tuple[str, str], str | None, dict[str, int]]] = [
    (  # OpenInference (Arize/Phoenix): prompt count includes the cache details
        {
            "openinference.span.kind": "LLM",
            "llm.provider": "anthropic",
            "llm.model_name": "claude-3-5-haiku-20241022",
            "llm.token_count.prompt": 5000,
            "llm.token_count.prompt_details.cache_read": 4000,
            "llm.token_count.prompt_details.cache_write": 500,
            "llm.token_count.completion": 300,
        },
        ("anthropic", "claude-3-5-haiku-20241022"),
        "claude-3-5-haiku",
        {"input": 500, "cache_read": 4000, "cache_write": 500, "output": 300},
    ),
    (  # OpenLLMetry, deprecated names, reasoning inside the completion count, dated response model
        {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "o3-mini",
            "gen_ai.response.model": "o3-mini-2025-01-31",
            "gen_ai.usage.prompt_tokens": 200,
            "gen_ai.usage.completion_tokens": 900,
            "gen_ai.usage.reasoning_tokens": 700,
        },
        ("openai", "o3-mini-2025-01-31"),
        "o3-mini",
        {"input": 200, "output": 200, "reasoning": 700},
    ),
    (  # a model nobody priced
        {
            "gen_ai.provider.name": "acme",
            "gen_ai.request.model": "acme-llm",
            "gen_ai.usage.input_tokens": 40,
            "gen_ai.usage.output_tokens": 4,
        },
        ("acme", "acme-llm"),
        None,
        {"input": 40, "output": 4},
    ),
]
EXTRA_REPEAT = 5


@dataclass
class Truth:
    spans: collections.Counter[tuple[str, str, str, str]] = field(default_factory=collections.Counter)
    workflows: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    steps: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    tokens: collections.Counter[tuple[str, str, str]] = field(default_factory=collections.Counter)
    cost: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    unpriced: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    errors: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    failed_traces: set[bytes] = field(default_factory=set)


def price_of(entry: str, token_type: str) -> float:
    """USD per token straight from the YAML, with the documented fallbacks."""
    prices = PRICES[entry]
    fallback = {"cache_read": "input", "cache_write": "input", "reasoning": "output"}.get(token_type, token_type)
    return float(prices.get(token_type, prices[fallback])) / 1_000_000


MATCHED_ENTRY = {"gpt-4o": "gpt-4o", "gpt-4o-mini": "gpt-4o-mini", "claude-3-5-sonnet-20241022": "claude-3-5-sonnet"}


class Orchestrator:
    """One SDK TracerProvider per service, as separately instrumented processes would have."""

    def __init__(self, endpoint: str) -> None:
        self.providers: dict[str, TracerProvider] = {}
        self.endpoint = endpoint

    def tracer(self, service: str) -> trace.Tracer:
        provider = self.providers.get(service)
        if provider is None:
            provider = TracerProvider(resource=Resource.create({"service.name": service}))
            exporter = OTLPSpanExporter(endpoint=self.endpoint, insecure=True)
            provider.add_span_processor(
                BatchSpanProcessor(exporter, schedule_delay_millis=100, max_export_batch_size=512)
            )
            self.providers[service] = provider
        return provider.get_tracer("orchestrator.instrumentation")

    def replay(self, by_service: dict[str, list[ProtoSpan]], truth: Truth) -> None:
        """Send one synthetic trace through the SDK, keeping its tree, names, kinds, attributes, times, statuses."""
        spans = sorted(
            ((service, span) for service, items in by_service.items() for span in items),
            key=lambda item: item[1].start_time_unix_nano,
        )
        started: dict[bytes, trace.Span] = {}
        for service, span in spans:
            parent = started.get(span.parent_span_id)
            started[span.span_id] = self.tracer(service).start_span(
                span.name,
                context=trace.set_span_in_context(parent) if parent is not None else None,
                kind=SDK_KINDS[span.kind],
                attributes={kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes},
                start_time=span.start_time_unix_nano,
            )
        for service, span in reversed(spans):
            sdk_span = started[span.span_id]
            failed = span.status.code == ProtoStatus.STATUS_CODE_ERROR
            if failed:
                sdk_span.set_status(Status(StatusCode.ERROR, span.status.message))
                truth.failed_traces.add(sdk_span.get_span_context().trace_id.to_bytes(16, "big"))
            sdk_span.end(end_time=span.end_time_unix_nano)
            record(truth, service, span.name, ProtoSpan.SpanKind.Name(span.kind), failed, span)

    def llm_call(self, attributes: dict[str, Any], start_ns: int, truth: Truth) -> None:
        span = self.tracer("llm-gateway").start_span(
            "chat", kind=SpanKind.CLIENT, attributes=attributes, start_time=start_ns
        )
        span.end(end_time=start_ns + 800_000_000)
        truth.spans[("llm-gateway", "chat", "SPAN_KIND_CLIENT", "STATUS_CODE_UNSET")] += 1

    def close(self) -> None:
        for provider in self.providers.values():
            provider.shutdown()


def record(truth: Truth, service: str, name: str, kind: str, failed: bool, span: ProtoSpan) -> None:
    truth.spans[(service, name, kind, "STATUS_CODE_ERROR" if failed else "STATUS_CODE_UNSET")] += 1
    attrs = {kv.key: kv.value for kv in span.attributes}
    status = "failure" if failed else "success"
    if "workflow.name" in attrs:
        truth.workflows[(attrs["workflow.name"].string_value, status)] += 1
    if "step.type" in attrs:
        truth.steps[(attrs["step.type"].string_value, status)] += 1
    if failed:
        component = (
            "executor"
            if "workflow.name" in attrs
            else "step_executor"
            if "step.type" in attrs
            else "provider"
            if "gen_ai.request.model" in attrs
            else service
        )
        truth.errors[(attrs["error.type"].string_value, component)] += 1


def send_workload(orchestrator: Orchestrator) -> Truth:
    truth = Truth()
    workload = Workload(seed=42, error_rate=0.05, start_ns=time.time_ns() - 120 * 10**9)
    for _ in range(TRACES):
        by_service, facts = workload.trace()
        orchestrator.replay(by_service, truth)
        for (provider, model, token_type), count in facts.tokens.items():
            entry = MATCHED_ENTRY[model]  # the model label is the price entry a call matched
            truth.tokens[(provider, entry, token_type)] += count
            truth.cost[(provider, entry)] += count * price_of(entry, token_type)
    start = time.time_ns() - 60 * 10**9
    for _ in range(EXTRA_REPEAT):
        for attributes, reported, entry, tokens in EXTRA_CALLS:
            orchestrator.llm_call(attributes, start, truth)
            key = reported if entry is None else (reported[0], entry)
            for token_type, count in tokens.items():
                truth.tokens[(*key, token_type)] += count
                if entry is not None:
                    truth.cost[key] += count * price_of(entry, token_type)
            if entry is None:
                truth.unpriced[key] += 1
    return truth


# --- processes ----------------------------------------------------------------------------------------------------


def start_prometheus(workdir: Path, target: str) -> PrometheusServer:
    """Scraping ``target`` every second, with exemplar storage on."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "otel-sidecar", "static_configs": [{"targets": [target]}]}],
    }
    return PrometheusServer(workdir, config, "--enable-feature=exemplar-storage").start()


@dataclass
class Scenario:
    agent: AgentProcess
    prometheus: PrometheusServer
    truth: Truth
    metrics_url: str


def agent_config(out_dir: Path, metrics_port: int) -> dict[str, Any]:
    config = base_config(out_dir)
    config["processors"] = {
        "tail_sampling": {"decision_wait": "2s", "decision_wait_after_root": "1s", "tick_interval": "50ms"}
    }
    config["connectors"] = {"spanmetrics": {"metrics_flush_interval": "500ms", "cardinality_limit": CARDINALITY_LIMIT}}
    # Prometheus scrapes every second here: a new series at zero for 2 s is seen at zero by two scrapes or so.
    config["exporters"]["prometheus"] = {"endpoint": f"127.0.0.1:{metrics_port}", "new_series_at_zero_for": "2s"}
    config["service"]["pipelines"] = {
        "traces": {"receivers": ["otlp"], "processors": ["tail_sampling"], "exporters": ["file"]},
        "traces/spanmetrics": {"receivers": ["otlp"], "exporters": ["spanmetrics"]},
        "metrics": {"receivers": ["otlp", "spanmetrics"], "exporters": ["prometheus"]},
        "logs": {"receivers": ["otlp"], "exporters": ["file"]},
    }
    return config


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    workdir = tmp_path_factory.mktemp("prometheus-scrape")
    metrics_port = free_port()
    agent = AgentProcess(agent_config(workdir / "out", metrics_port), workdir).start()
    prometheus = None
    try:
        prometheus = start_prometheus(workdir / "prometheus", f"127.0.0.1:{metrics_port}")
        orchestrator = Orchestrator(agent.grpc_endpoint)
        truth = send_workload(orchestrator)
        orchestrator.close()
        total = sum(truth.spans.values())
        wait_until(
            lambda: prometheus.scalar("sum(orchestrator_spans_total)") == total,
            timeout=60,
            interval=0.5,
            what=f"Prometheus to see all {total} spans",
        )
        yield Scenario(agent, prometheus, truth, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        if prometheus is not None:
            prometheus.stop()
        agent.kill()


# --- tests ----------------------------------------------------------------------------------------------------------


# The spans the last two tests add to the shared scenario (whichever order the tests run in): the ground truth
# is the workload's.
WORKLOAD_SPANS = '{service_name!~"flood|card-service", otel_metric_overflow!="true"}'


def test_promql_span_counts_per_service_name_kind_and_status_equal_the_ground_truth(scenario: Scenario) -> None:
    labels = ("service_name", "span_name", "span_kind", "status_code")
    query = f"sum by ({', '.join(labels)}) (orchestrator_spans_total{WORKLOAD_SPANS})"
    found = scenario.prometheus.vector(query, *labels)
    assert found == {key: float(count) for key, count in scenario.truth.spans.items()}
    count = scenario.prometheus.scalar(f"sum(orchestrator_span_duration_seconds_count{WORKLOAD_SPANS})")
    assert count == sum(scenario.truth.spans.values())
    assert scenario.prometheus.scalar('count(up{job="otel-sidecar"} == 1)') == 1  # OpenMetrics scrapes succeed


def test_promql_workflow_and_step_counts_equal_the_ground_truth(scenario: Scenario) -> None:
    workflows = scenario.prometheus.vector(
        "sum by (workflow_name, status) (orchestrator_workflow_executions_total)", "workflow_name", "status"
    )
    assert workflows == {key: float(count) for key, count in scenario.truth.workflows.items()}
    assert any(status == "failure" for _, status in workflows)
    steps = scenario.prometheus.vector(
        "sum by (step_type, status) (orchestrator_step_executions_total)", "step_type", "status"
    )
    assert steps == {key: float(count) for key, count in scenario.truth.steps.items()}
    durations = scenario.prometheus.vector(
        "sum by (workflow_name) (orchestrator_workflow_duration_seconds_count)", "workflow_name"
    )
    per_workflow = collections.Counter()
    for (name, _), count in scenario.truth.workflows.items():
        per_workflow[(name,)] += count
    assert durations == {key: float(count) for key, count in per_workflow.items()}


def test_promql_tokens_per_model_and_type_equal_the_ground_truth(scenario: Scenario) -> None:
    labels = ("provider", "model", "type")
    found = scenario.prometheus.vector("sum by (provider, model, type) (orchestrator_llm_tokens_total)", *labels)
    assert found == {key: float(count) for key, count in scenario.truth.tokens.items()}
    assert {key[2] for key in found} == {"input", "cache_read", "cache_write", "output", "reasoning"}


def test_promql_cost_per_model_equals_the_ground_truth_to_floating_point_precision(scenario: Scenario) -> None:
    found = scenario.prometheus.vector(
        "sum by (provider, model) (orchestrator_llm_cost_usd_total)", "provider", "model"
    )
    assert set(found) == set(scenario.truth.cost)
    for key, expected in scenario.truth.cost.items():
        assert math.isclose(found[key], expected, rel_tol=1e-9), (key, found[key], expected)
    unpriced = scenario.prometheus.vector(
        "sum by (provider, model) (orchestrator_llm_unpriced_requests_total)", "provider", "model"
    )
    assert unpriced == {key: float(count) for key, count in scenario.truth.unpriced.items()}
    assert ("acme", "acme-llm") not in found


def test_promql_errors_by_type_and_component_equal_the_ground_truth(scenario: Scenario) -> None:
    found = scenario.prometheus.vector(
        'sum by (error_type, component) (orchestrator_errors_total{error_type!="card_declined"})',
        "error_type",
        "component",
    )
    assert found == {key: float(count) for key, count in scenario.truth.errors.items()}
    assert scenario.truth.failed_traces


def test_every_exemplar_opens_a_trace_the_tail_sampler_exported(scenario: Scenario) -> None:
    agent = scenario.agent
    wait_until(
        lambda: (
            agent.metric("otel_sidecar_sampling_traces_buffered") == 0
            and agent.metric("otel_sidecar_sampling_decisions_total") >= TRACES
        ),
        timeout=30,
        what="tail sampling decisions",
    )
    exported = {span.trace_id.hex() for _, _, span in output_spans(agent.out_dir)}
    now = time.time()
    data = scenario.prometheus.api(
        "query_exemplars",
        query='{__name__=~"orchestrator_.+_duration_seconds_bucket"}',
        start=str(now - 3600),
        end=str(now + 3600),
    )
    exemplars = [e["labels"] for series in data for e in series["exemplars"]]
    assert len(exemplars) >= 10, "Prometheus stored too few exemplars to judge"
    trace_ids = {e["trace_id"] for e in exemplars}
    assert all(len(e["span_id"]) == 16 for e in exemplars)
    assert trace_ids <= exported, f"exemplars pointing to traces not exported: {sorted(trace_ids - exported)[:5]}"
    failed = {t.hex() for t in scenario.truth.failed_traces}
    assert trace_ids & failed, "no exemplar from an error trace"
    sampled = {t for t in trace_ids if is_sampled(bytes.fromhex(t), threshold_for(0.1))}
    assert sampled, "no exemplar from a probabilistically kept trace"


def test_promtool_reports_nothing_on_both_exposition_formats_of_the_live_endpoint(scenario: Scenario) -> None:
    status, text, headers = http_get(scenario.metrics_url, {"Accept": "text/plain;version=0.0.4"})
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")

    status, om, headers = http_get(scenario.metrics_url, {"Accept": "application/openmetrics-text;version=1.0.0"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.endswith(b"# EOF\n") and b"# {" in om
    families = list(text_string_to_metric_families(om.decode()))  # strict OpenMetrics 1.0 parser

    class Parsed:
        def collect(self) -> list[Any]:
            return families

    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=generate_latest(Parsed()),  # type: ignore[arg-type]
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_a_flood_of_span_names_ends_in_one_overflow_series_and_is_counted(scenario: Scenario) -> None:
    prometheus, agent = scenario.prometheus, scenario.agent
    series_before = prometheus.scalar("count(orchestrator_spans_total)")
    assert series_before < CARDINALITY_LIMIT
    orchestrator = Orchestrator(agent.grpc_endpoint)
    tracer = orchestrator.tracer("flood")
    for index in range(FLOOD):
        tracer.start_span(f"GET /users/{index}").end()
    orchestrator.close()
    room = CARDINALITY_LIMIT - series_before
    expected_overflow = FLOOD - room
    wait_until(
        lambda: prometheus.scalar('sum(orchestrator_spans_total{otel_metric_overflow="true"})') == expected_overflow,
        timeout=30,
        interval=0.5,
        what="the overflow series in Prometheus",
    )
    assert prometheus.scalar("count(orchestrator_spans_total)") == CARDINALITY_LIMIT + 1
    assert prometheus.scalar('count(orchestrator_spans_total{otel_metric_overflow="true"})') == 1
    total = prometheus.scalar('sum(orchestrator_spans_total{service_name!="card-service"})')
    assert total == sum(scenario.truth.spans.values()) + FLOOD
    overflowed = agent.metric("otel_sidecar_spanmetrics_overflow_total", metric="orchestrator.spans")
    assert overflowed == expected_overflow


def test_a_single_failure_of_a_new_kind_is_counted_by_increase_and_rate(scenario: Scenario) -> None:
    """A series Prometheus first sees at 1 is invisible to rate() and increase(): a sporadic error (a new
    error_type series each time) would never fire an alert. The exporter shows a new series at 0 first."""
    orchestrator = Orchestrator(scenario.agent.grpc_endpoint)
    span = orchestrator.tracer("card-service").start_span("charge card", attributes={"error.type": "card_declined"})
    span.set_status(Status(StatusCode.ERROR, "declined"))
    span.end()
    orchestrator.close()
    selector = 'orchestrator_errors_total{error_type="card_declined"}'
    wait_until(
        lambda: scenario.prometheus.scalar(f"sum(max_over_time({selector}[1m]))") == 1,
        timeout=30,
        interval=0.5,
        what="the error in Prometheus",
    )
    assert scenario.prometheus.scalar(f"sum(min_over_time({selector}[1m]))") == 0  # seen at zero first
    assert scenario.prometheus.scalar(f"sum(increase({selector}[1m]))") > 0
    assert scenario.prometheus.scalar(f"sum(rate({selector}[1m]))") > 0
