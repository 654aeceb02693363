"""A synthetic LLM-orchestrator workload as OTLP export requests, with its ground truth.

Each trace is one workflow run: a root span in the ``orchestrator`` service, steps (``step.type``
llm / retrieval / tool), LLM calls in ``llm-gateway`` carrying ``gen_ai.*`` attributes and token counts,
vector searches in ``vector-store`` and tool calls in ``tools``. About ``error_rate`` of the traces have
one failing span somewhere. Deterministic for a given seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

WORKFLOWS = ("rag-pipeline", "support-agent", "summarize-docs", "code-review")
MODELS = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-sonnet-20241022"))


@dataclass
class TraceTruth:
    trace_id: bytes
    workflow: str
    error: bool
    services: set[str] = field(default_factory=set)
    spans: int = 0
    tokens: dict[tuple[str, str, str], int] = field(default_factory=dict)


def attr(key: str, value: str | int | float | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


class Workload:
    def __init__(self, seed: int = 1, error_rate: float = 0.02, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._rng = random.Random(seed)
        self.error_rate = error_rate
        self._clock = start_ns

    def trace(self) -> tuple[dict[str, list[Span]], TraceTruth]:
        """One workflow run: spans by service name, and what is true about it."""
        rng = self._rng
        trace_id = rng.randbytes(16)
        workflow = rng.choice(WORKFLOWS)
        truth = TraceTruth(trace_id, workflow, rng.random() < self.error_rate)
        spans: dict[str, list[Span]] = {}
        start = self._clock
        self._clock += 1_000_000
        root = self._span(truth, spans, "orchestrator", f"workflow {workflow}", None, start, Span.SPAN_KIND_SERVER)
        root.attributes.append(attr("workflow.name", workflow))
        cursor = start + 1_000_000
        steps = rng.randint(2, 5)
        failing_step = rng.randrange(steps) if truth.error else -1
        for index in range(steps):
            kind = rng.choice(("llm", "llm", "retrieval", "tool"))
            step = self._span(truth, spans, "orchestrator", f"step {kind}", root, cursor, Span.SPAN_KIND_INTERNAL)
            step.attributes.append(attr("step.type", kind))
            child_start = cursor + 100_000
            child = self._child(truth, spans, kind, step, child_start)
            step.end_time_unix_nano = child.end_time_unix_nano + 100_000
            if index == failing_step:
                self._fail(child)
                self._fail(step)
            cursor = step.end_time_unix_nano + 100_000
        root.end_time_unix_nano = cursor
        if truth.error:
            self._fail(root)
        return spans, truth

    def requests(self, traces: int) -> Iterator[tuple[ExportTraceServiceRequest, list[TraceTruth]]]:
        """One export request per trace (as a per-process SDK batch would send), with the trace's truth."""
        for _ in range(traces):
            by_service, truth = self.trace()
            yield to_request(by_service), [truth]

    def _child(self, truth: TraceTruth, spans: dict[str, list[Span]], kind: str, parent: Span, start: int) -> Span:
        rng = self._rng
        if kind == "llm":
            provider, model = rng.choice(MODELS)
            span = self._span(truth, spans, "llm-gateway", f"chat {model}", parent, start, Span.SPAN_KIND_CLIENT)
            input_tokens, output_tokens = rng.randint(50, 4000), rng.randint(10, 800)
            span.attributes.extend(
                [
                    attr("gen_ai.operation.name", "chat"),
                    attr("gen_ai.provider.name", provider),
                    attr("gen_ai.request.model", model),
                    attr("gen_ai.response.model", model),
                    attr("gen_ai.usage.input_tokens", input_tokens),
                    attr("gen_ai.usage.output_tokens", output_tokens),
                ]
            )
            for token_type, count in (("input", input_tokens), ("output", output_tokens)):
                key = (provider, model, token_type)
                truth.tokens[key] = truth.tokens.get(key, 0) + count
            duration = rng.randint(200, 3000) * 1_000_000
        elif kind == "retrieval":
            span = self._span(truth, spans, "vector-store", "vector.search", parent, start, Span.SPAN_KIND_CLIENT)
            span.attributes.extend([attr("db.system", "qdrant"), attr("db.operation.name", "search")])
            duration = rng.randint(5, 80) * 1_000_000
        else:
            tool = rng.choice(("web_search", "calculator", "sql"))
            span = self._span(truth, spans, "tools", f"execute_tool {tool}", parent, start, Span.SPAN_KIND_INTERNAL)
            span.attributes.append(attr("gen_ai.tool.name", tool))
            duration = rng.randint(10, 500) * 1_000_000
        span.end_time_unix_nano = start + duration
        return span

    def _span(
        self,
        truth: TraceTruth,
        spans: dict[str, list[Span]],
        service: str,
        name: str,
        parent: Span | None,
        start: int,
        kind: Span.SpanKind.ValueType,
    ) -> Span:
        span = Span(
            trace_id=truth.trace_id,
            span_id=self._rng.randbytes(8),
            parent_span_id=parent.span_id if parent else b"",
            name=name,
            kind=kind,
            start_time_unix_nano=start,
            end_time_unix_nano=start + 1_000_000,
        )
        spans.setdefault(service, []).append(span)
        truth.services.add(service)
        truth.spans += 1
        return span

    @staticmethod
    def _fail(span: Span) -> None:
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="upstream call failed"))
        span.attributes.append(attr("error.type", "UpstreamError"))


def resource_for(service: str) -> Resource:
    return Resource(attributes=[attr("service.name", service), attr("deployment.environment", "production")])


def to_request(by_service: dict[str, list[Span]]) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for service, spans in by_service.items():
        request.resource_spans.append(
            ResourceSpans(
                resource=resource_for(service),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="orchestrator.instrumentation"), spans=spans)],
            )
        )
    return request
