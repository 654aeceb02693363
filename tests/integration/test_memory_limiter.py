"""The memory limiter in a real agent process: senders are refused (retryable) and memory stays under the limit."""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.testing.workload import Workload
from tests.helpers import AgentProcess, base_config, free_port, http_post, output_spans, wait_until

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def with_memory_limiter(config: dict[str, Any], **limits: Any) -> dict[str, Any]:
    config["processors"] = {"memory_limiter": limits}
    for pipeline in config["service"]["pipelines"].values():
        pipeline["processors"] = ["memory_limiter"]
    return config


def peak_resident_mib(agent: AgentProcess) -> float:
    assert agent.process is not None
    for line in Path(f"/proc/{agent.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_an_agent_over_its_limit_refuses_grpc_and_http_senders_with_a_retry_delay(tmp_path: Path) -> None:
    # A Python agent is resident in more than 20 MiB from its start: the limiter refuses everything.
    config = with_memory_limiter(base_config(tmp_path / "out"), limit_mib=20, check_interval="100ms")
    config["service"]["shutdown_timeout"] = "1s"
    agent = AgentProcess(config, tmp_path).start()
    try:
        first, second = (request for request, _ in Workload(seed=3).requests(2))
        spans = sum(len(ss.spans) for rs in first.resource_spans for ss in rs.scope_spans)

        # The first request finds the ingest queue empty and is accepted; the limiter refuses it to the queue,
        # which holds it and from then on refuses senders with the limiter's reason.
        assert http_post(agent.http_url + "/v1/traces", first.SerializeToString(), PROTOBUF)[0] == 200
        wait_until(lambda: agent.metric("otel_sidecar_memory_limiter_refused_items_total", signal="traces") > 0)
        assert agent.metric("otel_sidecar_memory_limiter_refusing") == 1
        assert "memory above the soft limit: refusing data" in agent.log()

        status, body, headers = http_post(agent.http_url + "/v1/traces", second.SerializeToString(), PROTOBUF)
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        assert "high memory usage" in status_pb2.Status.FromString(body).message

        with grpc.insecure_channel(agent.grpc_endpoint) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            try:
                stub.Export(second, timeout=10)
                raise AssertionError("the export was accepted")
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
                assert "high memory usage" in exc.details()  # type: ignore[attr-defined]
                details = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
                status_detail = status_pb2.Status.FromString(details["grpc-status-details-bin"])
                retry = error_details_pb2.RetryInfo()
                assert any(d.Unpack(retry) for d in status_detail.details)
                assert retry.retry_delay.seconds >= 1

        # Refused before they were read or decoded (decoding only to refuse doubles what a request holds, when
        # memory is short): counted per request, their items unknown.
        assert agent.metric("otel_sidecar_receiver_failed_requests_total", reason="backpressure") == 2
        assert agent.metric("otel_sidecar_receiver_refused_items_total", reason="backpressure") == 0
        assert agent.stop() == 0
        # Once the receivers have stopped, the limiter lets what was accepted through to be flushed: the request
        # answered 200 is written, and the refused ones never were.
        assert len(output_spans(agent.out_dir)) == spans
        assert "the receivers have stopped: accepted data passes to be flushed" in agent.log()
        assert "shutdown deadline reached" not in agent.log()
    finally:
        agent.kill()


def large_request(index: int, spans: int = 500, text_bytes: int = 4096) -> bytes:
    request = ExportTraceServiceRequest()
    scope_spans = request.resource_spans.add().scope_spans.add()
    for n in range(spans):
        span = scope_spans.spans.add(
            trace_id=index.to_bytes(8, "big") + n.to_bytes(8, "big"), span_id=(n + 1).to_bytes(8, "big"), name="llm"
        )
        span.attributes.add(key="document", value={"string_value": f"{index}-{n}-".ljust(text_bytes, "x")})
    return request.SerializeToString()


def test_memory_stays_under_the_hard_limit_while_a_backend_is_down_and_senders_keep_sending(tmp_path: Path) -> None:
    """Without the limiter the exporter's queue (1 GiB allowed here) would hold everything sent: about 600 MiB."""
    config = base_config(tmp_path / "out")
    dead_backend = f"http://127.0.0.1:{free_port()}"
    config["exporters"]["otlp"] = {
        "endpoint": dead_backend,
        "retry_on_failure": {"initial_interval": "5s"},
        "sending_queue": {"max_bytes": 1 << 30, "max_items": 10_000_000},
    }
    config["service"]["pipelines"] = {"traces": {"receivers": ["otlp"], "exporters": ["otlp"]}}
    hard_limit_mib = 300
    with_memory_limiter(config, limit_mib=hard_limit_mib, spike_limit_mib=120, check_interval="50ms")
    agent = AgentProcess(config, tmp_path).start()
    try:
        statuses: list[int] = []
        lock = threading.Lock()

        def send(index: int) -> None:
            status, _, _ = http_post(agent.http_url + "/v1/traces", large_request(index), PROTOBUF)
            with lock:
                statuses.append(status)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(send, range(300)))  # 300 requests of 2 MiB

        assert set(statuses) <= {200, 503}
        assert 503 in statuses
        assert 200 in statuses
        assert peak_resident_mib(agent) < hard_limit_mib
        wait_until(lambda: agent.metric("otel_sidecar_memory_limiter_refused_items_total") > 0)
    finally:
        agent.kill()
