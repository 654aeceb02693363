"""The ``otlp`` exporter talks to a real third-party OTLP receiver: rotel, a Rust OTLP collector (PyPI ``rotel``).

rotel receives what the exporter sends (gRPC or HTTP/protobuf, gzip or not) and forwards it with its own OTLP
exporter to a capture server; every span and log record must arrive intact, which proves the exporter's
requests are valid OTLP for an independent implementation, not only for our own receiver.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from agent.component import Signal
from agent.exporters.otlp import OtlpExporter, OtlpExporterConfig
from agent.testing.workload import Workload, attr
from tests.delivery_doubles import OtlpCapture, build_config, make_settings
from tests.helpers import free_port, rotel_command, rotel_environment, stop_process, wait_until

pytestmark = pytest.mark.integration


class Rotel:
    def __init__(self, workdir: Path, forward_to: str) -> None:
        self.grpc_endpoint = f"127.0.0.1:{free_port()}"
        self.http_endpoint = f"127.0.0.1:{free_port()}"
        self._workdir = workdir
        self._forward_to = forward_to
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Rotel:
        with open(self._workdir / "rotel.log", "ab") as log:  # the process has its own copy of the descriptor
            self._process = subprocess.Popen(
                rotel_command(
                    "start",
                    "--otlp-grpc-endpoint", self.grpc_endpoint,
                    "--otlp-http-endpoint", self.http_endpoint,
                    "--exporter", "otlp",
                    "--otlp-exporter-endpoint", self._forward_to,
                    "--otlp-exporter-protocol", "grpc",
                    "--batch-timeout", "50ms",
                    "--pid-file", str(self._workdir / "rotel.pid"),
                    "--log-file", str(self._workdir / "rotel-daemon.log"),
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=rotel_environment(),
            )  # fmt: skip
        wait_until(self._listening, timeout=15, what="rotel listening")
        return self

    def _listening(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise AssertionError((self._workdir / "rotel.log").read_text())
        for endpoint in (self.grpc_endpoint, self.http_endpoint):
            host, port = endpoint.rsplit(":", 1)
            with socket.socket() as sock:
                if sock.connect_ex((host, int(port))) != 0:
                    return False
        return True

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, 10)


@pytest.fixture(scope="module")
def capture() -> Iterator[OtlpCapture]:
    with OtlpCapture() as backend:
        yield backend


@pytest.fixture(scope="module")
def rotel(tmp_path_factory: pytest.TempPathFactory, capture: OtlpCapture) -> Iterator[Rotel]:
    instance = Rotel(tmp_path_factory.mktemp("rotel"), f"http://{capture.grpc_endpoint}").start()
    yield instance
    instance.stop()


def logs_request(marker: str, count: int) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.extend([attr("service.name", "orchestrator"), attr("retention.class", "error")])
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "orchestrator.executor"
    for index in range(count):
        record = scope_logs.log_records.add(time_unix_nano=1_700_000_000_000_000_000 + index, severity_number=17)
        record.body.string_value = f"{marker} step {index} failed: ünïcode ✓"
        record.trace_id = bytes(range(16))
        record.span_id = bytes(range(8))
        record.attributes.extend([attr("run", marker), attr("attempt", index), attr("ratio", 0.5)])
    return request


def spans_by_id(requests: list[Any]) -> dict[bytes, bytes]:
    return {
        span.span_id: span.SerializeToString()
        for r in requests
        for rs in r.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    }


def records_by_body(requests: list[Any]) -> dict[str, bytes]:
    return {
        rec.body.string_value: rec.SerializeToString()
        for r in requests
        for rl in r.resource_logs
        for sl in rl.scope_logs
        for rec in sl.log_records
    }


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("compression", ["gzip", "none"])
async def test_everything_the_exporter_sends_reaches_rotel_and_comes_out_intact(
    rotel: Rotel, capture: OtlpCapture, protocol: str, compression: str
) -> None:
    seed = {"grpc": 11, "http/protobuf": 12}[protocol] * 10 + (compression == "gzip")
    traces = [request for request, _ in Workload(seed=seed).requests(25)]
    marker = f"{protocol}-{compression}"
    logs = [logs_request(marker, 7), logs_request(marker + "-b", 5)]
    expected_spans = spans_by_id(traces)
    expected_logs = records_by_body(logs)
    endpoint = rotel.grpc_endpoint if protocol == "grpc" else f"http://{rotel.http_endpoint}"
    config = build_config(
        OtlpExporterConfig,
        {
            "endpoint": endpoint,
            "protocol": protocol,
            "compression": compression,
            "tls": {"insecure": True},
            "batch": {"min_size": 100, "flush_timeout": "50ms"},
        },
    )
    exporter = OtlpExporter(config, make_settings("otlp/rotel"))
    await exporter.start()
    try:
        for request in traces:
            exporter.consumer_for(Signal.TRACES).consume(request)
        for request in logs:
            exporter.consumer_for(Signal.LOGS).consume(request)

        def arrived() -> bool:
            spans = spans_by_id(capture.capture.requests[Signal.TRACES])
            records = records_by_body(capture.capture.requests[Signal.LOGS])
            return expected_spans.keys() <= spans.keys() and expected_logs.keys() <= records.keys()

        deadline = time.monotonic() + 20
        while not arrived() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await exporter.shutdown(time.monotonic() + 5)
    received_spans = spans_by_id(capture.capture.requests[Signal.TRACES])
    received_logs = records_by_body(capture.capture.requests[Signal.LOGS])
    assert {k: received_spans.get(k) for k in expected_spans} == expected_spans
    assert {k: received_logs.get(k) for k in expected_logs} == expected_logs
    services = {
        kv.value.string_value
        for rs in capture.capture.resource_spans()
        for kv in rs.resource.attributes
        if kv.key == "service.name"
    }
    assert {"orchestrator", "llm-gateway"} <= services
