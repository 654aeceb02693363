"""Delivery drills with the real agent process: a 20-second backend outage, and a SIGKILL during an outage.

The backends are the OTLP capture server (standing in for Jaeger) and the Loki push API double (Loki cannot be
installed here; see ``LokiDouble``). "Accepted" means the agent's OTLP/HTTP receiver answered 200: from then
on the data is the agent's responsibility.
"""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from agent.testing.workload import Workload, attr
from tests.delivery_doubles import LokiDouble, OtlpCapture
from tests.helpers import AgentProcess, free_port, http_post, wait_until

pytestmark = pytest.mark.integration

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def drill_config(capture: OtlpCapture, loki: LokiDouble, queue_dir: Path | None = None) -> dict[str, Any]:
    storage = {"storage": {"directory": str(queue_dir)}} if queue_dir else {}
    common = {
        "timeout": "2s",
        "retry_on_failure": {"initial_interval": "200ms", "max_interval": "1s", "max_elapsed_time": "5m"},
        "sending_queue": {"num_consumers": 2, **storage},
        "batch": {"flush_timeout": "50ms"},
    }
    return {
        "receivers": {"otlp": {"grpc": {"enabled": False}, "http": {"endpoint": f"127.0.0.1:{free_port()}"}}},
        "exporters": {
            "otlp/jaeger": {"endpoint": capture.grpc_endpoint, "tls": {"insecure": True}, **common},
            "loki": {"endpoint": loki.url, "span_events": "none", **common},
        },
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger"]},
                "logs": {"receivers": ["otlp"], "exporters": ["loki"]},
            },
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{free_port()}"}, "logs": {"level": "info"}},
            "shutdown_timeout": "5s",
        },
    }


