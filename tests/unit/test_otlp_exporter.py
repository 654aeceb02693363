"""The ``otlp`` exporter against an in-process OTLP capture backend (gRPC and HTTP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.component import Signal
from agent.config.schema import ConfigError, build
from agent.exporters._helper.retry import RetryableError
from agent.exporters.otlp import OtlpExporter, OtlpExporterConfig
from agent.exporters.otlp.transport import GrpcTransport, HttpTransport, make_transport
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.workload import Workload, attr
from tests.delivery_doubles import OtlpCapture, PlannedFailure, build_config, make_settings
from tests.helpers import free_port, metric_value, self_signed_certificate
from tests.unit.test_otlp_receiver_tls import encrypted_key_certificate

FAST_RETRY = {"initial_interval": "20ms", "max_interval": "100ms", "max_elapsed_time": "5s"}


def traces(n: int, seed: int = 3) -> list[ExportTraceServiceRequest]:
    return [request for request, _ in Workload(seed=seed).requests(n)]


def span_keys(requests: list[Any]) -> set[bytes]:
    return {
        s.SerializeToString() for r in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans
    }


def exporter_config(endpoint: str, **extra: Any) -> OtlpExporterConfig:
    raw = {"endpoint": endpoint, "tls": {"insecure": True}, "retry_on_failure": FAST_RETRY, "timeout": "2s", **extra}
    raw.setdefault("batch", {"flush_timeout": "10ms"})
    return build_config(OtlpExporterConfig, raw)


async def run_exporter(
    config: OtlpExporterConfig, batches: list[Any], metrics: SelfMetrics, until: Any, cid: str = "otlp"
) -> None:
    exporter = OtlpExporter(config, make_settings(cid, metrics))
    await exporter.start()
    try:
        for batch in batches:
            exporter.consumer_for(Signal.TRACES).consume(batch)
        deadline = time.monotonic() + 10
        while not until() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await exporter.shutdown(time.monotonic() + 5)


def value(metrics: SelfMetrics, name: str, **labels: str) -> float:
    return metric_value(metrics.render().decode(), f"otel_sidecar_{name}", **labels)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("compression", ["gzip", "none"])
async def test_every_span_arrives_intact_with_the_configured_headers(protocol: str, compression: str) -> None:
    batches = traces(20)
    expected = span_keys(batches)
    with OtlpCapture() as backend:
        endpoint = backend.grpc_endpoint if protocol == "grpc" else backend.http_url
        config = exporter_config(endpoint, protocol=protocol, compression=compression, headers={"x-team": "llm"})
        metrics = SelfMetrics()
        await run_exporter(config, batches, metrics, lambda: len(backend.capture.spans()) >= len(expected))
        assert span_keys(backend.capture.requests[Signal.TRACES]) == expected
        assert all(h.get("x-team") == "llm" or h.get("X-Team") == "llm" for h in backend.capture.headers)
        if protocol == "http/protobuf":
            assert {h.get("Content-Encoding") for h in backend.capture.headers} == (
                {"gzip"} if compression == "gzip" else {None}
            )
    assert value(metrics, "exporter_sent_items_total", exporter="otlp") == len(expected)


async def test_a_grpc_header_named_in_capitals_arrives_as_lowercase_metadata() -> None:
    """gRPC refuses a metadata key with a capital letter (HTTP/2 field names are lowercase): `Authorization` as an
    operator writes it would fail every call."""
    batches = traces(2)
    with OtlpCapture() as backend:
        config = exporter_config(backend.grpc_endpoint, headers={"Authorization": "Bearer t0k"})
        await run_exporter(config, batches, SelfMetrics(), lambda: bool(backend.capture.spans()))
        assert backend.capture.spans()
        assert all(h.get("authorization") == "Bearer t0k" for h in backend.capture.headers)


@pytest.mark.parametrize(("compression", "expected"), [("gzip", grpc.Compression.Gzip), ("none", None)])
async def test_the_grpc_channel_compresses_with_gzip_only_when_configured(
    monkeypatch: pytest.MonkeyPatch, compression: str, expected: grpc.Compression | None
) -> None:
    opened: list[Any] = []
    insecure_channel = grpc.aio.insecure_channel

    def recording(target: str, options: Any, compression: Any) -> Any:
        opened.append(compression)
        return insecure_channel(target, options, compression)

    monkeypatch.setattr(grpc.aio, "insecure_channel", recording)
    transport = GrpcTransport(exporter_config("127.0.0.1:4317", compression=compression), None)
    await transport.start()
    await transport.close()
    assert opened == [expected or grpc.Compression.NoCompression]


async def test_an_http_endpoint_ending_in_a_slash_is_posted_to_once_with_the_agents_user_agent() -> None:
    """`http://collector:4318/` must not post to `//v1/traces` (a Go server redirects it, which is refused)."""
    from aiohttp import web

    seen: list[tuple[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.raw_path, request.headers.get("User-Agent", "")))
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    transport = HttpTransport(exporter_config(f"http://127.0.0.1:{port}/", protocol="http/protobuf"), None)
    await transport.start()
    try:
        await transport.export(Signal.TRACES, traces(1)[0], timeout=5)
    finally:
        await transport.close()
        await runner.cleanup()
    ((path, user_agent),) = seen
    assert path == "/v1/traces"
    assert user_agent.startswith("otel-sidecar/")


@pytest.mark.filterwarnings("error::ResourceWarning")  # aiohttp's, for a body over 1 MiB it would write at once
async def test_an_http_body_over_a_mebibyte_is_sent_whole_in_chunks() -> None:
    """A prompt captured whole makes a request of megabytes: aiohttp writes it in chunks, the loop free between
    them (the receiver shares it), and does not warn that it may block the loop."""
    (batch,) = traces(1)
    batch.resource_spans[0].scope_spans[0].spans[0].attributes.add(
        key="gen_ai.prompt", value={"string_value": "x" * 1_500_000}
    )
    with OtlpCapture() as backend:
        config = exporter_config(backend.http_url, protocol="http/protobuf", compression="none")
        await run_exporter(config, [batch], SelfMetrics(), lambda: bool(backend.capture.spans()))
        assert span_keys(backend.capture.requests[Signal.TRACES]) == span_keys([batch])


async def test_small_requests_are_merged_into_batches_and_large_ones_split() -> None:
    batches = traces(30)
    total = len(span_keys(batches))
    with OtlpCapture() as backend:
        config = exporter_config(
            backend.grpc_endpoint,
            batch={"min_size": 40, "max_size": 50, "flush_timeout": "300ms"},
            sending_queue={"num_consumers": 1},
        )
        await run_exporter(config, batches, SelfMetrics(), lambda: len(backend.capture.spans()) >= total)
        sizes = [
            sum(len(ss.spans) for rs in r.resource_spans for ss in rs.scope_spans)
            for r in backend.capture.requests[Signal.TRACES]
        ]
    assert sum(sizes) == total
    assert max(sizes) <= 50
    assert len(sizes) < len(batches)  # merged


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_unavailable_backends_are_retried_honouring_the_server_delay(protocol: str) -> None:
    batch = traces(1)
    with OtlpCapture() as backend:
        backend.capture.failures = [
            PlannedFailure(grpc.StatusCode.UNAVAILABLE, 503, "busy", retry_after=1.0),
            PlannedFailure(grpc.StatusCode.UNAVAILABLE, 429, "slow down"),
        ]
        endpoint = backend.grpc_endpoint if protocol == "grpc" else backend.http_url
        metrics = SelfMetrics()
        started = time.monotonic()
        await run_exporter(
            exporter_config(endpoint, protocol=protocol), batch, metrics, lambda: backend.capture.spans()
        )
        elapsed = time.monotonic() - started
        assert span_keys(backend.capture.requests[Signal.TRACES]) == span_keys(batch)
    assert backend.capture.attempts == 3
    assert elapsed >= 0.9  # the server asked for one second; the backoff alone would be 20 ms
    assert value(metrics, "exporter_retries_total", exporter="otlp") == 2


async def export_to_capture(
    protocol: str, prepare: Callable[[Any], None], done_when: str
) -> tuple[OtlpCapture, SelfMetrics, ExportTraceServiceRequest]:
    """One batch exported to an ``OtlpCapture`` ``prepare``d to answer it some way, until ``done_when`` counts; then
    a moment for a retry that must not come."""
    batch = traces(1)
    metrics = SelfMetrics()
    with OtlpCapture() as backend:
        prepare(backend.capture)
        endpoint = backend.grpc_endpoint if protocol == "grpc" else backend.http_url
        config = exporter_config(endpoint, protocol=protocol)
        await run_exporter(config, batch, metrics, lambda: value(metrics, done_when) > 0)
        await asyncio.sleep(0.1)
    return backend, metrics, batch


@pytest.mark.parametrize(
    ("protocol", "failure"),
    [
        ("grpc", PlannedFailure(grpc.StatusCode.INVALID_ARGUMENT, 400, "bad span")),
        ("grpc", PlannedFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, 400, "too large")),
        ("grpc", PlannedFailure(grpc.StatusCode.PERMISSION_DENIED, 403, "no")),
        ("http/protobuf", PlannedFailure(grpc.StatusCode.INVALID_ARGUMENT, 400, "bad span")),
        ("http/protobuf", PlannedFailure(grpc.StatusCode.INTERNAL, 500, "broken")),
    ],
)
async def test_permanent_errors_are_not_retried_and_are_counted_as_rejected(
    protocol: str, failure: PlannedFailure
) -> None:
    backend, metrics, batch = await export_to_capture(
        protocol, lambda capture: setattr(capture, "failures", [failure]), "exporter_send_failed_items_total"
    )
    items = len(span_keys(batch))
    assert backend.capture.attempts == 1
    assert value(metrics, "exporter_rejected_items_total", exporter="otlp") == items
    assert value(metrics, "exporter_send_failed_items_total", reason="rejected") == items
    assert value(metrics, "exporter_retries_total") == 0


async def test_resource_exhausted_is_retried_only_when_the_server_sends_retry_info() -> None:
    batch = traces(1)
    with OtlpCapture() as backend:
        backend.capture.failures = [PlannedFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "quota", retry_after=0.05)]
        await run_exporter(
            exporter_config(backend.grpc_endpoint), batch, SelfMetrics(), lambda: backend.capture.spans()
        )
        assert span_keys(backend.capture.requests[Signal.TRACES]) == span_keys(batch)
    assert backend.capture.attempts == 2


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_a_partial_success_is_counted_and_logged_but_not_retried(
    protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend, metrics, batch = await export_to_capture(
        protocol, lambda capture: setattr(capture, "partial_rejections", [2]), "exporter_sent_items_total"
    )
    items = len(span_keys(batch))
    assert backend.capture.attempts == 1
    assert value(metrics, "exporter_rejected_items_total", exporter="otlp") == 2
    assert value(metrics, "exporter_sent_items_total", exporter="otlp") == items - 2
    assert "2 spans rejected" in caplog.text


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_an_empty_partial_success_is_a_full_success_without_a_warning(
    protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The proto says an empty partial_success (0 rejected, no message) means full success; Collector-based servers
    # (Jaeger v2) send one with every answer, and a warning for each would bury the real ones.
    _, metrics, batch = await export_to_capture(
        protocol, lambda capture: setattr(capture, "empty_partial_success", True), "exporter_sent_items_total"
    )
    assert value(metrics, "exporter_sent_items_total", exporter="otlp") == len(span_keys(batch))
    assert "warning" not in caplog.text


async def test_after_max_elapsed_time_the_batch_is_dropped_with_a_counter_and_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batch = traces(1)
    items = len(span_keys(batch))
    with OtlpCapture() as backend:
        backend.capture.failures = [PlannedFailure(grpc.StatusCode.UNAVAILABLE)] * 1000
        metrics = SelfMetrics()
        config = exporter_config(
            backend.grpc_endpoint,
            retry_on_failure={"initial_interval": "50ms", "max_interval": "100ms", "max_elapsed_time": "500ms"},
        )
        await run_exporter(config, batch, metrics, lambda: value(metrics, "exporter_send_failed_items_total") > 0)
    assert value(metrics, "exporter_send_failed_items_total", reason="retries_exhausted") == items
    assert value(metrics, "exporter_retries_total") >= 2
    assert backend.capture.spans() == []
    (dropped,) = [r for r in caplog.records if "giving up on the batch (retries_exhausted)" in r.getMessage()]
    assert dropped.levelname == "ERROR"  # lost data; the retries before it are warnings


async def test_a_refused_connection_is_retried_until_the_backend_comes_up() -> None:
    batch = traces(3)
    backend = OtlpCapture()
    metrics = SelfMetrics()
    exporter = OtlpExporter(exporter_config(backend.grpc_endpoint), make_settings("otlp", metrics))
    await exporter.start()
    try:
        for request in batch:
            exporter.consumer_for(Signal.TRACES).consume(request)
        await asyncio.sleep(0.5)  # several failed attempts against the closed port
        backend.start()
        deadline = time.monotonic() + 10
        while len(backend.capture.spans()) < len(span_keys(batch)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert span_keys(backend.capture.requests[Signal.TRACES]) == span_keys(batch)
        assert value(metrics, "exporter_retries_total") > 0
    finally:
        await exporter.shutdown(time.monotonic() + 5)
        backend.stop()


def with_class(request: ExportTraceServiceRequest, retention_class: str | None) -> ExportTraceServiceRequest:
    for rs in request.resource_spans:
        if retention_class is not None:
            rs.resource.attributes.append(attr("retention.class", retention_class))
    return request


async def test_an_exporter_with_retention_classes_receives_only_those_classes() -> None:
    error, standard, unclassified = traces(3)
    with_class(error, "error")
    with_class(standard, "standard")
    with OtlpCapture() as backend:
        config = exporter_config(backend.grpc_endpoint, retention_classes=["error", "critical"])
        metrics = SelfMetrics()
        await run_exporter(config, [error, standard, unclassified], metrics, lambda: backend.capture.spans())
        await asyncio.sleep(0.1)
        assert span_keys(backend.capture.requests[Signal.TRACES]) == span_keys([error])
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_routed_items_total", retention_class="error") == len(
        span_keys([error])
    )
    assert metric_value(text, "otel_sidecar_exporter_routed_items_total", retention_class="standard") == 0


def test_the_config_rejects_bad_endpoints_and_mismatched_tls_files() -> None:
    errors: list[ConfigError] = []
    build(OtlpExporterConfig, {"endpoint": "jaeger"}, "exporters.otlp", errors)
    build(OtlpExporterConfig, {"endpoint": "jaeger:4317", "tls": {"cert_file": "c.pem"}}, "exporters.otlp", errors)
    build(OtlpExporterConfig, {"endpoint": "jaeger:4318", "protocol": "http/protobuf"}, "exporters.otlp/h", errors)
    messages = [str(e) for e in errors]
    assert "exporters.otlp.endpoint: must be host:port or a URL, got 'jaeger'" in messages
    assert "exporters.otlp.tls.key_file: cert_file and key_file go together" in messages
    assert any(m.startswith("exporters.otlp/h.endpoint: must be a URL") for m in messages)


@pytest.mark.parametrize("endpoint", ["jaeger:99999", "jaeger:0"])
def test_a_host_port_endpoint_needs_a_port_in_range(endpoint: str) -> None:
    errors: list[ConfigError] = []
    build(OtlpExporterConfig, {"endpoint": endpoint}, "exporters.otlp", errors)
    assert [str(e) for e in errors] == [f"exporters.otlp.endpoint: the port must be 1-65535, got {endpoint!r}"]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_an_ipv6_endpoint_missing_its_bracket_is_a_config_error_not_a_crash(protocol: str) -> None:
    """Pass 140: the checks after the endpoint's own split it again, and urlsplit raised out of validation."""
    errors: list[ConfigError] = []
    endpoint = "http://u:p@[::1:4318"
    build(OtlpExporterConfig, {"endpoint": endpoint, "protocol": protocol}, "exporters.otlp", errors)
    assert [e.path for e in errors] == ["exporters.otlp.endpoint"]
    assert errors[0].message.startswith("must be a URL")


