"""The agent as a real process: real OpenTelemetry SDK and rotel clients, its CLI, its admin endpoint and shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from agent.testing.workload import Workload
from tests.helpers import (
    REPO,
    AgentProcess,
    base_config,
    free_port,
    http_get,
    output_spans,
    read_output,
    rotel_command,
    rotel_environment,
    running_agent,
    wait_until,
)


def emit_orchestrator_spans(exporter: SpanExporter) -> InMemorySpanExporter:
    """Spans with every kind of field the OTLP model has, sent through ``exporter`` and also kept in memory."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "orchestrator", "service.version": "1.4.2", "pod.ordinal": 3})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer(
        "orchestrator.workflows", "2.0.1", schema_url="https://opentelemetry.io/schemas/1.26.0"
    )
    with tracer.start_as_current_span("workflow rag-pipeline", kind=SpanKind.SERVER) as root:
        root.set_attributes(
            {"workflow.name": "rag-pipeline", "retries": 2, "score": 0.75, "cached": False, "tags": ["a", "b"]}
        )
        with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as llm:
            llm.set_attributes({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1200})
            llm.add_event("gen_ai.content.prompt", {"length": 42})
            llm.set_status(Status(StatusCode.ERROR, "rate limited"))
            llm.record_exception(RuntimeError("429 from provider"))
        link_context = root.get_span_context()
    with tracer.start_as_current_span("tool web_search", links=[Link(link_context, {"link.reason": "follow-up"})]):
        pass
    provider.shutdown()
    return memory


def spans_by_id(out_dir: Path) -> dict[bytes, tuple[object, object, object]]:
    return {span.span_id: (resource, scope, span) for resource, scope, span in output_spans(out_dir)}


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_every_span_from_the_sdk_comes_out_identical(tmp_path: Path, transport: str) -> None:
    with running_agent(tmp_path) as agent:
        exporter = (
            GrpcSpanExporter(endpoint=agent.grpc_endpoint, insecure=True)
            if transport == "grpc"
            else HttpSpanExporter(endpoint=agent.http_url + "/v1/traces")
        )
        memory = emit_orchestrator_spans(exporter)
        expected = encode_spans(memory.get_finished_spans())
        want = {
            span.span_id: (rs.resource, ss.scope, span)
            for rs in expected.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        }
        wait_until(lambda: len(output_spans(agent.out_dir)) == len(want), what="all spans written")
        assert agent.stop() == 0
    got = spans_by_id(agent.out_dir)
    assert set(got) == set(want)
    for span_id, (resource, scope, span) in want.items():
        assert got[span_id] == (resource, scope, span)


