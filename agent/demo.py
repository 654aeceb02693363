"""``make demo``: run the agent with its embedded default config under a synthetic orchestrator load, and show
what it did.

The load is a stream of workflow runs (LLM calls with token counts, vector searches, tool calls, about 2%
failing) sent over OTLP/gRPC, the way an orchestrator's SDK would send them, plus a few log records over
OTLP/HTTP. The agent runs as its own process, exactly as ``otel-sidecar run`` would.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber

from agent.component import Signal
from agent.otlp import json_codec
from agent.otlp.signals import SPECS
from agent.testing.workload import Workload, resource_for

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# The embedded config's ports and the variables that move them; each taken if free, else a free one instead.
DEFAULT_PORTS = {
    "OTEL_SIDECAR_GRPC_ENDPOINT": 4317,
    "OTEL_SIDECAR_HTTP_ENDPOINT": 4318,
    "OTEL_SIDECAR_ADMIN_ENDPOINT": 13133,
    "OTEL_SIDECAR_METRICS_ENDPOINT": 9464,
}


@dataclass(frozen=True)
class Endpoints:
    """Where the demo's agent listens, on 127.0.0.1 only."""

    ports: dict[str, int]

    def address(self, variable: str) -> str:
        return f"127.0.0.1:{self.ports[variable]}"

    @property
    def grpc(self) -> str:
        return self.address("OTEL_SIDECAR_GRPC_ENDPOINT")

    @property
    def http(self) -> str:
        return "http://" + self.address("OTEL_SIDECAR_HTTP_ENDPOINT")

    @property
    def admin(self) -> str:
        return "http://" + self.address("OTEL_SIDECAR_ADMIN_ENDPOINT")

    @property
    def prometheus(self) -> str:
        return "http://" + self.address("OTEL_SIDECAR_METRICS_ENDPOINT") + "/metrics"

    def environment(self) -> dict[str, str]:
        return {variable: self.address(variable) for variable in self.ports}