def test_endpoints_decide_tls_by_scheme_and_otherwise_by_the_insecure_flag() -> None:
    assert build_config(OtlpExporterConfig, {"endpoint": "jaeger:4317"}).uses_tls
    assert not build_config(OtlpExporterConfig, {"endpoint": "jaeger:4317", "tls": {"insecure": True}}).uses_tls
    assert not build_config(OtlpExporterConfig, {"endpoint": "http://jaeger:4317"}).uses_tls
    assert build_config(OtlpExporterConfig, {"endpoint": "https://jaeger:4317"}).grpc_target == "jaeger:4317"
    # A scheme is case-insensitive (RFC 3986): HTTPS:// with tls.insecure set must not send tokens in clear text.
    assert build_config(OtlpExporterConfig, {"endpoint": "HTTPS://jaeger:4317", "tls": {"insecure": True}}).uses_tls
    assert not build_config(OtlpExporterConfig, {"endpoint": "HTTP://jaeger:4317"}).uses_tls


async def test_batches_shared_with_other_exporters_are_never_modified() -> None:
    batches = traces(10)
    for request in batches[:5]:
        with_class(request, "error")
    before = [b.SerializeToString() for b in batches]
    with OtlpCapture() as backend:
        config = exporter_config(
            backend.grpc_endpoint, retention_classes=["error"], batch={"min_size": 1000, "flush_timeout": "100ms"}
        )
        await run_exporter(config, batches, SelfMetrics(), lambda: backend.capture.spans())
    assert [b.SerializeToString() for b in batches] == before


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_tls_endpoints_are_verified_against_the_configured_ca(tmp_path: Path, protocol: str) -> None:
    cert, key = self_signed_certificate(tmp_path)
    batch = traces(2)
    with OtlpCapture(tls=(cert, key)) as backend:
        endpoint = f"localhost:{backend.grpc_port}" if protocol == "grpc" else f"https://localhost:{backend.http_port}"
        raw = {"endpoint": endpoint, "protocol": protocol, "tls": {"ca_file": str(cert)}, "batch": {"enabled": False}}
        config = build_config(OtlpExporterConfig, raw)
        assert config.uses_tls
        await run_exporter(config, batch, SelfMetrics(), lambda: len(backend.capture.spans()) >= 2)
        assert span_keys(backend.capture.requests[Signal.TRACES]) == span_keys(batch)

        untrusted = build_config(OtlpExporterConfig, {**raw, "tls": {}, "retry_on_failure": {"enabled": False}})
        metrics = SelfMetrics()
        await run_exporter(
            untrusted, traces(1, seed=9), metrics, lambda: value(metrics, "exporter_send_failed_items_total") > 0
        )
        assert value(metrics, "exporter_send_failed_items_total") > 0  # the system CAs do not trust it