def _listening(process: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    """Whether ``process`` accepts connections on ``port``; what it printed if it has exited (a missing library)."""
    if process.poll() is not None:
        raise AssertionError(f"exited with {process.returncode}: {log.read_text(errors='replace')}")
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_rotel_forwarding_with_gzip_is_accepted(tmp_path: Path) -> None:
    with running_agent(tmp_path) as agent:
        rotel_port = free_port()
        rotel_log = tmp_path / "rotel.log"
        with rotel_log.open("wb") as log:
            rotel = subprocess.Popen(
                rotel_command(
                    "start",
                    "--otlp-grpc-endpoint", f"127.0.0.1:{rotel_port}",
                    "--otlp-http-endpoint", f"127.0.0.1:{free_port()}",
                    "--exporter", "otlp",
                    "--otlp-exporter-endpoint", f"http://{agent.grpc_endpoint}",
                    "--otlp-exporter-protocol", "grpc",
                    "--otlp-exporter-compression", "gzip",
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=rotel_environment(),
            )  # fmt: skip
        try:
            wait_until(lambda: _listening(rotel, rotel_port, rotel_log), timeout=15, what="rotel listening")
            sent = _send_workload_to(f"127.0.0.1:{rotel_port}", traces=30)
            wait_until(lambda: len(output_spans(agent.out_dir)) == sent, timeout=20, what="spans forwarded by rotel")
        finally:
            rotel.terminate()
            rotel.wait(10)
        assert agent.metric("otel_sidecar_receiver_accepted_items_total", transport="grpc") == sent


def test_spans_accepted_just_before_sigterm_are_all_written_after_exit(tmp_path: Path) -> None:
    agent = AgentProcess(base_config(tmp_path / "out"), tmp_path).start()
    try:
        sent = _send_workload_to(agent.grpc_endpoint, traces=300)
        assert agent.stop() == 0
    finally:
        agent.kill()
    assert len(output_spans(agent.out_dir)) == sent
    assert "agent stopped" in agent.log()


def _rewrite_config(agent: AgentProcess, config: dict[str, object] | str) -> None:
    """What an operator does before ``kill -HUP``: the file the agent was started with, changed."""
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    (agent.workdir / "agent.yaml").write_text(text)


def _reload_with(agent: AgentProcess, config: dict[str, object], outcome: str) -> None:
    """Change the config file, send SIGHUP, and wait for the log line ``outcome`` of the reload."""
    _rewrite_config(agent, config)
    assert agent.process is not None
    agent.process.send_signal(signal.SIGHUP)
    wait_until(lambda: outcome in agent.log(), timeout=20, what=f"the reload: {outcome}")


def _reloads(agent: AgentProcess, result: str) -> float:
    return agent.metric("otel_sidecar_config_reloads_total", result=result)


def test_sighup_reloads_the_config_after_flushing_what_the_running_one_accepted(tmp_path: Path) -> None:
    agent = AgentProcess(base_config(tmp_path / "out"), tmp_path).start()
    try:
        before = _send_workload_to(agent.grpc_endpoint, traces=50)
        changed = json.loads(json.dumps(agent.config))
        changed["exporters"]["file"]["path"] = str(tmp_path / "out-after")
        changed["service"]["telemetry"]["admin"]["endpoint"] = f"127.0.0.1:{free_port()}"  # needs a restart
        changed["service"]["telemetry"]["logs"]["format"] = "text"
        _reload_with(agent, changed, "config reloaded")
        wait_until(agent.ready, what="ready again")
        after = _send_workload_to(agent.grpc_endpoint, traces=20)
        assert _reloads(agent, "reloaded") == 1
        assert agent.stop() == 0
    finally:
        agent.kill()
    assert len(output_spans(tmp_path / "out")) == before  # flushed by the reload, none after it
    assert len(output_spans(tmp_path / "out-after")) == after
    assert "SIGHUP received: reloading the config" in agent.log()
    assert "service.telemetry.admin.endpoint: a change takes a restart" in agent.log()  # and it answered where it was
    (reloaded,) = [line for line in agent.log().splitlines() if "config reloaded" in line]
    assert not reloaded.startswith("{")  # the new log format took effect


def test_an_invalid_config_on_sighup_is_refused_and_the_running_one_stays(tmp_path: Path) -> None:
    agent = AgentProcess(base_config(tmp_path / "out"), tmp_path).start()
    try:
        broken = {**agent.config, "exporters": {"file": {"path": str(tmp_path / "x"), "rotation": "daily"}}}
        _reload_with(agent, broken, "config reload refused")
        assert "exporters.file.rotation" in agent.log()  # the path-qualified problem
        assert agent.ready()
        sent = _send_workload_to(agent.grpc_endpoint, traces=20)
        assert (_reloads(agent, "invalid"), _reloads(agent, "reloaded")) == (1, 0)
        assert agent.stop() == 0
    finally:
        agent.kill()
    assert len(output_spans(tmp_path / "out")) == sent
    assert not (tmp_path / "x").exists()


def test_new_pipelines_that_cannot_start_give_way_to_the_previous_config(tmp_path: Path) -> None:
    agent = AgentProcess(base_config(tmp_path / "out"), tmp_path).start()
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        moved = json.loads(json.dumps(agent.config))
        moved["receivers"]["otlp"]["http"]["endpoint"] = f"127.0.0.1:{taken.getsockname()[1]}"
        moved["exporters"]["file"]["path"] = str(tmp_path / "out-after")
        _reload_with(agent, moved, "config reload failed")
        wait_until(agent.ready, what="ready again on the previous config")
        sent = _send_workload_to(agent.grpc_endpoint, traces=20)
        assert _reloads(agent, "failed") == 1
        assert agent.stop() == 0
    finally:
        taken.close()
        agent.kill()
    assert len(output_spans(tmp_path / "out")) == sent
    assert output_spans(tmp_path / "out-after") == []


def test_a_storm_of_sighups_reloads_without_losing_anything_and_sigterm_still_stops(tmp_path: Path) -> None:
    """A closing terminal or a config reloader retrying sends SIGHUP more than once: each reload flushes, the
    signals arriving during one make one more, and none stops or kills the process."""
    agent = AgentProcess(base_config(tmp_path / "out"), tmp_path).start()
    try:
        sent = _send_workload_to(agent.grpc_endpoint, traces=300)
        assert agent.process is not None
        for _ in range(200):
            agent.process.send_signal(signal.SIGHUP)
            time.sleep(0.002)
        wait_until(lambda: agent.ready() and agent.log().count("config reloaded") >= 1, timeout=30, what="reloads")
        sent += _send_workload_to(agent.grpc_endpoint, traces=20)
        assert 1 <= _reloads(agent, "reloaded") < 200
        assert agent.stop() == 0
    finally:
        agent.kill()
    assert len(output_spans(agent.out_dir)) == sent


def _agent_with_a_slow_flush(
    tmp_path: Path, first: signal.Signals = signal.SIGTERM, new_output: Path | None = None
) -> AgentProcess:
    """An agent whose traces go to an OTLP backend nobody listens on, told ``first``: its flush (at shutdown, or at
    a reload to a config writing to ``new_output``) lasts the shutdown timeout."""
    config = base_config(tmp_path / "out")
    config["exporters"]["otlp"] = {"endpoint": f"127.0.0.1:{free_port()}", "tls": {"insecure": True}}
    config["service"]["pipelines"]["traces"]["exporters"] = ["otlp"]
    config["service"]["shutdown_timeout"] = "2s"
    agent = AgentProcess(config, tmp_path).start()
    _send_workload_to(agent.grpc_endpoint, traces=20)
    if new_output is not None:
        _rewrite_config(agent, {**config, "exporters": {**config["exporters"], "file": {"path": str(new_output)}}})
    assert agent.process is not None
    agent.process.send_signal(first)
    told = "SIGTERM received: shutting down" if first is signal.SIGTERM else "SIGHUP received: reloading"
    wait_until(lambda: told in agent.log(), timeout=10, what=f"the first {first.name}")
    return agent


def test_a_sigterm_during_a_reload_stops_without_starting_the_new_config(tmp_path: Path) -> None:
    agent = _agent_with_a_slow_flush(tmp_path, signal.SIGHUP, new_output=tmp_path / "out-after")
    try:
        assert agent.process is not None
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(timeout=15) == 0
    finally:
        agent.kill()
    assert "stopping during the config reload: the new config is not started" in agent.log()
    assert "config reloaded" not in agent.log()
    assert not (tmp_path / "out-after").exists()  # the new file exporter never started


def test_readiness_is_false_while_a_reload_flushes_and_true_again_after_it(tmp_path: Path) -> None:
    """README "Reloading the config": the receivers are closed for the flush, so the pod must not receive traffic
    meanwhile (a gateway's headless Service drops it from DNS)."""
    agent = _agent_with_a_slow_flush(tmp_path, signal.SIGHUP, new_output=tmp_path / "out-after")
    try:
        status, body, _ = http_get(agent.admin_url + "/health/ready")
        assert (status, json.loads(body)["reason"]) == (503, "reloading its config")
        assert agent.metric("otel_sidecar_ready") == 0
        wait_until(lambda: "config reloaded" in agent.log(), timeout=20, what="the reload")
        wait_until(agent.ready, what="ready again")
        assert agent.metric("otel_sidecar_ready") == 1
        assert agent.stop() == 0
    finally:
        agent.kill()


def test_a_sighup_during_the_flush_is_ignored(tmp_path: Path) -> None:
    agent = _agent_with_a_slow_flush(tmp_path)
    try:
        assert agent.process is not None
        agent.process.send_signal(signal.SIGHUP)
        assert agent.process.wait(timeout=15) == 0
    finally:
        agent.kill()
    assert "SIGHUP received while shutting down: ignored" in agent.log()
    assert "agent stopped" in agent.log()


def test_a_second_sigterm_during_the_flush_exits_at_once_with_its_own_code_saying_what_it_loses(
    tmp_path: Path,
) -> None:
    agent = _agent_with_a_slow_flush(tmp_path)
    try:
        accepted = agent.metric("otel_sidecar_receiver_accepted_items_total", signal="traces")
        assert accepted > 0
        assert agent.process is not None
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(timeout=5) == 3  # not 1, an invalid config's code
    finally:
        agent.kill()
    lines = [json.loads(line) for line in agent.log().splitlines() if line.startswith("{")]
    [said] = [line for line in lines if line["message"].startswith("second termination signal (SIGTERM)")]
    # Every span accepted is still in the otlp exporter's memory queue, retrying a backend nobody listens on.
    assert said["lost_items"] == {"exporters.otlp": accepted}
    assert said["message"] == (
        f"second termination signal (SIGTERM): exiting without flushing; {int(accepted)} items held in memory are "
        "lost (persistent queues keep theirs on disk)"
    )


def test_readiness_turns_false_during_shutdown_and_the_process_exits_zero(tmp_path: Path) -> None:
    config = base_config(tmp_path / "out")
    with running_agent(tmp_path, config) as agent:
        assert http_get(agent.admin_url + "/health/live")[0] == 200
        status, body, _ = http_get(agent.admin_url + "/health/ready")
        assert (status, json.loads(body)["status"]) == (200, "ready")
        assert agent.metric("otel_sidecar_ready") == 1
        assert agent.metric("otel_sidecar_process_resident_memory_bytes") > 0
        assert agent.stop() == 0
        assert http_get(agent.admin_url + "/health/ready")[0] == 0  # the port is closed after exit


def test_a_write_blocked_forever_does_not_keep_the_process_alive_past_the_shutdown_budget(tmp_path: Path) -> None:
    """A file exporter writing into a FIFO nobody reads (as a hung disk would block a write or an fsync)."""
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "traces.jsonl")
    config = base_config(out)
    config["service"]["shutdown_timeout"] = "2s"
    agent = AgentProcess(config, tmp_path).start()
    try:
        _send_workload_to(agent.grpc_endpoint, traces=5)
        wait_until(lambda: agent.metric("otel_sidecar_receiver_accepted_items_total") > 0, what="spans accepted")
        time.sleep(0.5)  # the writer thread is now blocked opening the FIFO
        started = time.monotonic()
        code = agent.stop(timeout=20)
        took = time.monotonic() - started
    finally:
        agent.kill()
    assert code == 0
    assert took < 2 + 2 + 3, took  # shutdown_timeout, the grace for blocked threads, process start-up slack
    assert "exiting without waiting for blocked calls" in agent.log()


def test_metrics_and_logs_pass_through_to_the_file_exporter(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    with running_agent(tmp_path) as agent:
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=agent.grpc_endpoint, insecure=True), export_interval_millis=60_000
        )
        meters = MeterProvider(metric_readers=[reader])
        meters.get_meter("orchestrator").create_counter("queue.items").add(5, {"queue": "llm"})
        meters.shutdown()
        logs = LoggerProvider()
        logs.add_log_record_processor(
            SimpleLogRecordProcessor(OTLPLogExporter(endpoint=agent.grpc_endpoint, insecure=True))
        )
        import logging

        from opentelemetry.sdk._logs import LoggingHandler

        logger = logging.getLogger("orchestrator.test")
        handler = LoggingHandler(logger_provider=logs)
        logger.addHandler(handler)
        logger.error("workflow failed", extra={"workflow.name": "rag"})
        logger.removeHandler(handler)  # left attached, logging's flush at exit reaches a provider shut down
        logs.shutdown()
        wait_until(lambda: read_output(agent.out_dir, "metrics") and read_output(agent.out_dir, "logs"))
    metric = read_output(agent.out_dir, "metrics")[0].resource_metrics[0].scope_metrics[0].metrics[0]
    assert metric.name == "queue.items" and metric.sum.data_points[0].as_int == 5
    record = read_output(agent.out_dir, "logs")[0].resource_logs[0].scope_logs[0].log_records[0]
    assert record.body.string_value == "workflow failed"


