"""Micro-benchmark of the ``tail_sampling`` processor's hot path, in process, on a fake clock.

``cpu``: the batches ``make bench`` sends (``bench/loadgen.py`` templates: ~512 spans from 64 traces, one
ResourceSpans per service, ~2% error traces), each with fresh trace ids and parsed outside the timing (as the
receiver hands them over), fed to the sampler at ``--rate`` spans/s of fake time with a tick every
``tick_interval``, as in ``make bench`` (``decision_wait`` = ``decision_wait_after_root`` = 2s, default policies).
Prints CPU µs per span for ``consume``, for the ticks (decide + emit) and both together (best and median of the
rounds: the machine is shared, the best is the signal), and the longest and 99th percentile hold of the event loop
by a tick in ms (a tick decides in slices, as the sampler's timer does).

The decision caches start full (both generations of dropped ids), as in an agent that has run for a while:
their lookups then miss the CPU caches, which a fresh sampler's small tables hide (``--cold-caches``). The
garbage collector runs with CPython's default thresholds, as the agent does (``--tuned-gc``: startup objects
frozen and a young-generation threshold of 50,000, which shows the sampler's cost without most collections).

``memory``: ``decision_wait`` 10s, 10s of batches at ``--rate`` buffered, then the growth of the process per
buffered span: RSS (what ``make bench`` measures), the C heap (``mallinfo2``: upb messages live there) and the
Python heap (``tracemalloc``, in a second process since tracing slows everything and costs memory itself).

    .venv/bin/python bench/micro_tail_sampling.py            # both
    .venv/bin/python bench/micro_tail_sampling.py cpu --rounds 5
    .venv/bin/python bench/micro_tail_sampling.py memory
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import logging
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.component import CreateSettings, Kind, Signal  # noqa: E402
from agent.config.schema import ConfigError, build  # noqa: E402
from agent.config.service import ServiceConfig  # noqa: E402
from agent.processors.tail_sampling.config import TailSamplingConfig  # noqa: E402
from agent.processors.tail_sampling.decision_cache import DroppedCache, KeptCache  # noqa: E402
from agent.processors.tail_sampling.policies import Decision  # noqa: E402
from agent.processors.tail_sampling.sampler import TICK_SLICE_SPANS, TailSampler  # noqa: E402
from agent.telemetry.selfmetrics import SelfMetrics  # noqa: E402
from bench.loadgen import build_templates  # noqa: E402


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sink:
    """The next stage: keeps what it is given (spans are counted after the timing)."""

    def __init__(self) -> None:
        self.batches: list[Any] = []

    def consume(self, batch: Any) -> None:
        self.batches.append(batch)

    def spans(self) -> int:
        return sum(len(ss.spans) for b in self.batches for rs in b.resource_spans for ss in rs.scope_spans)


def sampler(decision_wait: str, clock: FakeClock, sink: Sink) -> TailSampler:
    errors: list[ConfigError] = []
    raw = {"decision_wait": decision_wait, "decision_wait_after_root": decision_wait}
    config = build(TailSamplingConfig, raw, "tail_sampling", errors)
    assert config is not None and not errors, errors
    settings = CreateSettings(
        "tail_sampling", Kind.PROCESSOR, logging.getLogger("bench"), SelfMetrics(), ServiceConfig(), {}
    )
    out = TailSampler(config, settings, clock)
    out.attach(Signal.TRACES, sink)
    return out


def request_bodies(seconds: float, rate: float, seed: int) -> list[bytes]:
    """Serialized requests for ``seconds`` at ``rate`` spans/s, every trace id fresh (as loadgen sends them)."""
    templates = build_templates(32, 64, seed=7)
    rng = random.Random(seed)
    per_request = sum(t.spans for t in templates) / len(templates)
    return [templates[rng.randrange(len(templates))].fresh(rng) for _ in range(int(seconds * rate / per_request))]


TUNED_GC = (50_000, 20, 100)


def prepare_gc(tuned: bool = False) -> None:
    """A collection first, so that the setup's garbage is not collected inside a measurement; with ``tuned``,
    startup objects frozen and fewer young collections. The agent sets no threshold: the default measures what
    it runs (in ``make bench`` the thresholds move the full pipeline by no more than its noise, about 3%)."""
    gc.collect()
    if tuned:
        gc.freeze()
        gc.set_threshold(*TUNED_GC)


def full_caches() -> tuple[KeptCache[Decision], DroppedCache]:
    """Decision caches as after some minutes at any rate: full (both dropped-id generations), so lookups miss
    the CPU caches as they do in a long-running agent."""
    config = TailSamplingConfig().decision_cache
    rng = random.Random(3)
    kept: KeptCache[Decision] = KeptCache(config.kept_size)
    decision = Decision(True, "standard", "probabilistic", 0)
    for _ in range(config.kept_size):
        kept.put(rng.randbytes(16), decision)
    dropped = DroppedCache(config.dropped_size)
    dropped.add_all([rng.randbytes(16) for _ in range(2 * config.dropped_size - 1)])
    return kept, dropped


def run_cpu_round(bodies: list[bytes], rate: float, caches: tuple[Any, Any] | None) -> dict[str, float]:
    clock, sink = FakeClock(), Sink()
    target = sampler("2s", clock, sink)
    if caches:
        target.kept, target.dropped = copy.deepcopy(caches)  # each round replays the same trace ids
    tick_interval = float(target._config.tick_interval)
    next_tick = clock.now + tick_interval
    consume_s = tick_s = 0.0
    tick_ms: list[float] = []
    spans = 0
    process_time, perf_counter = time.process_time, time.perf_counter

    def tick() -> None:
        """As the sampler's timer does: slices of TICK_SLICE_SPANS, each one hold of the event loop."""
        nonlocal tick_s
        more = True
        while more:
            wall, cpu = perf_counter(), process_time()
            more = target.tick(TICK_SLICE_SPANS)
            tick_s += process_time() - cpu
            tick_ms.append((perf_counter() - wall) * 1e3)

    for body in bodies:
        batch = ExportTraceServiceRequest.FromString(body)
        count = sum(len(ss.spans) for rs in batch.resource_spans for ss in rs.scope_spans)
        cpu = process_time()
        target.consume_spans(batch, len(body))  # the size the receiver passes on
        consume_s += process_time() - cpu
        spans += count
        del batch
        clock.now += count / rate
        while clock.now >= next_tick:
            tick()
            next_tick += tick_interval
    clock.now += 3.0  # decide what is left: the same work as at steady state, only later
    tick()
    assert len(target.buffer) == 0
    tick_ms.sort()
    return {
        "consume": consume_s / spans * 1e6,
        "tick": tick_s / spans * 1e6,
        "total": (consume_s + tick_s) / spans * 1e6,
        "max_tick_ms": tick_ms[-1],
        "p99_tick_ms": tick_ms[int(0.99 * (len(tick_ms) - 1))],
        "kept_share": sink.spans() / spans,
    }