async def test_insecure_skip_verify_sends_over_https_to_a_server_nobody_vouches_for(tmp_path: Path) -> None:
    """OTLP/HTTP only (grpcio cannot skip verification: the config refuses it there)."""
    cert, key = self_signed_certificate(tmp_path)
    batch = traces(2)
    with OtlpCapture(tls=(cert, key)) as backend:
        raw = {
            "endpoint": f"https://localhost:{backend.http_port}",
            "protocol": "http/protobuf",
            "tls": {"insecure_skip_verify": True},
            "batch": {"enabled": False},
        }
        await run_exporter(
            build_config(OtlpExporterConfig, raw), batch, SelfMetrics(), lambda: len(backend.capture.spans()) >= 2
        )
        assert span_keys(backend.capture.requests[Signal.TRACES]) == span_keys(batch)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_mutual_tls_presents_the_configured_client_certificate(tmp_path: Path, protocol: str) -> None:
    """A backend that requires a client certificate accepts the exporter's ``cert_file``/``key_file`` and turns
    away the same exporter without them (the failure is counted)."""
    server_cert, server_key = self_signed_certificate(tmp_path)
    client_cert, client_key = self_signed_certificate(tmp_path, "client")  # self-signed: its own CA
    with OtlpCapture(tls=(server_cert, server_key), client_ca=client_cert) as backend:
        endpoint = f"localhost:{backend.grpc_port}" if protocol == "grpc" else f"https://localhost:{backend.http_port}"
        tls = {"ca_file": str(server_cert), "cert_file": str(client_cert), "key_file": str(client_key)}
        raw = {"endpoint": endpoint, "protocol": protocol, "tls": tls, "batch": {"enabled": False}}
        batch = traces(2)
        await run_exporter(
            build_config(OtlpExporterConfig, raw), batch, SelfMetrics(), lambda: len(backend.capture.spans()) >= 2
        )
        assert span_keys(backend.capture.requests[Signal.TRACES]) == span_keys(batch)
        delivered = len(backend.capture.spans())

        without_client_cert = {**raw, "tls": {"ca_file": str(server_cert)}, "retry_on_failure": {"enabled": False}}
        metrics = SelfMetrics()
        await run_exporter(
            build_config(OtlpExporterConfig, without_client_cert),
            traces(1, seed=9),
            metrics,
            lambda: value(metrics, "exporter_send_failed_items_total") > 0,
        )
        assert value(metrics, "exporter_send_failed_items_total") > 0
        assert len(backend.capture.spans()) == delivered  # nothing more got in


