"""Builders and doubles shared by the tail_sampling tests (a fake clock, a sink that can refuse, span makers).

It also checks the doubles themselves, so a broken helper fails loudly instead of making other tests vacuous.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from agent.component import CreateSettings, Kind, Refused, Signal
from agent.config.schema import ConfigError, build
from agent.config.service import ServiceConfig
from agent.otlp.probability import MAX_THRESHOLD, randomness
from agent.processors.tail_sampling import FACTORY, TailSamplingConfig
from agent.processors.tail_sampling.processor import TailSamplingProcessor
from agent.processors.tail_sampling.sampler import TailSampler
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.workload import attr as kv
from tests.helpers import FakeClock, metric_value

TEN_PERCENT_THRESHOLD = 0xE6666666666666


@dataclass
class Sink:
    """A next consumer that records every request, or refuses while ``refusing`` is set."""

    refusing: bool = False
    batches: list[Any] = field(default_factory=list)
    refusals: int = 0

    def consume(self, batch: Any) -> None:
        if self.refusing:
            self.refusals += 1
            raise Refused("sink is full")
        self.batches.append(batch)


def config(**raw: Any) -> TailSamplingConfig:
    errors: list[ConfigError] = []
    built = build(TailSamplingConfig, raw, "tail_sampling", errors)
    assert not errors, errors
    assert built is not None
    return built


@dataclass
class Rig:
    """A sampler with a traces and a logs instance, fed by the test and draining into sinks."""

    clock: FakeClock
    metrics: SelfMetrics
    traces: TailSamplingProcessor
    logs: TailSamplingProcessor
    trace_sink: Sink
    log_sink: Sink

    @property
    def sampler(self) -> TailSampler:
        return self.traces.sampler

    def tick_after(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.sampler.tick()

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.metrics.render().decode(), name, **labels)


def rig(
    component_id: str = "tail_sampling",
    service: ServiceConfig | None = None,
    built: TailSamplingConfig | None = None,
    **raw: Any,
) -> Rig:
    """A sampler on a fake clock from ``raw`` settings, or from an already ``built`` config (a shipped one)."""
    clock = FakeClock()
    metrics = SelfMetrics()
    shared: dict[str, Any] = {}
    trace_sink, log_sink = Sink(), Sink()
    # The tests' timings were written for a 10 s wait and a 2 s grace after the root; the shipped defaults are
    # tested through the shipped configs (test_shipped_configs.py).
    cfg = built if built is not None else config(**{"decision_wait": "10s", "decision_wait_after_root": "2s", **raw})

    def settings() -> CreateSettings:
        return CreateSettings(
            component_id, Kind.PROCESSOR, logging.getLogger("test"), metrics, service or ServiceConfig(), shared
        )

    traces = FACTORY.create(cfg, settings(), Signal.TRACES, trace_sink, clock=clock)
    logs = FACTORY.create(cfg, settings(), Signal.LOGS, log_sink, clock=clock)
    return Rig(clock, metrics, traces, logs, trace_sink, log_sink)


# --- building OTLP data ------------------------------------------------------------------------------------------


def trace_id_with_randomness(value: int, prefix: int = 7) -> bytes:
    """A trace id whose OTEP 235 randomness (low 56 bits) is ``value``."""
    return prefix.to_bytes(9, "big") + value.to_bytes(7, "big")


KEPT_AT_10 = TEN_PERCENT_THRESHOLD + 5  # randomness a 10% sampler keeps
DROPPED_AT_10 = TEN_PERCENT_THRESHOLD - 5  # randomness a 10% sampler drops


def span(
    trace_id: bytes,
    number: int,
    *,
    root: bool = False,
    error: bool = False,
    start_ms: int = 0,
    duration_ms: int = 10,
    attributes: dict[str, Any] | None = None,
    trace_state: str = "",
) -> Span:
    out = Span(
        trace_id=trace_id,
        span_id=number.to_bytes(8, "big"),
        parent_span_id=b"" if root else (number + 1_000_000).to_bytes(8, "big"),
        name=f"span {number}",
        start_time_unix_nano=1_700_000_000_000_000_000 + start_ms * 1_000_000,
        end_time_unix_nano=1_700_000_000_000_000_000 + (start_ms + duration_ms) * 1_000_000,
        trace_state=trace_state,
    )
    if error:
        out.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR))
    for key, value in (attributes or {}).items():
        out.attributes.append(kv(key, value))
    return out


def resource(service: str = "orchestrator", **attributes: Any) -> Resource:
    return Resource(attributes=[kv("service.name", service), *(kv(k, v) for k, v in attributes.items())])


def request(*groups: tuple[Resource, Iterable[Span]], scope: str = "test") -> ExportTraceServiceRequest:
    """One ResourceSpans per ``(resource, spans)`` group."""
    out = ExportTraceServiceRequest()
    for res, spans in groups:
        out.resource_spans.append(
            ResourceSpans(resource=res, scope_spans=[ScopeSpans(scope=InstrumentationScope(name=scope), spans=spans)])
        )
    return out


def spans_request(*spans: Span, service: str = "orchestrator") -> ExportTraceServiceRequest:
    return request((resource(service), spans))


def log_record(
    trace_id: bytes = b"", severity: int = 9, body: str = "hello", severity_text: str = "", sampled: bool = True
) -> LogRecord:
    """A record as an SDK writes it inside a span: with the span's trace flags (sampled, unless told otherwise)."""
    flags = 1 if trace_id and sampled else 0
    record = LogRecord(trace_id=trace_id, flags=flags, severity_number=severity, severity_text=severity_text)  # type: ignore[arg-type]
    record.body.string_value = body
    return record


