"""Micro-benchmark of the ``spanmetrics`` connector's hot path and of its flush, in process.

``consume``: the batches ``make bench`` sends (``bench/loadgen.py`` templates: ~512 spans, one ResourceSpans per
service), parsed before timing (as the receiver hands them over), fed to ``SpanMetricsConnector.consume``.
Prints CPU µs per span (best and median of several rounds; the machine is shared, the best is the signal).

``flush``: a connector holding ``--series`` series per family, then the two steps that run on the event loop
every ``metrics_flush_interval``: the connector's flush (collect → OTLP request → fan-out) and the
``prometheus`` exporter folding that request into its state. Prints milliseconds for each (best and worst).

    .venv/bin/python bench/micro_spanmetrics.py            # both
    .venv/bin/python bench/micro_spanmetrics.py consume --rounds 20
    .venv/bin/python bench/micro_spanmetrics.py flush --series 2000
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.component import CreateSettings, Kind, Signal  # noqa: E402
from agent.config.service import ServiceConfig  # noqa: E402
from agent.connectors.spanmetrics.config import SpanMetricsConfig  # noqa: E402
from agent.connectors.spanmetrics.connector import SpanMetricsConnector  # noqa: E402
from agent.exporters.prometheus.config import PrometheusExporterConfig  # noqa: E402
from agent.exporters.prometheus.exporter import PrometheusExporter  # noqa: E402
from agent.telemetry.selfmetrics import SelfMetrics  # noqa: E402
from agent.testing.workload import attr, to_request  # noqa: E402
from bench.loadgen import build_templates  # noqa: E402

logging.getLogger("bench").setLevel(logging.ERROR)  # the flush benchmark's models are unpriced (warned once each)


def settings(kind: Kind, cid: str) -> CreateSettings:
    return CreateSettings(cid, kind, logging.getLogger(f"bench.{cid}"), SelfMetrics(), ServiceConfig(), {})


def connector(out: Any = None) -> SpanMetricsConnector:
    consumers = {Signal.METRICS: out} if out is not None else {}
    return SpanMetricsConnector(SpanMetricsConfig(), settings(Kind.CONNECTOR, "spanmetrics"), consumers)


def bench_consume(rounds: int, templates: int, traces_per_request: int) -> dict[str, float]:
    bodies = [t.body for t in build_templates(templates, traces_per_request, seed=7)]
    target = connector()
    spans_per_round = 0
    per_span: list[float] = []
    for round_ in range(rounds + 1):
        # Fresh messages each round, parsed outside the timing: upb creates the Python wrappers lazily, as it
        # does for the receiver's batches.
        batches = [ExportTraceServiceRequest.FromString(body) for body in bodies]
        spans_per_round = sum(len(ss.spans) for b in batches for rs in b.resource_spans for ss in rs.scope_spans)
        started = time.process_time()
        for batch in batches:
            target.consume(batch)
        elapsed = time.process_time() - started
        if round_:  # the first round warms the caches and creates the series
            per_span.append(elapsed / spans_per_round * 1e6)
    return {
        "spans_per_batch": spans_per_round / len(bodies),
        "best_us_per_span": min(per_span),
        "median_us_per_span": statistics.median(per_span),
    }


class _Exporter:
    """The metrics pipeline of the agent: the prometheus exporter, timed separately from the connector."""

    def __init__(self) -> None:
        self.exporter = PrometheusExporter(PrometheusExporterConfig(), settings(Kind.EXPORTER, "prometheus"))
        self.last: Any = None

    def consume(self, batch: Any) -> None:
        self.last = batch


def populate(target: SpanMetricsConnector, series: int) -> None:
    """``series`` label combinations in every family (RED, workflow, step, LLM), in batches of 500 spans."""
    spans: list[Span] = []
    for i in range(series):
        span = Span(
            trace_id=i.to_bytes(16, "big"),
            span_id=(i + 1).to_bytes(8, "big"),
            name=f"op-{i}",
            kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=1_000_000_000,
            end_time_unix_nano=1_000_000_000 + (i % 97) * 10_000_000,
        )
        span.attributes.extend(
            [
                attr("workflow.name", f"wf-{i}"),
                attr("step.type", f"step-{i}"),
                attr("gen_ai.operation.name", "chat"),
                attr("gen_ai.provider.name", "openai"),
                attr("gen_ai.request.model", f"model-{i}"),
                attr("gen_ai.usage.input_tokens", 100 + i),
                attr("gen_ai.usage.output_tokens", 10 + i),
            ]
        )
        if i % 50 == 0:
            span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR))
            span.attributes.append(attr("error.type", f"E{i}"))
        spans.append(span)
    for start in range(0, len(spans), 500):
        target.consume(to_request({"svc": spans[start : start + 500]}))


def bench_flush(rounds: int, series: int) -> dict[str, float]:
    sink = _Exporter()
    target = connector(sink)
    populate(target, series)
    flush_ms: list[float] = []
    export_ms: list[float] = []
    for _ in range(rounds):
        populate(target, series)  # every series changes between flushes, as under steady load
        started = time.perf_counter()
        target.flush()
        flush_ms.append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        sink.exporter.consume(sink.last)
        export_ms.append((time.perf_counter() - started) * 1e3)
    points = sum(
        len(getattr(m, m.WhichOneof("data")).data_points)
        for rm in sink.last.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    )
    return {
        "points": points,
        "connector_flush_best_ms": min(flush_ms),
        "connector_flush_worst_ms": max(flush_ms),
        "exporter_consume_best_ms": min(export_ms),
        "exporter_consume_worst_ms": max(export_ms),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=("consume", "flush", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--templates", type=int, default=16)
    parser.add_argument("--traces-per-request", type=int, default=64)
    parser.add_argument("--series", type=int, default=2000, help="series per family for the flush benchmark")
    args = parser.parse_args()
    if args.what in ("consume", "all"):
        result = bench_consume(args.rounds, args.templates, args.traces_per_request)
        print(
            f"consume: {result['best_us_per_span']:.2f} µs/span best, {result['median_us_per_span']:.2f} median "
            f"({result['spans_per_batch']:.0f} spans per batch)"
        )
    if args.what in ("flush", "all"):
        result = bench_flush(max(3, args.rounds // 2), args.series)
        print(
            f"flush ({args.series} series per family, {result['points']} points): connector "
            f"{result['connector_flush_best_ms']:.1f}-{result['connector_flush_worst_ms']:.1f} ms, prometheus "
            f"exporter {result['exporter_consume_best_ms']:.1f}-{result['exporter_consume_worst_ms']:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
