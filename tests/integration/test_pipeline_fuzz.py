"""Random OTLP traces, logs and metrics through the default pipeline in process: every request gets a defined
answer, nothing a stage does with them is logged as an error, and the Prometheus exposition (span metrics and
the metrics received) renders in both formats after every request.

The spans are valid protobuf with hostile contents: ids of every length, timestamps at the extremes, end before
start, unknown kinds and status codes, malformed `tracestate`, and the attribute keys the stages read (GenAI
token counts, models, providers, workflow and step keys, credentials) with values of every type, nested arrays
and maps, NaN and infinite doubles, extreme integers. The metrics are of every type and temporality, with
names that collide after translation, bucket counts that do not match their bounds, NaN bounds and sums,
exponential scales and offsets at their limits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from agent.app import Agent
from agent.config.loader import load_text
from tests.helpers import REPO, free_port, metric_value

pytestmark = pytest.mark.integration

READ_KEYS = [
    "service.name", "telemetry.sdk.name", "deployment.environment", "gen_ai.system", "gen_ai.provider.name",
    "gen_ai.operation.name", "gen_ai.request.model", "gen_ai.response.model", "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens", "gen_ai.usage.cache_read_input_tokens", "gen_ai.usage.reasoning_tokens",
    "llm.token_count.prompt", "llm.token_count.completion", "llm.model_name", "llm.provider", "ai.model.id",
    "ai.model.provider", "ai.usage.promptTokens", "ai.usage.cachedInputTokens", "ai.operationId", "workflow.name",
    "workflow_name", "step.type", "step_status", "error.type", "error_type", "http.response.status_code",
    "authorization", "gen_ai.prompt", "exception.type", "correlation_id", "retention.class",
]  # fmt: skip
KEYS = st.sampled_from(READ_KEYS) | st.text(max_size=12)
STRINGS = st.text(max_size=30) | st.sampled_from(
    ["gpt-4o", "claude-3-5-sonnet-20241022", "us.anthropic.claude-3-7-sonnet-20250219-v1:0", "Bearer abc123def4",
     "Skipped", "openai", "aws.bedrock", "development", "-5", "1e400", "NaN"]
)  # fmt: skip
SCALARS = st.one_of(
    st.builds(lambda v: AnyValue(string_value=v), STRINGS),
    st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
    st.builds(lambda v: AnyValue(int_value=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: AnyValue(double_value=v), st.floats()),
    st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=10)),
    st.just(AnyValue()),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(inner, max_size=3))
        | st.builds(
            lambda kvs: AnyValue(kvlist_value=KeyValueList(values=kvs)),
            st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), KEYS, inner), max_size=3),
        )
    ),
    max_leaves=4,
)
ATTRIBUTES = st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), KEYS, VALUES), max_size=8)
TRACE_IDS = st.sampled_from([b"\x01" * 16, b"\x02" * 16, bytes(range(16))]) | st.binary(max_size=17)
SPAN_IDS = st.sampled_from([b"\x01" * 8, b"\x03" * 8]) | st.binary(max_size=9)
TIMES = st.sampled_from([0, 2**63, 2**64 - 1, 1_700_000_000_000_000_000]) | st.integers(0, 2**64 - 1)
TRACE_STATES = st.sampled_from(["", "ot=th:0", "ot=rv:ffffffffffffff", "ot=th:zz;rv:12", "x=y,ot=th:8"]) | st.text(
    max_size=20
)


@st.composite
def spans(draw: st.DrawFn) -> Span:
    span = Span(
        trace_id=draw(TRACE_IDS),
        span_id=draw(SPAN_IDS),
        parent_span_id=draw(st.just(b"") | SPAN_IDS),
        name=draw(st.text(max_size=20)),
        kind=draw(st.integers(0, 7)),  # type: ignore[arg-type]
        start_time_unix_nano=draw(TIMES),
        end_time_unix_nano=draw(TIMES),
        trace_state=draw(TRACE_STATES),
    )
    span.attributes.extend(draw(ATTRIBUTES))
    if code := draw(st.integers(0, 3)):
        span.status.CopyFrom(Status(code=code, message=draw(st.text(max_size=10))))  # type: ignore[arg-type]
    for _ in range(draw(st.integers(0, 2))):
        event = span.events.add(name=draw(st.sampled_from(["exception", "retry", ""])), time_unix_nano=draw(TIMES))
        event.attributes.extend(draw(ATTRIBUTES))
    if draw(st.booleans()):
        span.links.add(trace_id=draw(TRACE_IDS), span_id=draw(SPAN_IDS)).attributes.extend(draw(ATTRIBUTES))
    return span


@st.composite
def trace_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 3))):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend(draw(ATTRIBUTES))
        for _ in range(draw(st.integers(1, 2))):
            resource_spans.scope_spans.add().spans.extend(draw(st.lists(spans(), max_size=5)))
    return request


@st.composite
def log_requests(draw: st.DrawFn) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.extend(draw(ATTRIBUTES))
    records = resource_logs.scope_logs.add().log_records
    for _ in range(draw(st.integers(0, 4))):
        record = records.add(
            trace_id=draw(TRACE_IDS),
            span_id=draw(SPAN_IDS),
            flags=draw(st.sampled_from([0, 1, 0x100, 0x101, 2**32 - 1])),  # sampled or not; other bits set
            severity_number=draw(st.integers(0, 30)),  # type: ignore[arg-type]
            time_unix_nano=draw(TIMES),
        )
        record.body.CopyFrom(draw(VALUES))
        record.attributes.extend(draw(ATTRIBUTES))
    return request


NUMBERS = st.floats() | st.sampled_from([0.0, -1.0, 1e308, 5e-324])
COUNTS = st.integers(0, 2**64 - 1) | st.integers(0, 10)
METRIC_NAMES = st.sampled_from(
    ["http.requests", "a:b", "target_info", "target", "x_total", "le", "dup.name", "dup_name"]
) | st.text(max_size=12)


def _number_point(draw: st.DrawFn, container: Any) -> None:
    point = container.data_points.add(start_time_unix_nano=draw(TIMES), time_unix_nano=draw(TIMES))
    point.attributes.extend(draw(ATTRIBUTES))
    if draw(st.booleans()):
        point.as_double = draw(NUMBERS)
    else:
        point.as_int = draw(st.integers(-(2**63), 2**63 - 1))
    point.flags = draw(st.integers(0, 3))
    if draw(st.booleans()):
        point.exemplars.add(as_double=draw(NUMBERS), trace_id=draw(TRACE_IDS), span_id=draw(SPAN_IDS))


@st.composite
def metrics(draw: st.DrawFn) -> Metric:
    metric = Metric(
        name=draw(METRIC_NAMES),
        unit=draw(st.sampled_from(["", "s", "ms", "By", "1", "{token}", "%"]) | st.text(max_size=5)),
    )
    kind = draw(st.sampled_from(["gauge", "sum", "histogram", "exponential_histogram", "summary", "none"]))
    temporality = draw(st.integers(0, 3))
    for _ in range(draw(st.integers(0, 3))):
        if kind == "gauge":
            _number_point(draw, metric.gauge)
        elif kind == "sum":
            metric.sum.aggregation_temporality = temporality  # type: ignore[assignment]
            metric.sum.is_monotonic = draw(st.booleans())
            _number_point(draw, metric.sum)
        elif kind == "histogram":
            metric.histogram.aggregation_temporality = temporality  # type: ignore[assignment]
            bounds = draw(st.lists(NUMBERS, max_size=4))
            point = metric.histogram.data_points.add(
                start_time_unix_nano=draw(TIMES), time_unix_nano=draw(TIMES), count=draw(COUNTS), sum=draw(NUMBERS)
            )
            point.explicit_bounds.extend(bounds)
            point.bucket_counts.extend(draw(st.lists(COUNTS, min_size=0, max_size=len(bounds) + 2)))
            point.attributes.extend(draw(ATTRIBUTES))
            if draw(st.booleans()):
                point.exemplars.add(as_double=draw(NUMBERS), trace_id=draw(TRACE_IDS))
        elif kind == "exponential_histogram":
            metric.exponential_histogram.aggregation_temporality = temporality  # type: ignore[assignment]
            point = metric.exponential_histogram.data_points.add(
                start_time_unix_nano=draw(TIMES), time_unix_nano=draw(TIMES), count=draw(COUNTS), sum=draw(NUMBERS),
                scale=draw(st.integers(-10, 20)), zero_count=draw(COUNTS), zero_threshold=draw(NUMBERS),
            )  # fmt: skip
            point.positive.offset = draw(st.integers(-(2**31), 2**31 - 1) | st.integers(-5, 5))
            point.positive.bucket_counts.extend(draw(st.lists(COUNTS, max_size=4)))
            point.negative.offset = draw(st.integers(-5, 5))
            point.negative.bucket_counts.extend(draw(st.lists(COUNTS, max_size=3)))
        elif kind == "summary":
            point = metric.summary.data_points.add(
                start_time_unix_nano=draw(TIMES), time_unix_nano=draw(TIMES), count=draw(COUNTS), sum=draw(NUMBERS)
            )
            for _ in range(draw(st.integers(0, 3))):
                point.quantile_values.add(quantile=draw(NUMBERS), value=draw(NUMBERS))
    return metric


@st.composite
def metric_requests(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        resource_metrics = request.resource_metrics.add()
        resource_metrics.resource.attributes.extend(draw(ATTRIBUTES))
        scope = resource_metrics.scope_metrics.add()
        scope.scope.name = draw(st.text(max_size=8))
        scope.scope.attributes.extend(draw(ATTRIBUTES))
        scope.metrics.extend(draw(st.lists(metrics(), max_size=4)))
    return request


@pytest.fixture
def running(tmp_path: Any) -> Iterator[tuple[asyncio.AbstractEventLoop, Agent, dict[str, str]]]:
    raw = yaml.safe_load((REPO / "agent" / "default_config.yaml").read_text())
    raw["processors"]["tail_sampling"].update(decision_wait="1s", decision_wait_after_root="0s")
    raw["exporters"]["file"]["path"] = str(tmp_path / "out")
    names = ("GRPC", "HTTP", "METRICS", "ADMIN")
    env = {f"OTEL_SIDECAR_{name}_ENDPOINT": f"127.0.0.1:{free_port()}" for name in names}
    agent = Agent(load_text(yaml.safe_dump(raw), environ=env))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(agent.start())
    try:
        yield loop, agent, env
    finally:
        loop.run_until_complete(agent.stop())
        loop.close()


def test_hostile_spans_and_logs_get_answers_and_no_stage_fails(
    running: tuple[asyncio.AbstractEventLoop, Agent, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    loop, agent, env = running
    http = f"http://{env['OTEL_SIDECAR_HTTP_ENDPOINT']}"
    session = loop.run_until_complete(_session())

    async def post(path: str, body: bytes) -> int:
        async with session.post(http + path, data=body, headers={"Content-Type": "application/x-protobuf"}) as answer:
            await answer.read()
            return answer.status

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(trace_requests(), log_requests(), metric_requests())
    def send(
        traces: ExportTraceServiceRequest, logs: ExportLogsServiceRequest, metrics: ExportMetricsServiceRequest
    ) -> None:
        assert loop.run_until_complete(post("/v1/traces", traces.SerializeToString())) == 200  # partial success
        assert loop.run_until_complete(post("/v1/logs", logs.SerializeToString())) == 200
        assert loop.run_until_complete(post("/v1/metrics", metrics.SerializeToString())) == 200
        render_both(agent)  # as a scrape would, between the pushes

    try:
        with caplog.at_level(logging.WARNING):
            send()
            loop.run_until_complete(asyncio.sleep(1.5))  # the sampler decides and releases what it holds
            agent.graph.component("spanmetrics").flush()
            loop.run_until_complete(asyncio.sleep(0.3))
    finally:
        loop.run_until_complete(session.close())
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not failures, [(r.name, r.getMessage()) for r in failures[:5]]
    own = agent.metrics.render().decode()
    # A stage raising on a batch: the ingest queue drops it (counted by the exception's name) and goes on.
    assert "otel_sidecar_ingest_dropped_items_total{" not in own, [
        line for line in own.splitlines() if "dropped" in line
    ]
    assert metric_value(own, "otel_sidecar_sampling_tick_failures_total", processor="tail_sampling") == 0
    text, openmetrics = render_both(agent)
    assert b"orchestrator_spans_total" in text
    assert openmetrics.endswith(b"# EOF\n")


def render_both(agent: Agent) -> tuple[bytes, bytes]:
    registry = agent.graph.component("prometheus").registry
    return generate_latest(registry), generate_openmetrics(registry)


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()
