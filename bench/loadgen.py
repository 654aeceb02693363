"""Load generator for ``make bench``: realistic orchestrator batches over OTLP/gRPC at a fixed rate or at saturation.

Runs as its own process so that its CPU is not counted against the collector under test. Requests are
serialized once; for every send the trace ids are rewritten in place (at offsets found once), so each trace is
new to the collector while the client spends about a microsecond per span. Prints one JSON object with what it
sent, what was accepted and refused, and the client-side latency of each ``Export`` call.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from agent.testing.workload import Workload, to_request

# The codes the agent refuses with when full, which an SDK retries after a backoff.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@dataclass
class Template:
    body: bytes
    spans: int
    id_offsets: list[list[int]]  # per trace: where its 16-byte id occurs in ``body``

    def fresh(self, rng: random.Random) -> bytes:
        buffer = bytearray(self.body)
        for offsets in self.id_offsets:
            new_id = rng.randbytes(16)
            for offset in offsets:
                buffer[offset : offset + 16] = new_id
        return bytes(buffer)


def build_templates(count: int, traces_per_request: int, seed: int) -> list[Template]:
    workload = Workload(seed=seed)
    templates = []
    for _ in range(count):
        # One ResourceSpans per service, as an SDK's batch processor in each process would send.
        by_service: dict[str, list[Span]] = {}
        truths = []
        for _trace in range(traces_per_request):
            spans, truth = workload.trace()
            for service, service_spans in spans.items():
                by_service.setdefault(service, []).extend(service_spans)
            truths.append(truth)
        body = to_request(by_service).SerializeToString()
        offsets = [_find_all(body, t.trace_id) for t in truths]
        templates.append(Template(body, sum(t.spans for t in truths), offsets))
    return templates


def _find_all(body: bytes, needle: bytes) -> list[int]:
    found, start = [], body.find(needle)
    while start != -1:
        found.append(start)
        start = body.find(needle, start + 1)
    return found


@dataclass
class Stats:
    requests: int = 0
    accepted_spans: int = 0
    refused_requests: int = 0
    failed_requests: int = 0
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def run(target: str, rate: float, duration: float, concurrency: int, templates: list[Template]) -> dict[str, object]:
    stats = Stats()
    stop_at = time.monotonic() + duration
    spans_per_request = sum(t.spans for t in templates) / len(templates)
    interval = concurrency * spans_per_request / rate if rate else 0.0

    def worker(index: int) -> None:
        rng = random.Random(index * 7919 + os.getpid())
        channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
        export = channel.unary_unary(EXPORT)
        next_send = time.monotonic() + index * interval / max(concurrency, 1)
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            if interval and now < next_send:
                time.sleep(next_send - now)
            next_send += interval
            template = templates[rng.randrange(len(templates))]
            body = template.fresh(rng)
            started = time.perf_counter()
            try:
                export(body, timeout=10)
                outcome = "ok"
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                outcome = "refused" if code in RETRYABLE else "failed"
            elapsed = time.perf_counter() - started
            with stats.lock:
                stats.requests += 1
                stats.latencies.append(elapsed)
                if outcome == "ok":
                    stats.accepted_spans += template.spans
                elif outcome == "refused":
                    stats.refused_requests += 1
                else:
                    stats.failed_requests += 1
            if outcome == "refused":
                # Back off as an SDK would (outside the lock: the other workers go on). The load then goes on with
                # the next request, not this one again: the refusals are counted, the offered rate stays fixed.
                time.sleep(0.05)
        channel.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies = sorted(stats.latencies)
    return {
        "seconds": elapsed,
        "requests": stats.requests,
        "accepted_spans": stats.accepted_spans,
        "refused_requests": stats.refused_requests,
        "failed_requests": stats.failed_requests,
        "spans_per_request": spans_per_request,
        "p50_ms": _quantile(latencies, 0.50) * 1000,
        "p99_ms": _quantile(latencies, 0.99) * 1000,
    }


def _quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile of sorted ``values``: the smallest value with at least ``q`` of them at or below it."""
    if not values:
        return 0.0
    return values[max(0, math.ceil(q * len(values)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="spans/s; 0 means as fast as accepted (saturation)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--traces-per-request", type=int, default=64)
    parser.add_argument("--templates", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    templates = build_templates(args.templates, args.traces_per_request, args.seed)
    print(json.dumps(run(args.target, args.rate, args.duration, args.concurrency, templates)))


if __name__ == "__main__":
    main()