async def test_an_http_backend_that_never_answers_is_a_retryable_timeout_that_may_have_delivered() -> None:
    """aiohttp's total timeout raises a bare TimeoutError; the transport classifies it, so that callers that
    split a batch over several backends (loadbalancing) can route around the silent one."""
    from aiohttp import web

    from agent.exporters._helper.retry import RetryableError

    released = asyncio.Event()

    async def never_answers(_: web.Request) -> web.Response:
        await released.wait()  # until the test ends
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/traces", never_answers)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    transport = HttpTransport(
        build_config(OtlpExporterConfig, {"endpoint": f"http://127.0.0.1:{port}", "protocol": "http/protobuf"}), None
    )
    await transport.start()
    try:
        with pytest.raises(RetryableError) as raised:
            await transport.export(Signal.TRACES, traces(1)[0], timeout=0.3)
        assert raised.value.reason == "timeout" and raised.value.maybe_delivered
        assert str(raised.value).endswith("within 0.3s (the exporter's timeout)"), str(raised.value)
    finally:
        released.set()
        await transport.close()
        await runner.cleanup()


async def test_items_refused_by_a_full_queue_are_not_counted_as_routed_until_taken() -> None:
    """The sender retries a refused batch: counting it as routed on each try would count it twice."""
    from agent.component import Refused

    metrics = SelfMetrics()
    config = exporter_config("127.0.0.1:1", sending_queue={"queue_size": 1}, batch={"enabled": False})
    exporter = OtlpExporter(config, make_settings("otlp", metrics))  # not started: nothing leaves the queue
    first, second = traces(2)
    consumer = exporter.consumer_for(Signal.TRACES)
    consumer.consume(first)
    with pytest.raises(Refused):
        consumer.consume(second)
    text = metrics.render().decode()
    spans = sum(len(ss.spans) for rs in first.resource_spans for ss in rs.scope_spans)
    assert metric_value(text, "otel_sidecar_exporter_routed_items_total") == spans


