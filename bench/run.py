"""``make bench``: the agent's CPU per span, throughput, latency and memory, side by side with rotel in one run.

Scenarios (each against a fresh process, load from a separate load-generator process):
  rotel            rotel (a Rust OTLP collector) receiving into its blackhole exporter: the reference
  agent-receive    the agent receiving into the ``nop`` exporter: the floor of the Python receive path
  agent-full       the full pipeline: receive → span metrics → tail sampling → redaction → OTLP export
                   (to a second rotel with a blackhole exporter, the "local sink")
  agent-sidecar    a sidecar in front of a gateway tier: span metrics, redaction, trace-id routing
  agent-gateway    a gateway: tail sampling and OTLP export (for sizing the tier)
Each runs at saturation (throughput, CPU per span) and at a fixed 20k spans/s (client-side Export latency,
measured after a 3 s warm-up and before the saturation run). The two saturation runs the ratio is taken from
(rotel and the full pipeline) are repeated (``--repeat``, default 3) and their median is reported.
The full pipeline also runs with ``decision_wait: 10s`` to measure memory per buffered span; overloaded by 16
concurrent senders (refusals, memory through the run, items lost); and, like rotel, once more at saturation
with small requests (about 64 spans each) for the cost of a request.
Results are printed as a table and written to ``bench/results/<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Requests of 8 traces (about 64 spans) instead of 64 (about 512, an SDK batch processor's default batch): what a
# request costs whatever its size shows here.
SMALL_BATCH_TRACES = 8
WARM_UP_SECONDS = 3.0
OVERLOAD_SENDERS = 16  # concurrent senders in the overload run (4 elsewhere)
sys.path.insert(0, str(REPO))

from tests.helpers import free_port, rotel_command, rotel_environment  # noqa: E402


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    name: str

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime, all threads

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def peak_rss_bytes(self) -> int:
        """The highest RSS since ``reset_peak_rss`` (else since the process started)."""
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def reset_peak_rss(self) -> None:
        """Start the peak over at the current RSS: a process serves several scenarios, and each reports its own."""
        Path(f"/proc/{self.popen.pid}/clear_refs").write_text("5")

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()


def start_rotel(workdir: Path, exporter: str = "blackhole") -> tuple[Process, str]:
    grpc_port = free_port()
    command = rotel_command(
        "start",
        "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
        "--otlp-http-endpoint", f"127.0.0.1:{free_port()}",
        "--exporter", exporter,
        "--pid-file", str(workdir / f"rotel-{grpc_port}.pid"),
    )  # fmt: skip
    log_path = workdir / f"rotel-{grpc_port}.log"
    with open(log_path, "wb") as log:  # the process has its own copy of the descriptor
        popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=rotel_environment())
    _wait_port(grpc_port, popen, log_path)
    return Process(popen, "rotel"), f"127.0.0.1:{grpc_port}"


def start_agent(workdir: Path, config: dict[str, Any], admin: str) -> Process:
    path = workdir / f"agent-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    with open(workdir / "agent.log", "ab") as log:  # the process has its own copy of the descriptor
        popen = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"agent exited at start; see {workdir / 'agent.log'}")
        if _get(f"http://{admin}/health/ready")[0] == 200:
            return Process(popen, "agent")
        time.sleep(0.1)
    raise RuntimeError("agent did not become ready")


def agent_config(kind: str, sink: str | None, decision_wait: str = "2s") -> tuple[dict[str, Any], str, str]:
    grpc_endpoint, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    receivers = {"otlp": {"grpc": {"endpoint": grpc_endpoint, "max_recv_msg_size_mib": 64}, "http": {"enabled": False}}}
    service: dict[str, Any] = {"telemetry": {"admin": {"endpoint": admin}, "logs": {"level": "warning"}}}
    if kind == "receive":
        config = {"receivers": receivers, "exporters": {"nop": {}}}
        service["pipelines"] = {"traces": {"receivers": ["otlp"], "exporters": ["nop"]}}
    else:
        builder = {"full": full_pipeline, "sidecar": sidecar_pipeline, "gateway": gateway_pipeline}[kind]
        config = builder(receivers, sink, decision_wait, free_port())
        service["pipelines"] = config.pop("pipelines")
    config["service"] = service
    return config, grpc_endpoint, admin


# As every shipped config has it, first in each pipeline (on this machine, without a container limit, it never
# refuses: what is measured is its cost).
SHIPPED_MEMORY_LIMITER = {"limit_percentage": 80, "spike_limit_percentage": 25}


def full_pipeline(receivers: dict[str, Any], sink: str | None, decision_wait: str, metrics_port: int) -> dict[str, Any]:
    """receive → span metrics (before sampling) → tail sampling → redaction → OTLP export to the sink."""
    return {
        "receivers": receivers,
        "connectors": {"spanmetrics": {}},
        "processors": {
            "memory_limiter": SHIPPED_MEMORY_LIMITER,
            "tail_sampling": {"decision_wait": decision_wait, "decision_wait_after_root": decision_wait},
            "redaction": {},
        },
        "exporters": {
            "otlp": {"endpoint": sink, "tls": {"insecure": True}},
            "prometheus": {"endpoint": f"127.0.0.1:{metrics_port}"},
        },
        "pipelines": {
            "traces/spanmetrics": {"receivers": ["otlp"], "exporters": ["spanmetrics"]},
            "traces": {
                "receivers": ["otlp"],
                "processors": ["memory_limiter", "tail_sampling", "redaction"],
                "exporters": ["otlp"],
            },
            "metrics": {"receivers": ["spanmetrics"], "exporters": ["prometheus"]},
        },
    }


def sidecar_pipeline(receivers: dict[str, Any], sink: str | None, _wait: str, metrics_port: int) -> dict[str, Any]:
    """Sidecar in front of a gateway tier: span metrics, redaction, trace-id routing (to the sink as one gateway)."""
    return {
        "receivers": receivers,
        "connectors": {"spanmetrics": {"exemplars": {"enabled": False}}},
        "processors": {"memory_limiter": SHIPPED_MEMORY_LIMITER, "redaction": {}},
        "exporters": {
            "loadbalancing": {"protocol": {"tls": {"insecure": True}}, "resolver": {"static": {"hostnames": [sink]}}},
            "prometheus": {"endpoint": f"127.0.0.1:{metrics_port}"},
        },
        "pipelines": {
            "traces/spanmetrics": {"receivers": ["otlp"], "exporters": ["spanmetrics"]},
            "traces": {
                "receivers": ["otlp"],
                "processors": ["memory_limiter", "redaction"],
                "exporters": ["loadbalancing"],
            },
            "metrics": {"receivers": ["spanmetrics"], "exporters": ["prometheus"]},
        },
    }


def gateway_pipeline(receivers: dict[str, Any], sink: str | None, decision_wait: str, _port: int) -> dict[str, Any]:
    """Gateway: tail sampling and OTLP export, no span metrics."""
    return {
        "receivers": receivers,
        "processors": {
            "memory_limiter": SHIPPED_MEMORY_LIMITER,
            "tail_sampling": {"decision_wait": decision_wait, "decision_wait_after_root": decision_wait},
        },
        "exporters": {"otlp": {"endpoint": sink, "tls": {"insecure": True}}},
        "pipelines": {
            "traces": {"receivers": ["otlp"], "processors": ["memory_limiter", "tail_sampling"], "exporters": ["otlp"]}
        },
    }


def load(
    target: str, rate: float, duration: float, concurrency: int = 4, traces_per_request: int = 64
) -> dict[str, Any]:
    command = [
        sys.executable, str(HERE / "loadgen.py"), "--target", target, "--rate", str(rate),
        "--duration", str(duration), "--concurrency", str(concurrency),
        "--traces-per-request", str(traces_per_request),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO, env=_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(
    process: Process, target: str, rate: float, duration: float, traces_per_request: int = 64
) -> dict[str, Any]:
    process.reset_peak_rss()
    cpu_before = process.cpu_seconds()
    result = load(target, rate, duration, traces_per_request=traces_per_request)
    cpu = process.cpu_seconds() - cpu_before
    spans = result["accepted_spans"]
    result.update(
        {
            "cpu_seconds": cpu,
            "cpu_us_per_span": cpu / spans * 1e6 if spans else None,
            "cpu_s_per_million_spans": cpu / spans * 1e6 if spans else None,
            "spans_per_second": spans / result["seconds"],
            "spans_per_cpu_second": spans / cpu if cpu else None,
            "rss_bytes": process.rss_bytes(),
            "peak_rss_bytes": process.peak_rss_bytes(),
        }
    )
    return result


def warm_up(target: str, rate: float = 0.0) -> None:
    """Load before a measurement, so that it starts in steady state (span-metric series made, decisions
    under way) and takes in a backlog of work queued before it as it leaves one after it (the traces of its last
    2 s are decided after the CPU is read)."""
    load(target, rate, WARM_UP_SECONDS)


def measure_median(process: Process, target: str, duration: float, repeat: int) -> dict[str, Any]:
    """``repeat`` saturation runs against the same process; the run with the median CPU per span, with every
    run's figure beside it. The ratio to rotel is taken from these: one 10 s run of either varies by up to a
    quarter on a shared 2-core machine."""
    runs = sorted((measure(process, target, 0, duration) for _ in range(repeat)), key=lambda r: r["cpu_us_per_span"])
    median = runs[len(runs) // 2]
    median["cpu_us_per_span_runs"] = [r["cpu_us_per_span"] for r in runs]
    return median


def overload(workdir: Path, sink_target: str, duration: float) -> dict[str, Any]:
    """The full pipeline offered more than it can take (16 concurrent senders, four times the other runs): what
    it does about it (slower answers, or retryable refusals once its ingest queue is full), whether its memory
    stays bounded (RSS sampled through the run) and whether it loses anything it accepted (counted once the
    pipeline has drained).
    """
    config, target, admin = agent_config("full", sink_target)
    agent = start_agent(workdir, config, admin)
    try:
        warm_up(target)
        accepted_before = _metric(admin, "otel_sidecar_receiver_accepted_items_total")
        rss: list[int] = []
        stop = threading.Event()

        def sample_rss() -> None:
            while not stop.wait(0.5):
                rss.append(agent.rss_bytes())

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        agent.reset_peak_rss()
        cpu_before = agent.cpu_seconds()
        result = load(target, 0, duration, concurrency=OVERLOAD_SENDERS)
        result["cpu_seconds"] = agent.cpu_seconds() - cpu_before
        stop.set()
        sampler.join()
        time.sleep(6.0)  # decision_wait (2 s) and the export of the last kept traces
        accepted = _metric(admin, "otel_sidecar_receiver_accepted_items_total") - accepted_before
        third = max(len(rss) // 3, 1)
        result.update(
            {
                "senders": OVERLOAD_SENDERS,
                "spans_per_second": result["accepted_spans"] / result["seconds"],
                "cpu_us_per_span": result["cpu_seconds"] / result["accepted_spans"] * 1e6,
                "cpu_s_per_million_spans": result["cpu_seconds"] / result["accepted_spans"] * 1e6,
                "agent_accepted_spans": accepted,
                "lost_items": _lost_items(admin) + _unconfirmed_acceptances(result["accepted_spans"], accepted),
                "rss_after_first_third_bytes": max(rss[:third]),
                "rss_last_third_bytes": max(rss[-third:]),
                "rss_bytes": agent.rss_bytes(),
                "peak_rss_bytes": agent.peak_rss_bytes(),
            }
        )
        return result
    finally:
        agent.stop()


def _metric(admin: str, name: str) -> float:
    text = _get(f"http://{admin}/metrics")[1]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def _lost_items(admin: str) -> float:
    """Items the agent accepted and then failed to pass on: every counter of data given up or rejected by the
    backend (a partial success), summed."""
    return sum(
        _metric(admin, name)
        for name in (
            "otel_sidecar_exporter_send_failed_items_total",
            "otel_sidecar_exporter_rejected_items_total",
            "otel_sidecar_ingest_dropped_items_total",
            "otel_sidecar_sampling_lost_items_total",
        )
    )


def _unconfirmed_acceptances(client_accepted: float, agent_accepted: float) -> float:
    """Spans the sender was told were accepted and the agent never counted. The other way round (the agent took a
    request whose answer the sender did not get in time: ``failed_requests``) is nothing lost, and must not
    cancel a loss out."""
    return max(0.0, client_accepted - agent_accepted)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:  # a library missing, a port taken: say what it said
            raise RuntimeError(f"rotel exited with {process.returncode}: {log.read_text(errors='replace')}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def run_all(duration: float, rate: float, repeat: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="otel-sidecar-bench-") as tmp:
        workdir = Path(tmp)
        rotel, target = start_rotel(workdir)
        try:
            warm_up(target)
            results["rotel_saturation"] = measure_median(rotel, target, duration, repeat)
            results["rotel_fixed"] = measure(rotel, target, rate, duration)
            results["rotel_small_batches"] = measure(rotel, target, 0, duration, SMALL_BATCH_TRACES)
        finally:
            rotel.stop()

        config, target, admin = agent_config("receive", None)
        agent = start_agent(workdir, config, admin)
        try:
            warm_up(target)
            results["agent_receive_saturation"] = measure(agent, target, 0, duration)
        finally:
            agent.stop()

        sink, sink_target = start_rotel(workdir)
        try:
            config, target, admin = agent_config("full", sink_target)
            agent = start_agent(workdir, config, admin)
            try:
                # Latency in steady state: after a warm-up (first span-metric series, first decisions), and before
                # the saturation run, whose backlog would still be draining.
                warm_up(target, rate)
                lost_before = _lost_items(admin)
                accepted_before = _metric(admin, "otel_sidecar_receiver_accepted_items_total")
                fixed = results["agent_full_fixed"] = measure(agent, target, rate, duration)
                time.sleep(3.0)  # let the last traces be decided and exported
                fixed["agent_accepted_spans"] = _metric(admin, "otel_sidecar_receiver_accepted_items_total") - (
                    accepted_before
                )
                fixed["lost_items"] = (
                    _lost_items(admin)
                    - lost_before
                    + _unconfirmed_acceptances(fixed["accepted_spans"], fixed["agent_accepted_spans"])
                )
                results["agent_full_saturation"] = measure_median(agent, target, duration, repeat)
                results["agent_full_small_batches"] = measure(agent, target, 0, duration, SMALL_BATCH_TRACES)
            finally:
                results["agent_full_exit_code"] = agent.stop()

            results["agent_full_overload"] = overload(workdir, sink_target, duration)

            for role in ("sidecar", "gateway"):
                config, target, admin = agent_config(role, sink_target)
                agent = start_agent(workdir, config, admin)
                try:
                    warm_up(target)
                    results[f"agent_{role}_saturation"] = measure(agent, target, 0, duration)
                finally:
                    agent.stop()

            config, target, admin = agent_config("full", sink_target, decision_wait="10s")
            agent = start_agent(workdir, config, admin)
            try:
                baseline = agent.rss_bytes()
                memory = measure(agent, target, rate, 12.0)
                buffered = _metric(admin, "otel_sidecar_sampling_spans_buffered")
                memory["buffered_spans"] = buffered
                memory["rss_per_buffered_span_bytes"] = (agent.rss_bytes() - baseline) / buffered if buffered else None
                results["agent_full_memory"] = memory
            finally:
                agent.stop()
        finally:
            sink.stop()
    return results


def summarize(results: dict[str, Any]) -> str:
    rows = [("scenario", "spans/s", "CPU µs/span", "CPU s/1M spans", "p50 ms", "p99 ms", "peak RSS MiB", "refused req")]
    for name, r in results.items():
        if not isinstance(r, dict):
            continue
        rows.append(
            (
                name,
                f"{r['spans_per_second']:,.0f}",
                f"{r['cpu_us_per_span']:.2f}" if r.get("cpu_us_per_span") else "-",
                f"{r['cpu_s_per_million_spans']:.2f}" if r.get("cpu_s_per_million_spans") else "-",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['peak_rss_bytes'] / 2**20:.0f}",
                str(r["refused_requests"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    full, rotel = results.get("agent_full_saturation"), results.get("rotel_saturation")
    if full and rotel and full.get("cpu_us_per_span") and rotel.get("cpu_us_per_span"):
        ratio = full["cpu_us_per_span"] / rotel["cpu_us_per_span"]
        runs = " / ".join(
            f"{name} {', '.join(f'{v:.2f}' for v in r.get('cpu_us_per_span_runs', []))}"
            for name, r in (("agent", full), ("rotel", rotel))
        )
        lines.append(f"\nfull pipeline CPU per span ÷ rotel CPU per span (medians of runs, µs: {runs}): {ratio:.2f}")
    full_fixed, rotel_fixed = results.get("agent_full_fixed"), results.get("rotel_fixed")
    if full_fixed and rotel_fixed and full_fixed.get("cpu_us_per_span") and rotel_fixed.get("cpu_us_per_span"):
        # rotel's cost per span depends on its load (it is not CPU-bound at "saturation": the senders wait on its
        # answers), so the ratio at the same offered rate is shown beside the one at saturation.
        lines.append(
            f"the same at {full_fixed['spans_per_second']:,.0f} spans/s for both (one run each, µs: "
            f"{full_fixed['cpu_us_per_span']:.2f} / {rotel_fixed['cpu_us_per_span']:.2f}): "
            f"{full_fixed['cpu_us_per_span'] / rotel_fixed['cpu_us_per_span']:.2f}"
        )
    fixed = results.get("agent_full_fixed")
    if fixed and "lost_items" in fixed:
        lines.append(
            f"items lost at {fixed['spans_per_second']:,.0f} spans/s (below saturation): {fixed['lost_items']:.0f}"
        )
    over = results.get("agent_full_overload")
    if over:
        lines.append(
            f"overload ({over['senders']} senders): p99 Export {over['p99_ms']:.0f} ms, "
            f"{over['refused_requests']:,} of {over['requests']:,} requests refused (retryable), "
            f"RSS {over['rss_after_first_third_bytes'] / 2**20:.0f} MiB after the first third, "
            f"{over['rss_last_third_bytes'] / 2**20:.0f} MiB in the last; items lost: {over['lost_items']:.0f}"
        )
    memory = results.get("agent_full_memory")
    if memory and memory.get("rss_per_buffered_span_bytes"):
        lines.append(
            f"RSS per buffered span (decision_wait 10s, {memory['buffered_spans']:,.0f} spans buffered): "
            f"{memory['rss_per_buffered_span_bytes']:.0f} bytes"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario (default 10)")
    parser.add_argument("--rate", type=float, default=20000.0, help="spans/s for the fixed-rate runs")
    parser.add_argument(
        "--repeat", type=int, default=3, help="saturation runs of rotel and of the full pipeline; the median is used"
    )
    args = parser.parse_args()
    started = time.time()
    results = run_all(args.duration, args.rate, args.repeat)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "duration_per_scenario_s": args.duration,
        "fixed_rate_spans_per_s": args.rate,
        "saturation_repeats": args.repeat,
        "results": results,
    }
    out = HERE / "results" / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + ".json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(summarize(results))
    print(f"\nwritten: {out.relative_to(REPO)}  (total {time.time() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