def choose_endpoints() -> Endpoints:
    """The default ports where they are free; another free port for each one in use (an agent or a Collector
    already running here), so that the demo still runs. Told, so the printed addresses are not a surprise."""
    ports = {}
    for variable, default in DEFAULT_PORTS.items():
        ports[variable] = _free_port(default)
        if ports[variable] != default:
            print(f"note: port {default} is in use; the demo's agent listens on {ports[variable]} instead")
    return Endpoints(ports)


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--traces", type=int, default=2000, help="workflow runs to send (default 2000)")
    parser.add_argument("--out", default=None, help="directory for the file exporter (default: a temp dir)")
    args = parser.parse_args()
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="otel-sidecar-demo-"))
    endpoints = choose_endpoints()
    env = {
        **os.environ,
        **endpoints.environment(),
        "OTEL_SIDECAR_FILE_PATH": str(out_dir),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = out_dir / "agent.log"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"starting: otel-sidecar run   (embedded default config; output in {out_dir})")
    with open(log_path, "wb") as log:
        agent = subprocess.Popen([sys.executable, "-m", "agent", "run"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        if not _wait_ready(agent, endpoints.admin):
            print(f"the agent did not become ready; its log ({log_path}):\n{log_path.read_text()}")
            return 1
        truth = _send_load(args.traces, endpoints.grpc)
        _send_logs(endpoints.http)
        print("waiting: traces are decided 6s after their root span; span metrics flush every 5s")
        self_metrics = _wait_for(endpoints.admin + "/metrics", _sampler_idle, timeout=20)
        # A new series is scraped at zero once (so that Prometheus's rate() counts its first increments): wait
        # for the values.
        span_metrics = _wait_for(endpoints.prometheus, _workflows_counted, 15)
        print("stopping: SIGTERM (the agent flushes everything buffered, then exits)")
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
    _report(truth, self_metrics, span_metrics, out_dir, code, endpoints)
    return 0 if code == 0 else 1


def _workflows_counted(text: str) -> bool:
    return sum(value for _, value in _samples(text, "orchestrator_workflow_executions_total{")) > 0


def _sampler_idle(text: str) -> bool:
    buffered = [value for name, value in _samples(text, "otel_sidecar_sampling_traces_buffered")]
    return bool(buffered) and sum(buffered) == 0 and "otel_sidecar_sampling_decisions_total{" in text


def _wait_for(url: str, done: Callable[[str], bool], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    text = _get(url)
    while not done(text) and time.monotonic() < deadline:
        time.sleep(0.25)
        text = _get(url)
    return text


def _wait_ready(agent: subprocess.Popen[bytes], admin: str) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            return False
        if _get(admin + "/health/ready"):
            return True
        time.sleep(0.1)
    return False


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def _send_load(traces: int, target: str) -> dict[str, int]:
    channel = grpc.insecure_channel(target)
    export = channel.unary_unary(TRACE_EXPORT)
    counts: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    for request, truths in Workload(seed=42).requests(traces):
        for attempt in range(50):
            try:
                export(request.SerializeToString(), timeout=5)
                break
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE or attempt == 49:
                    raise
                counts["refused_and_retried"] += 1
                time.sleep(0.1)
        for truth in truths:
            counts["traces"] += 1
            counts["spans"] += truth.spans
            counts["error_traces"] += truth.error
    channel.close()
    elapsed = time.monotonic() - started
    print(f"sent: {counts['traces']} workflow traces, {counts['spans']} spans over OTLP/gRPC in {elapsed:.1f}s")
    return dict(counts)


def _send_logs(http_url: str) -> None:
    records = [
        LogRecord(
            time_unix_nano=time.time_ns(),
            severity_number=SeverityNumber.SEVERITY_NUMBER_ERROR if i % 5 == 0 else SeverityNumber.SEVERITY_NUMBER_INFO,
            severity_text="ERROR" if i % 5 == 0 else "INFO",
            body=AnyValue(string_value=f"step {i} finished"),
        )
        for i in range(20)
    ]
    request = ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource_for("orchestrator"), scope_logs=[ScopeLogs(log_records=records)])]
    )
    body = json_codec.encode(request)
    http = urllib.request.Request(
        http_url + "/v1/logs", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(http, timeout=5):
        pass
    print("sent: 20 log records over OTLP/HTTP (JSON)")


def _samples(text: str, prefix: str) -> list[tuple[str, float]]:
    rows = []
    for line in text.splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            rows.append((name, float(value)))
    return rows


def _report(
    truth: dict[str, int], self_metrics: str, span_metrics: str, out_dir: Path, code: int, endpoints: Endpoints
) -> None:
    print(f"\n== received (the agent's own metrics, {endpoints.admin}/metrics) ==")
    for labels, value in _labelled(self_metrics, "otel_sidecar_receiver_accepted_items_total"):
        item_name = SPECS[Signal(labels["signal"])].item_name  # the counter counts items: spans, not traces
        print(f"  {value:>9.0f} {item_name} over {labels['transport']}")
    print("\n== tail sampling decisions (traces) ==")
    for labels, value in _labelled(self_metrics, "otel_sidecar_sampling_decisions_total"):
        print(f"  {value:>9.0f} {labels['decision']:<5} by policy {labels['policy']}")
    print(f"\n== derived from 100% of spans before sampling ({endpoints.prometheus}) ==")
    for labels, value in _labelled(span_metrics, "orchestrator_workflow_executions_total"):
        print(f"  {value:>9.0f} workflow runs   {labels['workflow_name']:<16} {labels['status']}")
    for labels, value in _labelled(span_metrics, "orchestrator_llm_tokens_total"):
        print(f"  {value:>9.0f} tokens          {labels['model']:<28} {labels['type']}")
    for labels, value in _labelled(span_metrics, "orchestrator_llm_cost_usd_total"):
        print(f"  {value:>9.4f} USD             {labels['model']}")
    print("\n== written by the file exporter ==")
    for spec in SPECS.values():
        path = out_dir / f"{spec.signal.value}.jsonl"
        if path.exists():
            requests = [json_codec.decode(line.encode(), spec.request_type) for line in path.read_text().splitlines()]
            items = sum(spec.count_items(r) for r in requests)
            print(f"  {path}: {len(requests)} export requests, {items} {spec.item_name}")
    classes = _traces_by_class(out_dir / "traces.jsonl")
    sent, errors = truth.get("traces", 0), truth.get("error_traces", 0)
    print(f"\n  traces sent: {sent} ({errors} with an error); kept by retention class: {dict(sorted(classes.items()))}")
    print(f"  agent exit code: {code}; agent log: {out_dir / 'agent.log'}")


def _labelled(text: str, family: str) -> list[tuple[dict[str, str], float]]:
    rows = []
    for name, value in _samples(text, family + "{"):
        labels = dict(part.split("=", 1) for part in name.split("{", 1)[1].rstrip("}").split('",') if "=" in part)
        rows.append(({k: v.strip('"') for k, v in labels.items()}, value))
    return rows


def _traces_by_class(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    classes: dict[str, set[bytes]] = collections.defaultdict(set)
    for line in path.read_text().splitlines():
        for rs in json_codec.decode(line.encode(), ExportTraceServiceRequest).resource_spans:
            attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                classes[attrs.get("retention.class", "unclassified")].update(s.trace_id for s in ss.spans)
    return {name: len(ids) for name, ids in classes.items()}


if __name__ == "__main__":
    raise SystemExit(main())