def logs_request(*records: LogRecord, service: str = "orchestrator") -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource(service), scope_logs=[ScopeLogs(log_records=records)])]
    )


# --- reading what came out ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Out:
    batch: int
    trace_id: bytes
    span_id: bytes
    service: str
    retention_class: str
    policy: str
    trace_state: str


def resource_attrs(res: Resource) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in res.attributes:
        out[item.key] = getattr(item.value, item.value.WhichOneof("value") or "string_value")
    return out


def exported_spans(sink: Sink) -> list[Out]:
    found = []
    for index, batch in enumerate(sink.batches):
        for rs in batch.resource_spans:
            attrs = resource_attrs(rs.resource)
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    found.append(
                        Out(
                            index,
                            sp.trace_id,
                            sp.span_id,
                            attrs.get("service.name", ""),
                            attrs.get("retention.class", ""),
                            attrs.get("sampling.policy", ""),
                            sp.trace_state,
                        )
                    )
    return found


def exported_logs(sink: Sink) -> list[tuple[str, str, str]]:
    """``(body, retention.class, sampling.policy)`` of every record exported."""
    found = []
    for batch in sink.batches:
        for rl in batch.resource_logs:
            attrs = resource_attrs(rl.resource)
            for sl in rl.scope_logs:
                found.extend(
                    (r.body.string_value, attrs.get("retention.class", ""), attrs.get("sampling.policy", ""))
                    for r in sl.log_records
                )
    return found


# --- the helpers are right ---------------------------------------------------------------------------------------


def test_trace_ids_built_for_a_randomness_carry_exactly_that_randomness() -> None:
    assert randomness(trace_id_with_randomness(KEPT_AT_10)) == KEPT_AT_10
    assert randomness(trace_id_with_randomness(MAX_THRESHOLD - 1)) == MAX_THRESHOLD - 1


def test_the_sink_records_batches_and_refuses_when_told() -> None:
    sink = Sink()
    sink.consume("a")
    sink.refusing = True
    with pytest.raises(Refused):
        sink.consume("b")
    assert sink.batches == ["a"] and sink.refusals == 1


def test_a_rig_shares_one_sampler_between_its_traces_and_logs_instances() -> None:
    r = rig()
    assert r.traces.sampler is r.logs.sampler
