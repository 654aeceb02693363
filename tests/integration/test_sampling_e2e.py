"""Tail sampling through a real agent process, fed by the real OpenTelemetry SDK over OTLP/gRPC.

The workload has known error, critical-service and normal traces, each spread over several services (so their
spans arrive in different export requests and resources); some write logs inside their spans.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from agent.otlp.probability import is_sampled, threshold_for
from tests.helpers import AgentProcess, base_config, output_spans, read_output, running_agent, wait_until

TEN_PERCENT = threshold_for(0.1)


def sampling_config(tmp_path: Path, decision_wait: str = "5s", after_root: str = "3s") -> dict[str, Any]:
    # Waits long beside the SDKs' 100 ms export timers: three providers and a log processor export on their own
    # threads, and on a loaded machine one lagging the root by over 500 ms had its spans decided without them.
    config = base_config(tmp_path / "out")
    config["processors"] = {
        "tail_sampling": {
            "decision_wait": decision_wait,
            "decision_wait_after_root": after_root,
            "tick_interval": "50ms",
            "policies": {"critical_services": {"services": ["payments"]}},
        }
    }
    pipelines = config["service"]["pipelines"]
    pipelines["traces"]["processors"] = ["tail_sampling"]
    pipelines["logs"]["processors"] = ["tail_sampling"]
    return config


@dataclass
class Truth:
    kind: dict[bytes, str] = field(default_factory=dict)  # trace id → error | critical | normal
    spans: dict[bytes, int] = field(default_factory=dict)

    def expected_kept(self) -> set[bytes]:
        return {t for t, k in self.kind.items() if k != "normal" or is_sampled(t, TEN_PERCENT)}

    def of_kind(self, kind: str) -> set[bytes]:
        return {t for t, k in self.kind.items() if k == kind}


class Orchestrator:
    """Three services, each its own SDK TracerProvider exporting to the agent, as three instrumented processes."""

    def __init__(self, agent: AgentProcess) -> None:
        self.providers = {
            name: self._provider(name, agent.grpc_endpoint) for name in ("orchestrator", "llm-gateway", "payments")
        }
        self.tracers = {name: p.get_tracer("orchestrator.workflows") for name, p in self.providers.items()}
        self.logs = LoggerProvider(resource=Resource.create({"service.name": "orchestrator"}))
        self.logs.add_log_record_processor(
            BatchLogRecordProcessor(
                OTLPLogExporter(endpoint=agent.grpc_endpoint, insecure=True), schedule_delay_millis=100
            )
        )
        self.logger = logging.getLogger("orchestrator.sampling-e2e")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.handler = LoggingHandler(logger_provider=self.logs)
        self.logger.addHandler(self.handler)

    @staticmethod
    def _provider(service: str, endpoint: str) -> TracerProvider:
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100, max_export_batch_size=256))
        return provider

    def run(self, traces: int) -> Truth:
        truth = Truth()
        for index in range(traces):
            kind = "error" if index % 10 == 3 else "critical" if index % 10 == 7 else "normal"
            with self.tracers["orchestrator"].start_as_current_span("workflow", kind=SpanKind.SERVER) as root:
                trace_id = root.get_span_context().trace_id.to_bytes(16, "big")
                spans = 2
                with self.tracers["llm-gateway"].start_as_current_span("chat", kind=SpanKind.CLIENT) as llm:
                    if kind == "error":
                        llm.set_status(Status(StatusCode.ERROR, "provider returned 503"))
                        self.logger.error("llm call failed", extra={"workflow.index": index})
                    elif index % 5 == 0:
                        self.logger.info("llm call done", extra={"workflow.index": index})
                if kind == "critical":
                    with self.tracers["payments"].start_as_current_span("charge"):
                        spans += 1
            truth.kind[trace_id] = kind
            truth.spans[trace_id] = spans
        return truth

    def close(self) -> None:
        for provider in self.providers.values():
            provider.shutdown()
        self.logger.removeHandler(self.handler)  # left attached, logging's flush at exit reaches a provider shut down
        self.logs.shutdown()


def spans_by_trace(out_dir: Path) -> dict[bytes, list[tuple[dict[str, str], Any]]]:
    found: dict[bytes, list[tuple[dict[str, str], Any]]] = {}
    for resource, _, span in output_spans(out_dir):
        attrs = {kv.key: kv.value.string_value for kv in resource.attributes}
        found.setdefault(span.trace_id, []).append((attrs, span))
    return found


def test_sdk_traces_come_out_with_every_error_and_critical_trace_complete_and_ten_percent_of_the_rest(
    tmp_path: Path,
) -> None:
    with running_agent(tmp_path, sampling_config(tmp_path)) as agent:
        orchestrator = Orchestrator(agent)
        truth = orchestrator.run(400)
        orchestrator.close()
        expected = truth.expected_kept()
        wait_until(lambda: set(spans_by_trace(agent.out_dir)) >= expected, timeout=30, what="kept traces written")
        wait_until(lambda: agent.metric("otel_sidecar_sampling_traces_buffered") == 0, what="buffer drained")
        out = spans_by_trace(agent.out_dir)
        decisions = agent.metric("otel_sidecar_sampling_decisions_total")
        logs = read_output(agent.out_dir, "logs")

    assert set(out) == expected  # exactly: nothing the policies drop gets through
    assert decisions == len(truth.kind)
    for trace_id in expected:
        spans = out[trace_id]
        assert len(spans) == truth.spans[trace_id], "a kept trace is incomplete"
        assert len({span.span_id for _, span in spans}) == len(spans), "a span was written twice"
        kind = truth.kind[trace_id]
        want = {
            "error": ("error", "errors", "ot=th:0"),
            "critical": ("critical", "critical_services", "ot=th:0"),
            "normal": ("standard", "probabilistic", "ot=th:e6666666666666"),
        }[kind]
        assert {(a["retention.class"], a["sampling.policy"], s.trace_state) for a, s in spans} == {want}

    normal = truth.of_kind("normal")
    kept_normal = len(normal & set(out))
    sigma = math.sqrt(len(normal) * 0.1 * 0.9)
    assert abs(kept_normal - 0.1 * len(normal)) <= 5 * sigma
    assert truth.of_kind("error") <= set(out) and truth.of_kind("critical") <= set(out)

    records = [
        (r.trace_id, {kv.key: kv.value.string_value for kv in rl.resource.attributes}, r.body.string_value)
        for request in logs
        for rl in request.resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    ]
    error_logs = [(t, a) for t, a, body in records if body == "llm call failed"]
    assert len(error_logs) == len(truth.of_kind("error"))  # logs are never dropped by sampling
    # An error log is classed "error" whichever way it arrived: held with its trace (kept by the errors policy)
    # or, when the SDK's log batch reached the agent before any span of its trace, by its own severity.
    assert all(a["retention.class"] == "error" for _, a in error_logs)
    assert {a["sampling.policy"] for _, a in error_logs} <= {"errors", "severity"}
    done_logs = [(t, a) for t, a, body in records if body == "llm call done"]
    assert len(done_logs) == len(range(0, 400, 5))  # Orchestrator.run logs one every fifth trace, none an error
    for trace_id, attrs in done_logs:
        kept = trace_id in expected
        assert attrs["retention.class"] == "standard"
        assert attrs["sampling.policy"] == ("probabilistic" if kept else "severity")


def test_sigterm_decides_every_buffered_trace_at_once_and_writes_the_kept_ones_before_exit(tmp_path: Path) -> None:
    agent = AgentProcess(sampling_config(tmp_path, decision_wait="60s", after_root="0s"), tmp_path).start()
    try:
        orchestrator = Orchestrator(agent)
        truth = orchestrator.run(30)
        orchestrator.close()
        wait_until(lambda: agent.metric("otel_sidecar_sampling_traces_buffered") == 30, what="traces buffered")
        assert read_output(agent.out_dir, "traces") == []  # the 60s wait has not passed
        assert agent.stop() == 0
    finally:
        agent.kill()
    out = spans_by_trace(agent.out_dir)
    assert set(out) == truth.expected_kept()
    assert all(len(out[t]) == truth.spans[t] for t in out)
