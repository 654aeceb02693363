"""Micro-benchmark of the ``spanmetrics`` connector's hot path and of its flush, in process.

``consume``: the batches ``make bench`` sends (``bench/loadgen.py`` templates: ~512 spans, one ResourceSpans per
service), parsed before timing (as the receiver hands them over), fed to ``SpanMetricsConnector.consume``.
Prints CPU µs per span (best and median of several rounds; the machine is shared, the best is the signal).

``flush``: a connector holding ``--series`` series per family. First the CPU of the two halves of a flush:
the connector building the OTLP request and the ``prometheus`` exporter folding it into its state. Then both
live on an event loop for 5 s (a flush every 0.5 s, spans arriving every 20 ms), with a ticker task measuring
the longest time anything held the loop: what a receiver's ``Export`` call may wait.

    .venv/bin/python bench/micro_spanmetrics.py            # both
    .venv/bin/python bench/micro_spanmetrics.py consume --rounds 20
    .venv/bin/python bench/micro_spanmetrics.py flush --series 2000
"""

from __future__ import annotations

import argparse
import asyncio
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
from agent.config.schema import Duration, HostPort  # noqa: E402
from agent.config.service import ServiceConfig  # noqa: E402
from agent.connectors.spanmetrics.config import SpanMetricsConfig  # noqa: E402
from agent.connectors.spanmetrics.connector import SpanMetricsConnector  # noqa: E402
from agent.exporters.prometheus.config import PrometheusExporterConfig  # noqa: E402
from agent.exporters.prometheus.exporter import PrometheusExporter  # noqa: E402
from agent.telemetry.selfmetrics import SelfMetrics  # noqa: E402
from agent.testing.workload import attr, to_request  # noqa: E402
from bench.loadgen import build_templates  # noqa: E402
from tests.helpers import free_port  # noqa: E402

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


def populate(target: SpanMetricsConnector, series: int) -> None:
    """``series`` label combinations in every family (RED, workflow, step, LLM), in batches of 500 spans."""
    for batch in series_batches(series, 500):
        target.consume(batch)


def series_batches(series: int, per_batch: int) -> list[ExportTraceServiceRequest]:
    """Requests whose spans make ``series`` label combinations in every family (RED, workflow, step, LLM)."""
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
    return [to_request({"svc": spans[start : start + per_batch]}) for start in range(0, len(spans), per_batch)]


def bench_flush(rounds: int, series: int) -> dict[str, float]:
    """CPU of one flush, in its two halves: the connector building the request, the exporter folding it."""
    exporter = PrometheusExporter(PrometheusExporterConfig(), settings(Kind.EXPORTER, "prometheus"))
    target = connector()
    populate(target, series)
    build_ms: list[float] = []
    fold_ms: list[float] = []
    points = 0
    for _ in range(rounds):
        populate(target, series)  # every series changes between flushes, as under steady load
        started = time.process_time()
        request = target.collect()
        build_ms.append((time.process_time() - started) * 1e3)
        points = sum(
            len(getattr(m, m.WhichOneof("data")).data_points)
            for m in request.resource_metrics[0].scope_metrics[0].metrics
        )
        started = time.process_time()
        exporter.accumulator.consume(request)
        exporter.accumulator.fold_pending()
        fold_ms.append((time.process_time() - started) * 1e3)
    return {"points": points, "build_ms": min(build_ms), "fold_ms": min(fold_ms)}


WARM_UP_SECONDS = 1.5


async def longest_stall(seconds: float, series: int) -> dict[str, float]:
    """The agent's metrics path live on an event loop (connector flushing every 0.5 s into the started
    prometheus exporter) while spans keep arriving; a ticker measures the longest time the loop was held,
    after a warm-up."""
    exporter = PrometheusExporter(
        PrometheusExporterConfig(endpoint=HostPort(f"127.0.0.1:{free_port()}")), settings(Kind.EXPORTER, "prometheus")
    )
    target = SpanMetricsConnector(
        SpanMetricsConfig(metrics_flush_interval=Duration(0.5)),
        settings(Kind.CONNECTOR, "spanmetrics"),
        {Signal.METRICS: exporter},
    )
    populate(target, series)
    await exporter.start()
    await target.start()
    loop = asyncio.get_running_loop()
    # The first flushes create every series in the exporter: a one-off, and the garbage collector's full
    # collections it triggers (tens of ms, process-wide) are not the steady state measured here.
    measure_from = loop.time() + WARM_UP_SECONDS
    stop_at = measure_from + seconds
    longest = 0.0

    feed = series_batches(series, 100)  # built beforehand: the feeder's only work is consume()

    async def keep_consuming() -> None:
        while loop.time() < stop_at:
            for batch in feed:
                target.consume(batch)  # about 0.3 ms every 20 ms
                await asyncio.sleep(0.02)

    feeder = loop.create_task(keep_consuming())
    flushed = target._flushes.labels("spanmetrics", "ok")._value
    last = time.perf_counter()
    flushes_before: float | None = None
    while loop.time() < stop_at:
        await asyncio.sleep(0)
        now = time.perf_counter()
        if loop.time() > measure_from:
            if flushes_before is None:  # the warm-up's flushes are not the ones measured
                flushes_before = flushed.get()
            longest = max(longest, now - last)
        last = now
    await feeder
    flushes = flushed.get() - (flushes_before or 0.0)
    await target.shutdown(time.monotonic() + 5)
    await exporter.shutdown(time.monotonic() + 5)
    return {"longest_ms": longest * 1e3, "flushes": flushes}


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
            f"flush CPU ({args.series} series per family, {result['points']:.0f} points): connector builds the "
            f"request in {result['build_ms']:.1f} ms, the prometheus exporter folds it in {result['fold_ms']:.1f} ms"
        )
        stall = asyncio.run(longest_stall(5.0, args.series))
        print(
            f"event loop, 5 s after a {WARM_UP_SECONDS:g} s warm-up, {stall['flushes']:.0f} flushes of {args.series} "
            f"series per family: longest stall {stall['longest_ms']:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