def bench_cpu(rounds: int, seconds: float, rate: float, cold_caches: bool, tuned_gc: bool) -> dict[str, Any]:
    bodies = request_bodies(seconds, rate, seed=1)
    caches = None if cold_caches else full_caches()
    prepare_gc(tuned_gc)
    results = [run_cpu_round(bodies, rate, caches) for _ in range(rounds)]
    out: dict[str, Any] = {"spans_per_round": int(seconds * rate), "rate": rate}
    for key in ("consume", "tick", "total"):
        values = [r[key] for r in results]
        out[f"{key}_us_per_span"] = {"best": min(values), "median": statistics.median(values)}
    longest = [r["max_tick_ms"] for r in results]
    out["max_tick_ms"] = {"best": min(longest), "worst": max(longest)}
    out["p99_tick_ms"] = statistics.median(r["p99_tick_ms"] for r in results)
    out["kept_share"] = results[0]["kept_share"]
    return out


# --- memory ----------------------------------------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ]


def c_heap_bytes() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def probe_memory(probe: str, rate: float) -> dict[str, float]:
    """Buffer 10s of batches at ``decision_wait: 10s``; growth per buffered span, as ``probe`` sees it."""
    import tracemalloc

    bodies = request_bodies(10.0, rate, seed=2)
    clock, sink = FakeClock(), Sink()
    target = sampler("10s", clock, sink)
    tick_interval = float(target._config.tick_interval)
    next_tick = clock.now + tick_interval
    prepare_gc()
    if probe == "tracemalloc":
        tracemalloc.start()
    before = {"rss": rss_bytes(), "c_heap": c_heap_bytes()}
    # The bodies stay alive to the end: they are in ``before``, and releasing them here would take their bytes
    # off the growth measured (a quarter of it).
    for body in bodies:
        batch = ExportTraceServiceRequest.FromString(body)
        target.consume_spans(batch, len(body))
        clock.now += sum(len(ss.spans) for rs in batch.resource_spans for ss in rs.scope_spans) / rate
        del batch
        while clock.now >= next_tick:
            target.tick()
            next_tick += tick_interval
    gc.collect()
    buffered = target.buffer.spans
    if probe == "tracemalloc":
        python_heap = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return {"buffered_spans": buffered, "python_heap_per_span": python_heap / buffered}
    return {
        "buffered_spans": buffered,
        "rss_per_span": (rss_bytes() - before["rss"]) / buffered,
        "c_heap_per_span": (c_heap_bytes() - before["c_heap"]) / buffered,
        "accounted_bytes_per_span": target.buffer.bytes / buffered,
    }


def bench_memory(rate: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for probe in ("rss", "tracemalloc"):
        command = [sys.executable, __file__, "_probe", probe, "--rate", str(rate)]
        result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
        out.update(json.loads(result.stdout.strip().splitlines()[-1]))
    return out


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="all", choices=("all", "cpu", "memory", "_probe"))
    parser.add_argument("probe", nargs="?", default="rss", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0, help="fake seconds of load per cpu round")
    parser.add_argument("--rate", type=float, default=20_000.0, help="spans/s of fake time")
    parser.add_argument("--cold-caches", action="store_true", help="start each round with empty decision caches")
    parser.add_argument("--tuned-gc", action="store_true", help="freeze startup objects, young threshold 50,000")
    args = parser.parse_args()
    if args.mode == "_probe":
        print(json.dumps(probe_memory(args.probe, args.rate)))
        return 0
    report: dict[str, Any] = {}
    if args.mode in ("all", "cpu"):
        report["cpu"] = bench_cpu(args.rounds, args.seconds, args.rate, args.cold_caches, args.tuned_gc)
    if args.mode in ("all", "memory"):
        report["memory"] = bench_memory(args.rate)
    print(json.dumps(_rounded(report), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