def test_an_invalid_config_is_refused_with_exit_code_1_and_every_problem_listed(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "receivers": {"otlp": {"grpc": {"endpoint": "nowhere"}}},
                "exporters": {"loki": {"endpoint": "not a url"}, "file": {"path": "/tmp/x", "rotation": "daily"}},
                "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file", "jaeger"]}}},
            }
        )
    )
    expected = [
        "receivers.otlp.grpc.endpoint: must be host:port, got 'nowhere'",
        "exporters.file.rotation: must be a mapping, got a string",
        "service.pipelines.traces.exporters[1]: exporter jaeger is not defined under exporters or connectors",
    ]
    # `--config` also before the command, or with none (run), as `otelcol --config X` takes it.
    for command in (["validate", "--config"], ["run", "--config"], ["--config"], ["-c"]):
        result = subprocess.run(
            [sys.executable, "-m", "agent", *command, str(config)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
        )
        assert result.returncode == 1, result.stderr
        for message in expected:
            assert message in result.stderr
        assert "exporters.loki" in result.stderr  # the loki line names its path whether or not the type exists


def test_print_config_shows_defaults_and_the_otel_sidecar_command_matches_python_m_agent(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "otel-sidecar"
    outputs = [
        subprocess.run([*command, "print-config"], capture_output=True, text=True, cwd=REPO, timeout=30, check=True)
        for command in ([str(script)], [sys.executable, "-m", "agent"])
    ]
    assert outputs[0].stdout == outputs[1].stdout
    effective = yaml.safe_load(outputs[0].stdout)
    assert effective["receivers"]["otlp"]["grpc"]["endpoint"] == "127.0.0.1:4317"
    assert effective["service"]["shutdown_timeout"] == "25s"


def test_a_port_already_in_use_fails_the_start_with_a_clear_log_line(tmp_path: Path) -> None:
    config = base_config(tmp_path / "out")
    with running_agent(tmp_path, config):
        second = AgentProcess(
            {**config, "service": {**config["service"], "telemetry": {"admin": {"endpoint": "127.0.0.1:0"}}}},
            tmp_path / "second",
        )
        second.workdir.mkdir()
        second.start(wait_ready=False)
        assert second.process is not None
        assert second.process.wait(timeout=30) == 2
        assert "agent failed to start" in second.log()


def _send_workload_to(endpoint: str, traces: int) -> int:
    """Send ``traces`` synthetic traces over gRPC as separate requests; return the number of spans sent."""
    channel = grpc.insecure_channel(endpoint)
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    sent = 0
    for request, truths in Workload(seed=11).requests(traces):
        deadline = time.monotonic() + 10
        while True:
            try:
                export(request.SerializeToString(), timeout=5)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # rotel may still be starting
        sent += sum(t.spans for t in truths)
    channel.close()
    return sent


def test_an_admin_endpoint_that_cannot_listen_names_its_config_path(tmp_path: Path) -> None:
    config = base_config(tmp_path / "out")
    with running_agent(tmp_path, config) as first:
        admin = first.config["service"]["telemetry"]["admin"]["endpoint"]
        second_config = base_config(tmp_path / "out2")
        second_config["service"]["telemetry"]["admin"]["endpoint"] = admin  # taken by the first agent
        second = AgentProcess(second_config, tmp_path / "second")
        second.workdir.mkdir()
        second.start(wait_ready=False)
        assert second.process is not None
        assert second.process.wait(timeout=30) == 2
        assert "service.telemetry.admin.endpoint: cannot listen on" in second.log()


def test_a_second_sigterm_after_the_flush_is_ignored_and_the_agent_exits_zero(tmp_path: Path) -> None:
    """README "Shutdown": signals arriving after the flush are ignored, so a flushed agent always exits 0. The admin
    endpoint stops after the flush, for up to 2 s while a client holds a request open (here a POST whose body never
    comes); a SIGTERM then must not turn a clean exit into exit 3."""
    agent = AgentProcess(base_config(tmp_path / "out"), tmp_path).start()
    host, port = agent.admin_url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)))
    try:
        client.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc")
        time.sleep(0.3)
        assert agent.process is not None
        agent.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "shutting down: flushing" in agent.log(), what="the flush")
        time.sleep(0.5)  # nothing was buffered: the pipelines have flushed and stopped by now
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(timeout=10) == 0
    finally:
        client.close()
        agent.kill()
    assert "exiting without flushing" not in agent.log()