class Sender:
    """Sends traces and logs to the agent and remembers what it accepted."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.workload = Workload(seed=21)
        self.span_ids: set[bytes] = set()
        self.log_lines: set[str] = set()
        self._logs_sent = 0

    def wave(self, traces: int = 5, logs: int = 20) -> None:
        for request, _ in self.workload.requests(traces):
            status, body, _ = http_post(self.agent.http_url + "/v1/traces", request.SerializeToString(), PROTOBUF)
            assert status == 200, body
            self.span_ids |= {s.span_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
        request = ExportLogsServiceRequest()
        resource_logs = request.resource_logs.add()
        resource_logs.resource.attributes.append(attr("service.name", "orchestrator"))
        scope_logs = resource_logs.scope_logs.add()
        lines = []
        for _ in range(logs):
            self._logs_sent += 1
            line = f"log line {self._logs_sent}"
            record = scope_logs.log_records.add(time_unix_nano=time.time_ns(), severity_number=9)
            record.body.string_value = line
            lines.append(line)
        status, body, _ = http_post(self.agent.http_url + "/v1/logs", request.SerializeToString(), PROTOBUF)
        assert status == 200, body
        self.log_lines.update(lines)


def received(capture: OtlpCapture, loki: LokiDouble) -> tuple[collections.Counter[bytes], collections.Counter[str]]:
    spans = collections.Counter(span.span_id for span in capture.capture.spans())
    lines = collections.Counter(entry.line for _, entry in loki.entries())
    return spans, lines


def all_arrived(sender: Sender, capture: OtlpCapture, loki: LokiDouble) -> bool:
    spans, lines = received(capture, loki)
    return sender.span_ids <= spans.keys() and sender.log_lines <= lines.keys()


def duplicates(counter: collections.Counter[Any]) -> int:
    return sum(count - 1 for count in counter.values() if count > 1)


def test_a_twenty_second_outage_loses_nothing_and_counts_any_duplicates(tmp_path: Path) -> None:
    capture, loki = OtlpCapture().start(), LokiDouble().start()
    agent = AgentProcess(drill_config(capture, loki), tmp_path).start()
    try:
        sender = Sender(agent)
        sender.wave()
        wait_until(lambda: all_arrived(sender, capture, loki), timeout=20, what="first wave delivered")

        capture.stop()
        loki.stop()
        outage_started = time.monotonic()
        sender.wave()  # accepted while the backends are down
        time.sleep(10)
        sender.wave()
        time.sleep(max(0.0, 20 - (time.monotonic() - outage_started)))
        assert not all_arrived(sender, capture, loki)
        capture.start()
        loki.start()
        sender.wave()

        wait_until(lambda: all_arrived(sender, capture, loki), timeout=40, what="everything delivered after the outage")
        spans, lines = received(capture, loki)
        assert spans.keys() == sender.span_ids
        assert lines.keys() == sender.log_lines
        assert agent.metric("otel_sidecar_exporter_retries_total", exporter="otlp/jaeger") > 0
        assert agent.metric("otel_sidecar_exporter_retries_total", exporter="loki") > 0
        assert agent.metric("otel_sidecar_exporter_send_failed_items_total") == 0
        assert duplicates(spans) <= agent.metric("otel_sidecar_exporter_duplicates_total", exporter="otlp/jaeger")
        assert duplicates(lines) <= agent.metric("otel_sidecar_exporter_duplicates_total", exporter="loki")
        assert agent.stop() == 0
    finally:
        agent.kill()
        capture.stop()
        loki.stop()


def sent_during_an_outage(agent: AgentProcess) -> Sender:
    """Three waves of spans and logs sent to ``agent`` while its backends are down, once its exporters have failed
    a few times: everything is accepted and queued, nothing delivered."""
    sender = Sender(agent)
    for _ in range(3):
        sender.wave()
    wait_until(lambda: agent.metric("otel_sidecar_exporter_retries_total") >= 4, timeout=15, what="failed attempts")
    return sender


def test_data_accepted_before_a_sigkill_during_an_outage_is_delivered_after_the_restart(tmp_path: Path) -> None:
    capture, loki = OtlpCapture(), LokiDouble()  # both down
    config = drill_config(capture, loki, tmp_path / "queue")
    first = AgentProcess(config, tmp_path).start()
    try:
        sender = sent_during_an_outage(first)
        first.process.kill()  # type: ignore[union-attr] - SIGKILL: no shutdown, no flush
        first.process.wait()  # type: ignore[union-attr]
    finally:
        first.kill()

    capture.start()
    loki.start()
    second = AgentProcess(config, tmp_path).start()
    try:
        wait_until(lambda: all_arrived(sender, capture, loki), timeout=30, what="queued data delivered after restart")
        spans, lines = received(capture, loki)
        assert spans.keys() == sender.span_ids
        assert lines.keys() == sender.log_lines
        assert second.metric("otel_sidecar_exporter_persistent_queue_recovered_items_total") == len(
            sender.span_ids
        ) + len(sender.log_lines)
        assert duplicates(spans) <= second.metric("otel_sidecar_exporter_duplicates_total", exporter="otlp/jaeger")
        assert duplicates(lines) <= second.metric("otel_sidecar_exporter_duplicates_total", exporter="loki")
        assert second.stop() == 0
    finally:
        second.kill()
        capture.stop()
        loki.stop()


def test_data_queued_on_disk_during_an_outage_is_delivered_by_the_pipelines_a_reload_starts(tmp_path: Path) -> None:
    """README "Reloading the config": a persistent queue keeps its data for the new pipelines. The backends are down
    through the reload, so everything is still queued on disk when the running pipelines stop."""
    capture, loki = OtlpCapture(), LokiDouble()  # both down
    config = drill_config(capture, loki, tmp_path / "queue")
    agent = AgentProcess(config, tmp_path).start()
    try:
        sender = sent_during_an_outage(agent)
        assert agent.process is not None
        agent.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "config reloaded" in agent.log(), timeout=30, what="the reload")
        capture.start()
        loki.start()
        wait_until(lambda: all_arrived(sender, capture, loki), timeout=30, what="queued data delivered after reload")
        spans, lines = received(capture, loki)
        assert spans.keys() == sender.span_ids
        assert lines.keys() == sender.log_lines
        assert agent.metric("otel_sidecar_exporter_send_failed_items_total") == 0
        assert agent.stop() == 0
    finally:
        agent.kill()
        capture.stop()
        loki.stop()