def test_split_keeps_every_item_with_its_resource_and_scope_fields() -> None:
    from agent.exporters._helper.batcher import split

    (request,) = traces(1)
    request.resource_spans[0].schema_url = "https://opentelemetry.io/schemas/1.26.0"
    request.resource_spans[0].scope_spans[0].scope.name = "orchestrator"
    parts = split(Signal.TRACES, request, 5)
    spans = [
        (rs.resource, rs.schema_url, ss.scope, s)
        for p in parts
        for rs in p.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    expected = [
        (rs.resource, rs.schema_url, ss.scope, s)
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    assert spans == expected and len(parts) == -(-len(expected) // 5)
    assert all(sum(len(ss.spans) for rs in p.resource_spans for ss in rs.scope_spans) <= 5 for p in parts)


def test_metrics_are_split_by_data_points_a_metric_staying_whole() -> None:
    """A metric weighs its data points (the Collector's batch sizes count points): two gauges of 8 points go in
    two requests of at most 10, and a metric of 12 points alone is one request larger than the limit."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from agent.exporters._helper.batcher import split

    request = ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    for name, points in (("a", 8), ("b", 8), ("c", 12)):
        metric = scope.metrics.add(name=name)
        for value in range(points):
            metric.gauge.data_points.add(as_int=value)
    parts = split(Signal.METRICS, request, 10)
    names = [[m.name for rm in p.resource_metrics for sm in rm.scope_metrics for m in sm.metrics] for p in parts]
    assert names == [["a"], ["b"], ["c"]]


@pytest.mark.parametrize(
    ("status", "content_type", "body", "sent", "rejected"),
    [
        (204, None, b"", 1, 0),  # any 2xx is a success, as for the Collector
        (202, "application/x-protobuf", b"", 1, 0),
        (302, None, b"", 0, 1),  # not followed: a POST would come back as a GET without its body
        (200, "text/html", b"<html>Jaeger UI</html>", 0, 1),  # not an OTLP receiver
        (200, "text/html", b"", 1, 0),  # no page, only a proxy's content type: a success
        (200, "application/x-protobuf", b"\xff\xff", 1, 0),  # a body that does not decode: still a success
    ],
)
async def test_http_answers_other_than_200_are_classified_not_taken_for_success(
    status: int, content_type: str | None, body: bytes, sent: int, rejected: int
) -> None:
    from aiohttp import web

    posts: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        posts.append(request.method)
        headers = {"Location": "http://elsewhere.example/v1/traces"} if status == 302 else {}
        return web.Response(status=status, body=body, content_type=content_type, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/v1/traces", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        batch = traces(1)
        spans = len(span_keys(batch))
        metrics = SelfMetrics()
        config = exporter_config(f"http://127.0.0.1:{port}", protocol="http/protobuf")
        await run_exporter(
            config,
            batch,
            metrics,
            lambda: (
                bool(posts)
                and value(metrics, "exporter_sent_items_total") + value(metrics, "exporter_rejected_items_total") > 0
            ),
        )
    finally:
        await runner.cleanup()
    assert posts == ["POST"]
    assert value(metrics, "exporter_sent_items_total") == sent * spans
    assert value(metrics, "exporter_rejected_items_total") == rejected * spans


async def test_an_http_error_is_reported_with_the_message_of_its_status_body() -> None:
    from agent.exporters._helper.retry import PermanentExportError

    with OtlpCapture() as backend:
        backend.capture.failures = [PlannedFailure(grpc.StatusCode.INVALID_ARGUMENT, 400, "span 3 has no name")]
        transport = HttpTransport(exporter_config(backend.http_url, protocol="http/protobuf"), None)
        await transport.start()
        try:
            with pytest.raises(PermanentExportError) as raised:
                await transport.export(Signal.TRACES, traces(1)[0], timeout=5)
        finally:
            await transport.close()
    assert str(raised.value) == f"HTTP 400: span 3 has no name ({backend.http_url}/v1/traces)"


@pytest.mark.parametrize(
    ("protocol", "scheme"),
    [
        ("grpc", ""),  # the listener never speaks HTTP/2: gRPC's deadline passes while connecting
        ("http/protobuf", "https://"),  # the TLS handshake never completes: aiohttp's connect timeout
    ],
)
async def test_a_backend_never_connected_to_is_not_a_possible_delivery(protocol: str, scheme: str) -> None:
    """A listener that accepts TCP and never answers: nothing was sent, so a later success is no duplicate and
    running out of retries is retries_exhausted, not unconfirmed."""
    import socket

    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    config = exporter_config(f"{scheme}127.0.0.1:{port}", protocol=protocol)  # tls.insecure: the scheme decides
    try:
        error = await failed_export(make_transport(config, None), 0.5)  # plain text
    finally:
        silent.close()
    assert (error.reason, error.maybe_delivered) == ("connection", False)


class _CuttingBackend:
    """An OTLP/HTTP backend on a raw socket that reads each whole request, then answers the first one badly:
    ``short`` sends a 200 whose body stops before its Content-Length, ``reset`` resets the connection. Later
    requests get a plain 200. aiohttp cannot be made to misbehave like this, hence the socket."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.bodies: list[bytes] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> _CuttingBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import socket
        import struct

        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        self.bodies.append(await reader.readexactly(length))
        if len(self.bodies) == 1 and self.mode == "short":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 100\r\n\r\nab")
        elif len(self.bodies) == 1 and self.mode == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()


async def export_through(mode: str) -> tuple[_CuttingBackend, SelfMetrics, int]:
    """One batch exported to a backend that answers its first request badly (``mode``); the batch's spans."""
    batch = traces(1)
    metrics = SelfMetrics()
    async with _CuttingBackend(mode) as backend:
        config = exporter_config(
            f"http://127.0.0.1:{backend.port}", protocol="http/protobuf", retry_on_failure={"initial_interval": "50ms"}
        )
        await run_exporter(config, batch, metrics, lambda: value(metrics, "exporter_sent_items_total") > 0)
    return backend, metrics, len(span_keys(batch))


async def test_a_200_whose_body_is_cut_short_is_a_success_not_a_resend() -> None:
    backend, metrics, spans = await export_through("short")
    assert len(backend.bodies) == 1  # the backend said 200 before the answer broke: the batch is delivered
    assert value(metrics, "exporter_sent_items_total") == spans
    assert value(metrics, "exporter_duplicates_total") == 0


async def test_a_connection_reset_after_the_request_was_sent_counts_the_resend_as_a_possible_duplicate() -> None:
    backend, metrics, spans = await export_through("reset")
    assert len(backend.bodies) == 2  # the backend had the whole first request: the resend may duplicate it
    assert value(metrics, "exporter_sent_items_total") == spans
    assert value(metrics, "exporter_duplicates_total") == spans


async def test_a_grpc_connection_lost_after_the_backend_stored_the_request_counts_the_resend_as_a_duplicate() -> None:
    """A TCP proxy in front of a real gRPC backend cuts both connections once the backend has recorded the first
    request (a pod killed before it answered). gRPC says UNAVAILABLE "Stream removed (Socket closed)", which a
    server sending UNAVAILABLE would not: the resend may duplicate what the backend stored."""
    batch = traces(1)
    metrics = SelfMetrics()
    with OtlpCapture() as backend:
        cut: list[asyncio.StreamWriter] = []

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_backend: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if from_backend and backend.capture.attempts >= 1 and not cut:
                        cut.extend(proxied)
                        for end in proxied:
                            end.transport.abort()
                        return
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass

        proxied: list[asyncio.StreamWriter] = []

        async def proxy(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", backend.grpc_port)
            proxied[:] = [client_writer, server_writer]
            await asyncio.gather(pump(client_reader, server_writer, False), pump(server_reader, client_writer, True))

        port = free_port()
        server = await asyncio.start_server(proxy, "127.0.0.1", port)
        try:
            config = exporter_config(f"127.0.0.1:{port}", retry_on_failure={"initial_interval": "50ms"})
            await run_exporter(config, batch, metrics, lambda: value(metrics, "exporter_sent_items_total") > 0)
        finally:
            server.close()
        assert backend.capture.attempts == 2 and cut
    spans = len(span_keys(batch))
    assert value(metrics, "exporter_sent_items_total") == spans
    assert value(metrics, "exporter_duplicates_total") == spans


def grpc_transport_to(port: int) -> GrpcTransport:
    return GrpcTransport(build_config(OtlpExporterConfig, {"endpoint": f"127.0.0.1:{port}"}), None)


async def failed_export(transport: Any, timeout: float = 5) -> RetryableError:
    """The retryable error one export of a span through ``transport`` (started here, closed after) ends in."""
    await transport.start()
    try:
        with pytest.raises(RetryableError) as raised:
            await transport.export(Signal.TRACES, traces(1)[0], timeout=timeout)
    finally:
        await transport.close()
    return raised.value


async def backend_that_never_answers() -> tuple[grpc.aio.Server, int, asyncio.Event]:
    """A gRPC core server that reads each Export call, sets the event, and answers none (within 10 s)."""
    received = asyncio.Event()

    async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        received.set()
        await asyncio.sleep(10)
        return b""

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, received


async def test_a_grpc_backend_stopped_with_the_call_in_flight_may_have_stored_it() -> None:
    """A gRPC core server stopped while handling the call (a backend's shutdown without grace) answers UNAVAILABLE
    "Cancelling all calls" after it has read, and perhaps stored, the request: a resend may duplicate it."""
    server, port, received = await backend_that_never_answers()
    transport = grpc_transport_to(port)
    await transport.start()
    try:
        call = asyncio.ensure_future(transport.export(Signal.TRACES, traces(1)[0], timeout=5))
        await asyncio.wait_for(received.wait(), 5)
        await server.stop(0)
        with pytest.raises(RetryableError) as raised:
            await call
        assert "Cancelling all calls" in str(raised.value)
        assert raised.value.maybe_delivered
    finally:
        await transport.close()
        await server.stop(0)


async def test_a_tls_handshake_failing_against_a_plain_text_backend_says_what_to_set() -> None:
    """An in-cluster Jaeger without TLS, the endpoint written without tls.insecure: gRPC says only "Tls handshake
    failed" at every retry (pass 150, a new user's walkthrough)."""
    from agent.exporters._helper.tls import TlsClientConfig

    server, port, _ = await backend_that_never_answers()  # plain text
    config = build_config(OtlpExporterConfig, {"endpoint": f"127.0.0.1:{port}"})
    try:
        error = await failed_export(GrpcTransport(config, TlsClientConfig().load("exporters.otlp.tls")))
    finally:
        await server.stop(0)
    assert "handshake failed" in str(error).lower()
    assert str(error).endswith("(if the endpoint speaks plain text, set tls.insecure: true or write http://)")


async def test_a_grpc_backend_that_hangs_up_on_every_connection_is_not_a_possible_delivery() -> None:
    """gRPC says "failed to connect to all addresses; last error: ... Connection reset by peer": the words of a
    connection lost under a call, but no call had a connection, so nothing was sent."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        error = await failed_export(grpc_transport_to(server.sockets[0].getsockname()[1]))
    finally:
        server.close()
    assert "failed to connect" in str(error)
    assert not error.maybe_delivered


async def test_a_grpc_deadline_passing_while_the_backend_handles_the_call_may_have_delivered() -> None:
    """Connected, sent, and no answer in time: the backend may store the request after all, so a resend is a
    possible duplicate (unlike a deadline passing while connecting)."""
    server, port, received = await backend_that_never_answers()
    try:
        error = await failed_export(grpc_transport_to(port), timeout=1.0)  # a float, as from a Duration setting
    finally:
        await server.stop(0)
    assert received.is_set()
    assert "Deadline Exceeded" in str(error)  # gRPC's own words are kept
    assert (error.reason, error.maybe_delivered) == ("deadline_exceeded", True)
    # gRPC says only "Deadline Exceeded": which limit, and whose setting (pass 152)
    assert str(error).endswith(": no answer within 1s (the exporter's timeout)"), str(error)


async def test_an_export_still_connecting_at_the_shutdown_deadline_was_not_delivered() -> None:
    """A peer that takes the TCP connection and never speaks HTTP/2: the request was never sent."""
    connections: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await asyncio.sleep(60)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    metrics = SelfMetrics()
    exporter = OtlpExporter(exporter_config(f"127.0.0.1:{port}", timeout="10s"), make_settings("otlp", metrics))
    await exporter.start()
    try:
        (batch,) = traces(1)
        exporter.consumer_for(Signal.TRACES).consume(batch)
        while not connections:
            await asyncio.sleep(0.01)
        await exporter.shutdown(time.monotonic() + 0.2)
    finally:
        for writer in connections:
            writer.close()
        server.close()
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="unconfirmed") == 0
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="shutdown") == len(
        span_keys([batch])
    )


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("value", ["Bearer s3cr3t\n", "Bearer\r\nX-Injected: 1", "tok\x00en"])
def test_a_header_value_with_a_control_character_is_a_config_error(protocol: str, value: str) -> None:
    """grpcio and aiohttp refuse such a value at every export (each batch dropped); a secret file read through
    ${env:…} often ends in a newline. The config check must say so, naming the header, not its value."""
    errors: list[ConfigError] = []
    endpoint = "jaeger:4317" if protocol == "grpc" else "http://jaeger:4318"
    raw = {"endpoint": endpoint, "protocol": protocol, "headers": {"authorization": value}}
    build(OtlpExporterConfig, raw, "exporters.otlp", errors)
    assert [str(e) for e in errors] == [
        "exporters.otlp.headers.authorization: the value contains a control character (a trailing newline?)"
    ]


def test_a_grpc_header_value_must_be_printable_ascii() -> None:
    errors: list[ConfigError] = []
    build(OtlpExporterConfig, {"endpoint": "jaeger:4317", "headers": {"x-team": "tökén"}}, "exporters.otlp", errors)
    assert [str(e) for e in errors] == ["exporters.otlp.headers.x-team: a gRPC metadata value must be printable ASCII"]
    errors.clear()
    raw = {"endpoint": "http://jaeger:4318", "protocol": "http/protobuf", "headers": {"x-team": "tökén\tb"}}
    build(OtlpExporterConfig, raw, "exporters.otlp", errors)
    assert errors == []  # HTTP takes obs-text and a tab


@pytest.mark.parametrize(
    ("protocol", "headers", "problem"),
    [
        # gRPC would read the credentials as part of the host name and never resolve it.
        ("grpc", {}, "a gRPC endpoint takes no user:password@; give the credentials as headers.authorization"),
        # aiohttp refuses credentials in the URL beside an Authorization header, at every export.
        (
            "http/protobuf",
            {"Authorization": "Bearer t"},
            "has user:password@ and headers.authorization gives credentials too; give them once",
        ),
        ("http/protobuf", {"x-team": "a"}, None),  # basic auth from the URL alone is sent
    ],
)
def test_credentials_in_the_endpoint_that_could_never_be_sent_are_a_config_error(
    protocol: str, headers: dict[str, str], problem: str | None
) -> None:
    errors: list[ConfigError] = []
    raw = {"endpoint": "https://user:pw@jaeger:4318", "protocol": protocol, "headers": headers}
    build(OtlpExporterConfig, raw, "exporters.otlp", errors)
    assert [str(e) for e in errors] == ([f"exporters.otlp.endpoint: {problem}"] if problem else [])


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_ca_file_that_holds_no_certificate_is_refused_when_the_exporter_is_built_for_both_transports(
    tmp_path: Path, protocol: str
) -> None:
    """grpcio takes an unreadable CA file and fails every handshake with "Failed to create security handshaker"
    until each batch is given up; the exporter must refuse to be built (the start or the reload), as it does for a
    missing file."""
    _, key = self_signed_certificate(tmp_path)
    endpoint = "localhost:4317" if protocol == "grpc" else "https://localhost:4318"
    raw = {"endpoint": endpoint, "protocol": protocol, "tls": {"ca_file": str(key)}}
    config = build_config(OtlpExporterConfig, raw)
    with pytest.raises(RuntimeError, match=r"^exporters\.otlp\.tls: TLS file\(s\) not usable .*server\.key"):
        OtlpExporter(config, make_settings("otlp"))


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_fields_a_sender_wrote_with_the_wrong_wire_type_are_not_sent_on(protocol: str) -> None:
    """One more field 5 (a span's ``name``, a string) written as a varint: upb keeps it as an unknown field and
    would write it out again, and a strict backend (pdata: "wrong wireType = 0 for field Name"; rotel) refuses the
    whole request, with the other senders' spans the exporter batched with it. What goes out holds known fields
    only, as what a Collector sends on."""
    clean = traces(1)[0]
    poisoned = ExportTraceServiceRequest.FromString(clean.SerializeToString())
    first_span = poisoned.resource_spans[0].scope_spans[0].spans[0]
    first_span.MergeFromString(b"\x28\x05")
    assert poisoned.SerializeToString() != clean.SerializeToString()  # upb kept it
    with OtlpCapture() as backend:
        endpoint = backend.grpc_endpoint if protocol == "grpc" else backend.http_url
        expected = span_keys([clean])
        config = exporter_config(endpoint, protocol=protocol)
        await run_exporter(config, [poisoned], SelfMetrics(), lambda: len(backend.capture.spans()) >= len(expected))
        assert span_keys(backend.capture.requests[Signal.TRACES]) == expected


def test_tls_settings_beside_insecure_true_are_a_config_error_not_plain_text() -> None:
    errors: list[ConfigError] = []
    raw = {"endpoint": "jaeger:4317", "tls": {"insecure": True, "ca_file": "/tls/ca.crt"}}
    build(OtlpExporterConfig, raw, "exporters.otlp", errors)
    assert [str(e) for e in errors] == [
        "exporters.otlp.tls.insecure: is true, so the connection is plain text and tls.ca_file would be ignored: "
        "set insecure: false for TLS (over a default or Helm value that sets it true) or remove them"
    ]
    # A URL's scheme decides: https:// is TLS whatever insecure says, so nothing is ignored.
    build(OtlpExporterConfig, {**raw, "endpoint": "https://jaeger:4318"}, "exporters.otlp", errors := [])
    assert errors == []


async def test_a_partial_success_with_a_negative_count_counts_the_batch_sent_once() -> None:
    """rejected_spans is an int64: a count below 0 once made the sending queue count the batch as sent (and more),
    then, its counter refusing a negative increment, as failed too."""
    _, metrics, batch = await export_to_capture(
        "grpc", lambda capture: setattr(capture, "partial_rejections", [-3]), "exporter_sent_items_total"
    )
    assert value(metrics, "exporter_sent_items_total", exporter="otlp") == len(span_keys(batch))
    assert value(metrics, "exporter_send_failed_items_total") == 0


def test_an_encrypted_client_key_is_refused_naming_it_instead_of_asking_for_a_passphrase(tmp_path: Path) -> None:
    """OpenSSL would ask for the passphrase on a terminal and wait there, or fail with a bare "Invalid argument"."""
    cert, key = encrypted_key_certificate(tmp_path)
    raw = {"endpoint": "localhost:4317", "tls": {"cert_file": str(cert), "key_file": str(key)}}
    with pytest.raises(RuntimeError) as raised:
        OtlpExporter(build_config(OtlpExporterConfig, raw), make_settings("otlp"))
    assert str(raised.value) == f"exporters.otlp.tls: TLS key is encrypted (give it without a passphrase): {key}"
