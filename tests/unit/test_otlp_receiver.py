"""The OTLP receiver in-process: each kind of bad input gets its documented answer, and the receiver keeps serving."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import logging
import threading
import time
import weakref
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from agent.component import Consumer, CreateSettings, Kind, Refused, Signal
from agent.config.schema import Duration, HostPort
from agent.config.service import ServiceConfig
from agent.otlp import json_codec
from agent.receivers.otlp import GrpcConfig, HttpConfig, OtlpReceiver, OtlpReceiverConfig, core
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.sinks import BatchSink, RefusingSink, SizedSink
from agent.testing.workload import Workload
from tests.helpers import free_port, metric_value

TRACES_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"  # no pipeline takes metrics here


@dataclass
class Running:
    grpc_target: str
    http_url: str
    metrics: SelfMetrics
    channel: grpc.aio.Channel

    async def grpc_export(self, body: bytes, compression: grpc.Compression | None = None) -> bytes:
        call = self.channel.unary_unary(TRACES_METHOD)
        return await call(body, timeout=5, compression=compression)

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.metrics.render().decode(), name, **labels)


async def start_receiver(
    consumer: Consumer, max_mib: int = 1, retry_after: float = 2.0, **http: Any
) -> tuple[OtlpReceiver, Running]:
    metrics = SelfMetrics()
    grpc_port, http_port = free_port(), free_port()
    config = OtlpReceiverConfig(
        grpc=GrpcConfig(endpoint=HostPort(f"127.0.0.1:{grpc_port}"), max_recv_msg_size_mib=max_mib),
        http=HttpConfig(endpoint=HostPort(f"127.0.0.1:{http_port}"), max_request_body_size_mib=max_mib, **http),
        retry_after=retry_after,
    )
    settings = CreateSettings("otlp", Kind.RECEIVER, logging.getLogger("test"), metrics, ServiceConfig(), {})
    receiver = OtlpReceiver(config, settings, {Signal.TRACES: consumer, Signal.LOGS: consumer})
    await receiver.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    return receiver, Running(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", metrics, channel)


@pytest.fixture
async def sink() -> BatchSink:
    return BatchSink()


@pytest.fixture
async def running(sink: BatchSink) -> AsyncIterator[Running]:
    receiver, state = await start_receiver(sink)
    yield state
    await state.channel.close()
    await receiver.shutdown(time.monotonic() + 2)


def request_bytes(seed: int = 1) -> tuple[ExportTraceServiceRequest, bytes]:
    request, _ = next(Workload(seed=seed).requests(1))
    return request, request.SerializeToString()


async def post(url: str, body: bytes, content_type: str, **headers: str) -> tuple[int, bytes, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": content_type, **headers}) as response,
    ):
        return response.status, await response.read(), response.headers


async def test_grpc_export_reaches_the_pipeline_and_answers_full_success(running: Running, sink: BatchSink) -> None:
    request, body = request_bytes()
    answer = ExportTraceServiceResponse.FromString(await running.grpc_export(body))
    assert not answer.HasField("partial_success")
    assert sink.batches == [request]


async def test_grpc_accepts_gzip_compressed_requests(running: Running, sink: BatchSink) -> None:
    request, body = request_bytes()
    await running.grpc_export(body, compression=grpc.Compression.Gzip)
    assert sink.batches == [request]


async def test_grpc_rejects_malformed_protobuf_with_invalid_argument_and_keeps_serving(
    running: Running, sink: BatchSink
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.grpc_export(b"\x0a\xff\xff\xff\xff\x0f")
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert running.metric("otel_sidecar_receiver_failed_requests_total", reason="malformed") == 1
    request, body = request_bytes()
    await running.grpc_export(body)
    assert sink.batches == [request]


def request_with_bad_utf8() -> tuple[ExportTraceServiceRequest, bytes]:
    """A request whose span name and one attribute value are not UTF-8, as a C library's text or a value cut in the
    middle of a character can be; and the request the agent should pass on."""
    request, _ = request_bytes()
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.name = "name-ZZ"
    span.attributes.add(key="error.message").value.string_value = "cut-YYYYY"
    body = (
        request.SerializeToString()
        .replace(b"name-ZZ", b"name-\xc3\x28")
        .replace(b"cut-YYYYY", b"cut-\xe2\x82\xac\xe2\x82")
    )
    span.name = "name-\ufffd("
    span.attributes[-1].value.string_value = "cut-\u20ac\ufffd"
    return request, body


async def test_strings_that_are_not_utf8_are_repaired_not_the_whole_request_refused(
    running: Running, sink: BatchSink
) -> None:
    # protobuf refuses such a string, which would turn the sender's whole batch into a 400 never retried.
    expected, body = request_with_bad_utf8()
    answer = ExportTraceServiceResponse.FromString(await running.grpc_export(body))
    assert sink.batches == [expected]
    assert answer.partial_success.rejected_spans == 0
    assert "2 strings were not valid UTF-8" in answer.partial_success.error_message
    status, reply, _ = await post(f"{running.http_url}/v1/traces", body, "application/x-protobuf")
    assert status == 200
    assert (
        "2 strings were not valid UTF-8" in ExportTraceServiceResponse.FromString(reply).partial_success.error_message
    )
    assert sink.batches == [expected, expected]
    assert running.metric("otel_sidecar_receiver_repaired_strings_total", transport="grpc") == 2
    assert running.metric("otel_sidecar_receiver_repaired_strings_total", transport="http") == 2
    assert running.metric("otel_sidecar_receiver_failed_requests_total", reason="malformed") == 0


async def test_a_request_whose_strings_were_repaired_is_handed_on_with_its_size_after_the_repair() -> None:
    """The stages bound their memory by the size a batch comes with: each bad byte became three."""
    sink = SizedSink()
    receiver, state = await start_receiver(sink)
    try:
        request, _ = request_bytes()
        request.resource_spans[0].scope_spans[0].spans[0].name = "Z" * 30_000
        body = request.SerializeToString().replace(b"Z" * 30_000, b"\xff" * 30_000)
        await state.grpc_export(body)
        (batch,) = sink.batches
        assert sink.sizes == [batch.ByteSize()] and batch.ByteSize() > len(body) + 50_000
    finally:
        await state.channel.close()
        await receiver.shutdown(time.monotonic() + 2)


async def test_an_http_request_is_handed_on_with_its_protobuf_size_whichever_encoding_it_came_in() -> None:
    """JSON is two to three times the protobuf size: the stages bound their memory by the protobuf size, the
    size the batch holds in memory, so a JSON sender is not held to a third of the bound."""
    sink = SizedSink()
    receiver, state = await start_receiver(sink)
    try:
        request, body = request_bytes()
        as_json = json_codec.encode(request)
        for payload, content_type in ((body, "application/x-protobuf"), (as_json, "application/json")):
            status, _, _ = await post(state.http_url + "/v1/traces", payload, content_type)
            assert status == 200
        assert sink.batches == [request, request]
        assert sink.sizes == [len(body), request.ByteSize()] and len(as_json) > 2 * len(body)
    finally:
        await state.channel.close()
        await receiver.shutdown(time.monotonic() + 2)


async def test_a_body_broken_beyond_its_strings_is_still_refused_as_malformed(running: Running) -> None:
    _, body = request_with_bad_utf8()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.grpc_export(body[:-3])
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert running.metric("otel_sidecar_receiver_failed_requests_total", reason="malformed") == 1
    assert running.metric("otel_sidecar_receiver_repaired_strings_total", transport="grpc") == 0


async def test_grpc_rejects_oversized_requests_with_resource_exhausted(running: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.grpc_export(b"\x00" * (1024 * 1024 + 10))
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert running.metric("otel_sidecar_receiver_failed_requests_total", reason="too_large") == 1


def request_of_exactly(size: int) -> ExportTraceServiceRequest:
    """A valid request of one span, ``size`` bytes serialized (its name fills it)."""
    request = request_of_spans(1)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    while (missing := size - request.ByteSize()) != 0:
        span.name = "x" * (len(span.name) + missing)
    return request


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_a_request_of_exactly_the_size_limit_is_accepted(
    running: Running, sink: BatchSink, transport: str
) -> None:
    """The limit (``max_recv_msg_size_mib``, ``max_request_body_size_mib``) is the largest request accepted."""
    request = request_of_exactly(1024 * 1024)
    body = request.SerializeToString()
    if transport == "grpc":
        await running.grpc_export(body)
    else:
        status, _, _ = await post(running.http_url + "/v1/traces", body, "application/x-protobuf")
        assert status == 200
    assert sink.batches == [request]


async def test_spans_with_invalid_ids_are_rejected_individually_through_partial_success(
    running: Running, sink: BatchSink
) -> None:
    request, _ = request_bytes()
    spans = request.resource_spans[0].scope_spans[0].spans
    total = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    spans[0].trace_id = b"short"
    spans[1].span_id = b"short"
    answer = ExportTraceServiceResponse.FromString(await running.grpc_export(request.SerializeToString()))
    assert answer.partial_success.rejected_spans == 2
    assert "16 bytes" in answer.partial_success.error_message
    accepted = sink.batches[0]
    assert sum(len(ss.spans) for rs in accepted.resource_spans for ss in rs.scope_spans) == total - 2
    assert running.metric("otel_sidecar_receiver_refused_items_total", reason="invalid") == 2
    assert running.metric("otel_sidecar_receiver_accepted_items_total", transport="grpc") == total - 2


async def test_a_request_whose_every_span_is_invalid_hands_nothing_on(running: Running, sink: BatchSink) -> None:
    request = request_of_spans(2)
    for span in request.resource_spans[0].scope_spans[0].spans:
        span.trace_id = b"short"
    answer = ExportTraceServiceResponse.FromString(await running.grpc_export(request.SerializeToString()))
    assert answer.partial_success.rejected_spans == 2
    assert sink.batches == []
    assert running.metric("otel_sidecar_receiver_refused_items_total", reason="invalid") == 2


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_the_warning_about_rejected_spans_names_the_sender(
    running: Running, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Many orchestrators send to one agent (a gateway): the operator needs to know which one to fix."""
    request, _ = request_bytes()
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = b"short"
    body = request.SerializeToString()
    if transport == "grpc":
        await running.grpc_export(body)
    else:
        status, _, _ = await post(f"{running.http_url}/v1/traces", body, "application/x-protobuf")
        assert status == 200
    (warning,) = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert "127.0.0.1" in warning.peer  # type: ignore[attr-defined]


async def test_a_span_with_a_malformed_link_is_rejected_like_one_with_malformed_ids(
    running: Running, sink: BatchSink
) -> None:
    request, _ = request_bytes()
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.links.add(trace_id=b"\x01", span_id=b"\x02")
    answer = ExportTraceServiceResponse.FromString(await running.grpc_export(request.SerializeToString()))
    assert answer.partial_success.rejected_spans == 1
    assert "links" in answer.partial_success.error_message


async def test_a_link_whose_ids_are_absent_is_accepted(running: Running, sink: BatchSink) -> None:
    """Collector-based senders leave an all-zero link id out of the wire; the link (an invalid context with
    attributes, as the spec asks SDKs to record) is valid."""
    request, _ = request_bytes()
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.links.add().attributes.add(key="reason", value=AnyValue(string_value="no parent context"))
    answer = ExportTraceServiceResponse.FromString(await running.grpc_export(request.SerializeToString()))
    assert not answer.HasField("partial_success")


class RefusingUntilTold(BatchSink):
    """Refuses, as a full pipeline does, until ``refusing`` is set false."""

    refusing = True

    def consume(self, batch: Any) -> None:
        if self.refusing:
            raise Refused("buffer full", 1.0)
        super().consume(batch)


async def test_invalid_spans_of_a_refused_request_are_counted_once_when_its_retry_is_accepted() -> None:
    sink = RefusingUntilTold()
    receiver, state = await start_receiver(sink)
    try:
        request, _ = request_bytes()
        request.resource_spans[0].scope_spans[0].spans[0].trace_id = b"short"
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await state.grpc_export(request.SerializeToString())
        assert state.metric("otel_sidecar_receiver_refused_items_total", reason="invalid") == 0
        sink.refusing = False
        await state.grpc_export(request.SerializeToString())
        assert state.metric("otel_sidecar_receiver_refused_items_total", reason="invalid") == 1
        assert len(sink.batches) == 1
    finally:
        await state.channel.close()
        await receiver.shutdown(time.monotonic() + 2)


async def test_an_endpoint_without_a_host_listens_on_every_interface_for_grpc_too() -> None:
    port = free_port()
    config = OtlpReceiverConfig(grpc=GrpcConfig(endpoint=HostPort(f":{port}")), http=HttpConfig(enabled=False))
    settings = CreateSettings("otlp", Kind.RECEIVER, logging.getLogger("test"), SelfMetrics(), ServiceConfig(), {})
    sink = BatchSink()
    receiver = OtlpReceiver(config, settings, {Signal.TRACES: sink})
    await receiver.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await channel.unary_unary(TRACES_METHOD)(request_bytes()[1], timeout=5)
        assert len(sink.batches) == 1
    finally:
        await receiver.shutdown(time.monotonic() + 2)


@pytest.mark.parametrize("retry_after", [2.0, 2.5, 0.25])  # fractions of a second too (pass 143)
async def test_a_full_pipeline_gets_unavailable_with_retry_info_over_grpc(retry_after: float) -> None:
    receiver, state = await start_receiver(RefusingSink(), retry_after=retry_after)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await state.grpc_export(request_bytes()[1])
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        details = dict(tuple(raised.value.trailing_metadata()))["grpc-status-details-bin"]
        status = status_pb2.Status.FromString(details)
        retry = error_details_pb2.RetryInfo()
        assert status.code == code_pb2.UNAVAILABLE and status.details[0].Unpack(retry)
        assert retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9 == retry_after
        # The OpenTelemetry Python SDK's exporter reads its backoff from this trailer, not from the status details.
        alone = error_details_pb2.RetryInfo.FromString(
            dict(tuple(raised.value.trailing_metadata()))["google.rpc.retryinfo-bin"]
        )
        assert alone == retry
        assert state.metric("otel_sidecar_receiver_refused_items_total", reason="backpressure") > 0
    finally:
        await state.channel.close()
        await receiver.shutdown(time.monotonic() + 2)


class ShortOfMemory(BatchSink):
    """A pipeline whose memory limiter refuses: the ingest queue tells the receiver so before a request is read."""

    def memory_refusal(self) -> Refused | None:
        return Refused("high memory usage", 1.0, process_wide=True)


async def test_while_memory_is_short_requests_are_refused_unread_with_the_configured_retry_after() -> None:
    receiver, state = await start_receiver(ShortOfMemory(), retry_after=3.0)
    try:
        unread = b"\x0a\xff\xff"  # malformed: a 400 had it been decoded
        status, body, headers = await post(state.http_url + "/v1/traces", unread, "application/x-protobuf")
        assert status == 503 and headers["Retry-After"] == "3"
        assert "high memory usage" in status_pb2.Status.FromString(body).message
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await state.grpc_export(unread)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        trailers = dict(tuple(raised.value.trailing_metadata()))
        assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 3
        failed = "otel_sidecar_receiver_failed_requests_total"
        for transport in ("grpc", "http"):
            assert state.metric(failed, transport=transport, reason="backpressure") == 1
        assert state.metric(failed, reason="malformed") == 0
    finally:
        await state.channel.close()
        await receiver.shutdown(time.monotonic() + 2)


@pytest.mark.parametrize(("retry_after", "header"), [(2.0, "2"), (2.5, "3"), (0.2, "1"), (0.0, "1")])
async def test_a_full_pipeline_gets_503_with_retry_after_over_http(retry_after: float, header: str) -> None:
    """Whole seconds, rounded up: a sender must never be told to come back sooner than configured."""
    receiver, state = await start_receiver(RefusingSink(), retry_after=retry_after)
    try:
        status, body, headers = await post(state.http_url + "/v1/traces", request_bytes()[1], "application/x-protobuf")
        assert status == 503
        assert headers["Retry-After"] == header
        assert status_pb2.Status.FromString(body).code == code_pb2.UNAVAILABLE
    finally:
        await state.channel.close()
        await receiver.shutdown(time.monotonic() + 2)


async def test_http_protobuf_export_answers_in_protobuf(running: Running, sink: BatchSink) -> None:
    request, body = request_bytes()
    status, answer, headers = await post(running.http_url + "/v1/traces", body, "application/x-protobuf")
    assert status == 200
    assert headers["Content-Type"] == "application/x-protobuf"
    assert not ExportTraceServiceResponse.FromString(answer).HasField("partial_success")
    assert sink.batches == [request]
    spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    assert running.metric("otel_sidecar_receiver_accepted_items_total", transport="http") == spans
    assert running.metric("otel_sidecar_receiver_accepted_items_total", transport="grpc") == 0


async def test_http_json_export_with_gzip_answers_in_json(running: Running, sink: BatchSink) -> None:
    request, _ = request_bytes()
    body = gzip.compress(json_codec.encode(request))
    status, answer, headers = await post(
        running.http_url + "/v1/traces", body, "application/json", **{"Content-Encoding": "gzip"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert answer == b"{}"
    assert sink.batches == [request]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
async def test_a_json_content_type_with_a_charset_or_in_capitals_is_json(
    running: Running, sink: BatchSink, content_type: str
) -> None:
    """A media type is case-insensitive, and many HTTP clients add a charset to application/json."""
    request, _ = request_bytes()
    status, answer, headers = await post(running.http_url + "/v1/traces", json_codec.encode(request), content_type)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json") and answer == b"{}"
    assert sink.batches == [request]


def threads_calling(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[threading.Thread]:
    """The threads that call ``owner.name`` from now on, one entry per call."""
    threads: list[threading.Thread] = []
    original = getattr(owner, name)

    def recording(*args: Any) -> Any:
        threads.append(threading.current_thread())
        return original(*args)

    monkeypatch.setattr(owner, name, recording)
    return threads


def request_of_spans(spans: int) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for n in range(spans):
        scope.spans.add(trace_id=b"\x01" * 16, span_id=(n + 1).to_bytes(8, "big"), name="x" * 40)
    return request


@pytest.mark.parametrize(("spans", "off_the_loop"), [(1, False), (5000, True)])
async def test_a_large_json_body_is_decoded_off_the_event_loop(
    running: Running, sink: BatchSink, monkeypatch: pytest.MonkeyPatch, spans: int, off_the_loop: bool
) -> None:
    """Decoding JSON costs Python time per field: a large body decoded on the loop would stall every other request
    and the health endpoints for seconds. A small one stays on the loop, where it is cheapest."""
    threads = threads_calling(monkeypatch, json_codec, "decode_repairing")
    request = request_of_spans(spans)
    status, _, _ = await post(running.http_url + "/v1/traces", json_codec.encode(request), "application/json")
    assert status == 200
    assert (threads[0] is not threading.main_thread()) is off_the_loop
    assert sink.batches == [request]


@pytest.mark.parametrize(("spans", "off_the_loop"), [(1, False), (5000, True)])
@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_a_large_protobuf_body_with_strings_to_repair_is_repaired_off_the_event_loop(
    running: Running, sink: BatchSink, monkeypatch: pytest.MonkeyPatch, spans: int, off_the_loop: bool, transport: str
) -> None:
    """A repair walks every field in Python (about 17 MB/s): a 16 MiB body repaired on the loop would hold it for
    a second. Well-formed large bodies stay on the loop: their decoding is in C."""
    threads = threads_calling(monkeypatch, core, "decode_repairing_utf8")
    request = request_of_spans(spans)
    first = request.resource_spans[0].scope_spans[0].spans[0]
    first.name = "bad-Z"
    body = request.SerializeToString().replace(b"bad-Z", b"bad-\xff")
    first.name = "bad-\ufffd"
    if transport == "grpc":
        await running.grpc_export(body)
    else:
        status, _, _ = await post(running.http_url + "/v1/traces", body, "application/x-protobuf")
        assert status == 200
    assert len(threads) == 1 and (threads[0] is not threading.main_thread()) is off_the_loop
    assert sink.batches == [request]


async def test_large_json_bodies_are_decoded_one_at_a_time(
    running: Running, sink: BatchSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each decode builds its whole body's objects before any bound sees them: concurrent decodes would multiply
    the memory a burst takes (six 15 MiB bodies: 770 MiB against 100 MiB one at a time)."""
    running_now, most = 0, 0
    lock = threading.Lock()
    decode = json_codec.decode_repairing

    def counting(body: bytes, message_type: Any, unknown_keys: list[str] | None = None) -> Any:
        nonlocal running_now, most
        with lock:
            running_now += 1
            most = max(most, running_now)
        try:
            time.sleep(0.05)  # long enough for the other requests' decodes to start if they could
            return decode(body, message_type, unknown_keys)
        finally:
            with lock:
                running_now -= 1

    monkeypatch.setattr(json_codec, "decode_repairing", counting)
    body = json_codec.encode(request_of_spans(5000))
    answers = await asyncio.gather(*(post(running.http_url + "/v1/traces", body, "application/json") for _ in range(4)))
    assert [status for status, _, _ in answers] == [200] * 4
    assert most == 1


@pytest.mark.parametrize("values", ["objects", "numbers"])
async def test_a_small_json_body_of_many_values_is_decoded_off_the_event_loop(
    running: Running, sink: BatchSink, monkeypatch: pytest.MonkeyPatch, values: str
) -> None:
    """JSON costs per value as well as per byte: 100 KiB of 9,000 attributes, or 60 KiB of 30,000 numbers (a
    field the agent does not know is parsed all the same), would hold the loop as long as a far larger body of
    long strings."""
    threads = threads_calling(monkeypatch, json_codec, "decode_repairing")
    request = request_of_spans(1)
    if values == "objects":
        span = request.resource_spans[0].scope_spans[0].spans[0]
        for n in range(9000):
            span.attributes.add(key=f"k{n}")
        body = json_codec.encode(request)
    else:
        body = json_codec.encode(request)[:-1] + b',"unknownField":[' + b",".join([b"1"] * 30_000) + b"]}"
    assert len(body) < core.SLOW_DECODE_ON_LOOP_BYTES
    status, _, _ = await post(running.http_url + "/v1/traces", body, "application/json")
    assert status == 200
    assert threads[0] is not threading.main_thread()
    assert sink.batches == [request]


def slow_down(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, seconds: float) -> list[int]:
    """Make each call of ``owner.name`` (a decode: the repair of a protobuf body, or JSON's) take ``seconds``
    longer; the sizes of the bodies it was given, in order."""
    sizes: list[int] = []
    decode = getattr(owner, name)

    def slow(*args: Any) -> Any:
        sizes.append(next(len(arg) for arg in args if isinstance(arg, bytes)))
        time.sleep(seconds)
        return decode(*args)

    monkeypatch.setattr(owner, name, slow)
    return sizes


def body_to_repair(spans: int) -> bytes:
    """A protobuf body of ``spans`` spans, each name with a byte that is not UTF-8: repaired on the thread."""
    body = request_of_spans(spans).SerializeToString().replace(b"x" * 40, b"\xff" + b"x" * 39)
    assert len(body) > core.SLOW_DECODE_ON_LOOP_BYTES
    return body


@pytest.mark.parametrize(("bound", "statuses"), [(1.5, [200, 503, 503]), (2, [200, 200, 503])])
async def test_bodies_waiting_to_be_decoded_are_bounded_and_the_rest_told_to_retry(
    running: Running, sink: BatchSink, monkeypatch: pytest.MonkeyPatch, bound: float, statuses: list[int]
) -> None:
    """Each body waiting for the decoding thread stays in memory: 40 of them once held 854 MiB. A body that
    brings the bytes waiting to the bound exactly is within it."""
    slow_down(monkeypatch, json_codec, "decode_repairing", 0.3)
    body = json_codec.encode(request_of_spans(5000))
    monkeypatch.setattr(core, "SLOW_DECODE_QUEUE_BYTES", int(len(body) * bound))
    answers = await asyncio.gather(*(post(running.http_url + "/v1/traces", body, "application/json") for _ in range(3)))
    assert sorted(status for status, _, _ in answers) == statuses
    assert all(headers["Retry-After"] == "2" for status, _, headers in answers if status == 503)
    refused = statuses.count(503)
    assert running.metric("otel_sidecar_receiver_failed_requests_total", reason="backpressure") == refused
    status, _, _ = await post(running.http_url + "/v1/traces", body, "application/json")
    assert status == 200  # the bound is on what waits, not on what was decoded before
    assert len(sink.batches) == 4 - refused


async def test_a_body_larger_than_the_wait_bound_is_decoded_when_nothing_else_waits(
    running: Running, sink: BatchSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound is on bodies waiting beside one another: a body over it on its own (a size limit raised past
    64 MiB) is decoded, not refused at every retry."""
    body = json_codec.encode(request_of_spans(5000))
    monkeypatch.setattr(core, "SLOW_DECODE_QUEUE_BYTES", len(body) // 2)
    status, _, _ = await post(running.http_url + "/v1/traces", body, "application/json")
    assert status == 200
    assert len(sink.batches) == 1


async def test_a_body_whose_sender_left_while_it_waited_is_not_decoded(
    running: Running, sink: BatchSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender that timed out has gone, and will send its body again: decoding it anyway held later requests back
    for a minute behind the bodies of senders long gone."""
    decoded = slow_down(monkeypatch, json_codec, "decode_repairing", 0.5)
    first = json_codec.encode(request_of_spans(5000))
    second = json_codec.encode(request_of_spans(5001))
    answered = asyncio.ensure_future(post(running.http_url + "/v1/traces", first, "application/json"))
    await asyncio.sleep(0.1)  # the first body is being decoded: the second waits for its turn
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as session:
        with pytest.raises(TimeoutError):
            await session.post(
                running.http_url + "/v1/traces", data=second, headers={"Content-Type": "application/json"}
            )
    assert (await answered)[0] == 200
    deadline = time.monotonic() + 5
    while running.metric("otel_sidecar_receiver_failed_requests_total", reason="incomplete") < 1:
        assert time.monotonic() < deadline, "the departed sender's request was never counted"
        await asyncio.sleep(0.05)
    assert decoded == [len(first)]
    assert len(sink.batches) == 1


async def test_a_grpc_sender_that_gives_up_while_its_body_waits_is_counted_and_not_decoded(
    running: Running, sink: BatchSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC cancels the call of a sender past its deadline: the wait for the decoding thread ends there, and the
    request is counted as incomplete, as over HTTP."""
    decoded = slow_down(monkeypatch, core, "decode_repairing_utf8", 0.6)
    first, second = body_to_repair(5000), body_to_repair(5001)
    call = running.channel.unary_unary(TRACES_METHOD)
    answered = asyncio.ensure_future(call(first, timeout=10))
    await asyncio.sleep(0.1)  # the first body is being repaired: the second waits for its turn
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(second, timeout=0.3)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await answered
    assert decoded == [len(first)]
    assert running.metric("otel_sidecar_receiver_failed_requests_total", transport="grpc", reason="incomplete") == 1
    # Its bytes no longer count as waiting: with a bound that a single byte waiting would exceed, the next body
    # is still decoded, not refused.
    monkeypatch.setattr(core, "SLOW_DECODE_QUEUE_BYTES", 1)
    await call(first, timeout=10)
    assert len(sink.batches) == 2


async def test_a_grpc_sender_that_gives_up_during_its_own_decode_is_counted_incomplete(
    running: Running, sink: BatchSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread decodes on after gRPC cancels the call: the request was counted nowhere."""
    decoded = slow_down(monkeypatch, core, "decode_repairing_utf8", 0.6)
    first, second = body_to_repair(5000), body_to_repair(5001)
    call = running.channel.unary_unary(TRACES_METHOD)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(first, timeout=0.3)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await call(second, timeout=10)
    assert decoded == [len(first), len(second)]
    assert running.metric("otel_sidecar_receiver_failed_requests_total", transport="grpc", reason="incomplete") == 1
    assert len(sink.batches) == 1


async def test_a_body_decoded_for_a_sender_gone_still_counts_against_the_wait_bound(
    running: Running, sink: BatchSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its bytes were released when gRPC cancelled the call, while the thread still held the body: every sender
    that gave up let another body in beyond the bound."""
    slow_down(monkeypatch, core, "decode_repairing_utf8", 1.5)
    body = body_to_repair(5000)
    monkeypatch.setattr(core, "SLOW_DECODE_QUEUE_BYTES", int(len(body) * 1.5))
    call = running.channel.unary_unary(TRACES_METHOD)
    with pytest.raises(grpc.aio.AioRpcError):
        await call(body, timeout=0.3)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(body, timeout=10)  # while the first body is still being decoded
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert running.metric("otel_sidecar_receiver_failed_requests_total", transport="grpc", reason="backpressure") == 1


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_a_request_of_more_spans_than_its_bytes_can_hold_valid_is_refused_whole_and_counted(
    running: Running, sink: BatchSink, transport: str
) -> None:
    """20,000 empty spans in 40 KB: none can carry ids. Checked one by one, 16 MiB of them took 2.3 GB and 17 s
    on the event loop."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for _ in range(20_000):
        scope.spans.add()
    body = request.SerializeToString()
    if transport == "grpc":
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await running.grpc_export(body)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        message = raised.value.details()
    else:
        status, answer, _ = await post(running.http_url + "/v1/traces", body, "application/x-protobuf")
        assert status == 400
        message = status_pb2.Status.FromString(answer).message
    assert f"20000 spans in {len(body)} bytes" in message and "at least 30 bytes" in message
    assert running.metric("otel_sidecar_receiver_refused_items_total", transport=transport, reason="invalid") == 20_000
    assert sink.batches == []


async def test_a_request_refused_over_grpc_is_freed_at_once_not_at_the_next_full_collection(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The abort raised inside the except block chained the refusal, whose traceback held the decoded request
    (1.5 GB for 16 MiB of empty spans) until a full collection, which an idle agent may not run for hours."""

    class Marker:
        pass

    markers: list[weakref.ref[Marker]] = []
    original = core.ExportHandler.export

    def export(self: core.ExportHandler, *args: Any, **kwargs: Any) -> Any:
        marker = Marker()  # lives as long as this frame, which holds the decoded request too
        markers.append(weakref.ref(marker))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(core.ExportHandler, "export", export)
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for _ in range(20_000):
        scope.spans.add()
    gc.disable()
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await running.grpc_export(request.SerializeToString())
        await asyncio.sleep(0.1)
        assert markers and markers[0]() is None
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (b"\x0a\xff\xff", "application/x-protobuf", 400, "malformed"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 7}]}]}]}', "application/json", 400, "malformed"),
        (b"{", "application/json", 400, "malformed"),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
        (b"\x00" * (1024 * 1024 + 1), "application/x-protobuf", 413, "too_large"),
    ],
)
async def test_bad_http_requests_get_their_documented_status_and_are_counted(
    running: Running, sink: BatchSink, body: bytes, content_type: str, status: int, reason: str
) -> None:
    got, answer, _ = await post(running.http_url + "/v1/traces", body, content_type)
    assert got == status
    parsed = (
        json_codec.decode(answer, status_pb2.Status)
        if content_type == "application/json"
        else status_pb2.Status.FromString(answer)
    )
    codes = {400: code_pb2.INVALID_ARGUMENT, 413: code_pb2.RESOURCE_EXHAUSTED, 415: code_pb2.INVALID_ARGUMENT}
    assert parsed.code == codes[status] and parsed.message
    assert running.metric("otel_sidecar_receiver_failed_requests_total", reason=reason) == 1
    assert sink.batches == []
    _request, good = request_bytes()
    assert (await post(running.http_url + "/v1/traces", good, "application/x-protobuf"))[0] == 200


async def test_a_broken_gzip_stream_is_a_bad_request(running: Running) -> None:
    status, _, _ = await post(
        running.http_url + "/v1/traces", b"\x1f\x8b not gzip", "application/x-protobuf", **{"Content-Encoding": "gzip"}
    )
    assert status == 400


def _several_requests_in_one() -> tuple[ExportTraceServiceRequest, bytes, bytes]:
    first, first_bytes = request_bytes(1)
    second, second_bytes = request_bytes(2)
    merged = ExportTraceServiceRequest()
    merged.MergeFrom(first)
    merged.MergeFrom(second)
    return merged, first_bytes, second_bytes


async def test_a_deflate_body_in_gzip_framing_is_read_as_some_senders_send_it(
    running: Running, sink: BatchSink
) -> None:
    request, raw = request_bytes()
    status, _, _ = await post(
        running.http_url + "/v1/traces", gzip.compress(raw), "application/x-protobuf", **{"Content-Encoding": "deflate"}
    )
    assert status == 200
    assert sink.batches == [request]


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "identity", "GZIP"])
async def test_http_bodies_are_decompressed_by_content_encoding(
    running: Running, sink: BatchSink, encoding: str
) -> None:
    request, raw = request_bytes()
    compress = {"gzip": gzip.compress, "x-gzip": gzip.compress, "deflate": zlib.compress, "identity": bytes}
    body = compress[encoding.lower()](raw)
    status, _, _ = await post(
        running.http_url + "/v1/traces", body, "application/x-protobuf", **{"Content-Encoding": encoding}
    )
    assert status == 200
    assert sink.batches == [request]


async def test_a_gzip_body_of_several_members_is_read_whole(running: Running, sink: BatchSink) -> None:
    merged, first, second = _several_requests_in_one()
    body = gzip.compress(first) + gzip.compress(second)  # protobuf messages concatenate into their merge
    status, _, _ = await post(
        running.http_url + "/v1/traces", body, "application/x-protobuf", **{"Content-Encoding": "gzip"}
    )
    assert status == 200
    assert sink.batches == [merged]


async def test_a_gzip_body_cut_short_is_refused_not_half_accepted(running: Running, sink: BatchSink) -> None:
    _request, raw = request_bytes()
    whole = gzip.compress(raw, compresslevel=1)
    for cut in (whole[: len(whole) // 2], whole[:-4]):  # mid-stream; only the trailer's size field missing
        status, answer, _ = await post(
            running.http_url + "/v1/traces", cut, "application/x-protobuf", **{"Content-Encoding": "gzip"}
        )
        assert status == 400
        assert "truncated" in status_pb2.Status.FromString(answer).message
    assert running.metric("otel_sidecar_receiver_failed_requests_total", reason="malformed") == 2
    assert sink.batches == []


async def test_a_gzip_bomb_stops_at_the_limit_with_413(running: Running, sink: BatchSink) -> None:
    bomb = gzip.compress(b"\x00" * (64 * 1024 * 1024))  # 64 MiB from about 64 KiB; the limit is 1 MiB
    status, _, _ = await post(
        running.http_url + "/v1/traces", bomb, "application/x-protobuf", **{"Content-Encoding": "gzip"}
    )
    assert status == 413
    assert running.metric("otel_sidecar_receiver_failed_requests_total", reason="too_large") == 1


@pytest.mark.parametrize("encoding", ["br", "zstd", "snappy", "compress"])
async def test_an_unsupported_content_encoding_is_answered_415_in_otlp_form_and_counted(
    running: Running, sink: BatchSink, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    _request, raw = request_bytes()
    status, answer, _ = await post(
        running.http_url + "/v1/traces", raw, "application/x-protobuf", **{"Content-Encoding": encoding}
    )
    assert status == 415
    message = status_pb2.Status.FromString(answer).message
    assert f"unsupported Content-Encoding {encoding!r}" in message and "gzip" in message
    assert running.metric("otel_sidecar_receiver_failed_requests_total", reason="unsupported_media_type") == 1
    assert sink.batches == []
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a sender's mistake"


async def test_an_unknown_content_type_is_answered_415_with_a_protobuf_status(running: Running) -> None:
    # OTLP/HTTP: the body of every 4xx and 5xx answer is a protobuf-encoded google.rpc.Status.
    status, answer, headers = await post(running.http_url + "/v1/traces", b"hello", "text/plain")
    assert status == 415 and headers["Content-Type"] == "application/x-protobuf"
    assert status_pb2.Status.FromString(answer).message.startswith("unsupported content type 'text/plain'")


async def test_a_request_without_content_type_is_told_so(running: Running) -> None:
    host, port = running.http_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 415")
    assert status_pb2.Status.FromString(body).message.startswith("no Content-Type; use application/x-protobuf")


class BrokenSink:
    def consume(self, batch: Any) -> None:
        raise RuntimeError("a bug in a pipeline stage")


async def test_a_bug_behind_the_receiver_is_answered_internal_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver, running = await start_receiver(BrokenSink())  # type: ignore[arg-type]
    try:
        _request, raw = request_bytes()
        status, answer, _ = await post(running.http_url + "/v1/traces", raw, "application/x-protobuf")
        assert status == 500 and status_pb2.Status.FromString(answer).code == code_pb2.INTERNAL
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await running.grpc_export(raw)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        for transport in ("http", "grpc"):
            assert (
                running.metric("otel_sidecar_receiver_failed_requests_total", transport=transport, reason="internal")
                == 1
            )
        assert sum("internal error" in r.getMessage() and r.exc_info is not None for r in caplog.records) == 2
    finally:
        await running.channel.close()
        await receiver.shutdown(time.monotonic() + 2)


async def test_a_signal_without_a_pipeline_is_answered_with_why_and_counted(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """The receiver here feeds traces and logs pipelines only. A sender of metrics was answered by aiohttp's plain
    404 and gRPC's "Method not found!", and nothing on the agent's side showed that metrics arrived."""
    why = "this agent has no metrics pipeline with receiver 'otlp' (service.pipelines)"
    status, body, _ = await post(running.http_url + "/v1/metrics", b"\x0a\x00", "application/x-protobuf")
    assert (status, status_pb2.Status.FromString(body)) == (
        404,
        status_pb2.Status(code=code_pb2.UNIMPLEMENTED, message=why),
    )
    status, body, _ = await post(running.http_url + "/v1/metrics", b"{}", "application/json")
    assert (status, json_codec.decode(body, status_pb2.Status).message) == (404, why)
    call = running.channel.unary_unary(METRICS_METHOD)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(b"", timeout=5)
    assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.UNIMPLEMENTED, why)
    failed = "otel_sidecar_receiver_failed_requests_total"
    assert running.metric(failed, transport="http", signal="metrics", reason="no_pipeline") == 2
    assert running.metric(failed, transport="grpc", signal="metrics", reason="no_pipeline") == 1
    assert running.metric(failed) == 3
    (warning,) = [r for r in caplog.records if why in r.getMessage()]  # at a limited rate
    assert "127.0.0.1" in warning.peer  # type: ignore[attr-defined] # the alert says the log names the sender


async def test_a_signal_without_a_pipeline_is_refused_before_its_body_is_looked_at(running: Running) -> None:
    """Neither its content type, size nor bytes matter: the sender is told what to fix, and it is counted as that."""
    status, _, _ = await post(running.http_url + "/v1/metrics", b"\xff", "text/plain")
    assert status == 404
    call = running.channel.unary_unary(METRICS_METHOD)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(b"\xff" * (1024 * 1024 + 1), timeout=5)  # above the 1 MiB limit, and not protobuf
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    failed = "otel_sidecar_receiver_failed_requests_total"
    assert (running.metric(failed, reason="no_pipeline"), running.metric(failed)) == (2, 2)


@pytest.mark.parametrize(
    ("body", "told"),
    [
        (b'{"resourceLogs": [{}]}', "the request holds no resourceSpans, only unknown keys ('resourceLogs')"),
        (
            b'{"resourceSpan": [{}], "x": 1}',
            "the request holds no resourceSpans, only unknown keys ('resourceSpan', 'x')",
        ),
    ],
)
async def test_an_otlp_json_body_of_only_unknown_keys_is_told_to_its_sender(
    running: Running, body: bytes, told: str, caplog: pytest.LogCaptureFixture
) -> None:
    """OTLP/JSON ignores unknown fields, so logs sent to /v1/traces, or a misspelt key, were a 200 and an empty
    answer: the sender saw success and nothing was accepted, counted or logged (pass 150)."""
    status, answer, _ = await post(running.http_url + "/v1/traces", body, "application/json")
    message = json.loads(answer)["partialSuccess"]["errorMessage"]
    assert (status, message) == (200, f"{told}: nothing was accepted")
    assert any(told in r.getMessage() for r in caplog.records)
    status, answer, _ = await post(running.http_url + "/v1/traces", b'{"resourceSpans": []}', "application/json")
    assert (status, json.loads(answer)) == (200, {})  # nothing unknown, nothing to tell


async def test_a_path_that_is_no_signals_export_gets_a_plain_not_found(running: Running) -> None:
    status, _, _ = await post(running.http_url + "/v1/profiles", b"", "application/x-protobuf")
    assert status == 404
    assert running.metric("otel_sidecar_receiver_failed_requests_total") == 0


async def test_an_empty_request_is_a_success(running: Running, sink: BatchSink) -> None:
    status, _, _ = await post(running.http_url + "/v1/traces", b"", "application/x-protobuf")
    assert status == 200
    assert sink.batches == []


async def a_body_cut_short(running: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that has sent 10 bytes of a body of 100,000, and nothing more yet."""
    host, port = running.http_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: 100000\r\n\r\n" + b"\x0a" * 10
    )
    await writer.drain()
    return reader, writer


async def test_a_body_that_stops_short_of_its_length_is_answered_after_read_timeout_and_counted_not_held(
    sink: BatchSink,
) -> None:
    receiver, running = await start_receiver(sink, read_timeout=Duration(0.3))
    try:
        reader, writer = await a_body_cut_short(running)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(answer.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(length), 5)
        writer.close()
    finally:
        await running.channel.close()
        await receiver.shutdown(time.monotonic() + 2)
    # Nothing is wrong with the data, only with its delivery: a retryable answer (OTLP: 400 must not be retried).
    assert answer.startswith(b"HTTP/1.1 503")
    assert b"\r\nRetry-After: 1\r\n" in answer
    assert status_pb2.Status.FromString(body).message == ("request body not received within 0.3s; retry later")
    assert running.metric("otel_sidecar_receiver_failed_requests_total", reason="incomplete") == 1


def test_the_http_receiver_waits_30s_for_a_body_and_closes_a_connection_idle_for_60s() -> None:
    """The defaults: long enough for a large body on a slow link and for the SDKs' 5-60 s export intervals."""
    assert (HttpConfig().read_timeout, HttpConfig().idle_timeout) == (30.0, 60.0)


async def test_a_sender_that_drops_the_connection_mid_body_is_counted_incomplete_not_malformed(
    running: Running,
) -> None:
    """Nothing was wrong with its data, only with its delivery."""
    _reader, writer = await a_body_cut_short(running)
    writer.close()
    await writer.wait_closed()
    failed = "otel_sidecar_receiver_failed_requests_total"
    deadline = time.monotonic() + 5
    while running.metric(failed, reason="incomplete") < 1:
        assert time.monotonic() < deadline, "the dropped request was never counted"
        await asyncio.sleep(0.05)
    assert running.metric(failed) == 1


UNPARSABLE_HTTP = {
    "a broken chunk size": b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
    "a header line without a colon": b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    "a negative Content-Length": b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "TLS sent to the plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}


async def send_raw(http_url: str, raw: bytes) -> bytes:
    host, port = http_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_requests_aiohttp_cannot_parse_are_answered_400_counted_and_logged_at_a_limited_rate(
    running: Running, sink: BatchSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for raw in UNPARSABLE_HTTP.values():
        assert (await send_raw(running.http_url, raw)).startswith(b"HTTP/1.0 400 ")
    failed = running.metric(
        "otel_sidecar_receiver_failed_requests_total", transport="http", signal="unknown", reason="malformed_http"
    )
    assert failed == len(UNPARSABLE_HTTP)
    # One warning line, without a traceback, for the four: not a traceback at ERROR for each.
    lines = [r for r in caplog.records if "HTTP" in r.getMessage() or r.name.startswith("aiohttp")]
    assert [(r.levelno, r.getMessage(), bool(r.exc_info)) for r in lines] == [
        (logging.WARNING, "request is not valid HTTP; answered 400", False)
    ]
    assert "chunk size" in lines[0].error  # type: ignore[attr-defined] # the first one's reason, first line only
    _, body = request_bytes()
    assert (await post(running.http_url + "/v1/traces", body, "application/x-protobuf"))[0] == 200
    assert len(sink.batches) == 1


async def test_grpc_sent_to_the_http_port_is_logged_with_where_grpc_goes(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's own words, "Pause on PRI/Upgrade", told an operator nothing about an exporter on the wrong port;
    then the hint named the default 4317 where the receiver's gRPC port was another (pass 150)."""
    caplog.set_level(logging.WARNING)
    assert (await send_raw(running.http_url, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")).startswith(b"HTTP/1.0 400 ")
    [line] = [r for r in caplog.records if r.getMessage() == "request is not valid HTTP; answered 400"]
    grpc_port = running.grpc_target.rsplit(":", 1)[1]
    assert line.error.endswith(  # type: ignore[attr-defined]
        f"(an HTTP/2 connection preface: gRPC sent to the HTTP port? OTLP/gRPC goes to this receiver's gRPC port, "
        f"{grpc_port})"
    )


async def test_grpc_and_http_both_on_port_0_each_get_a_port_and_the_log_says_which(
    sink: BatchSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = OtlpReceiverConfig(
        grpc=GrpcConfig(endpoint=HostPort("127.0.0.1:0")), http=HttpConfig(endpoint=HostPort("127.0.0.1:0"))
    )
    settings = CreateSettings("otlp", Kind.RECEIVER, logging.getLogger("test"), SelfMetrics(), ServiceConfig(), {})
    receiver = OtlpReceiver(config, settings, {Signal.TRACES: sink})
    await receiver.start()
    try:
        (grpc_line,) = [r for r in caplog.records if r.getMessage() == "OTLP/gRPC receiver listening"]
        (http_line,) = [r for r in caplog.records if r.getMessage() == "OTLP/HTTP receiver listening"]
        grpc_port, (http_port,) = grpc_line.port, http_line.ports  # type: ignore[attr-defined]
        assert 0 not in (grpc_port, http_port) and grpc_port != http_port
        _, body = request_bytes()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            await channel.unary_unary(TRACES_METHOD)(body, timeout=5)
        assert (await post(f"http://127.0.0.1:{http_port}/v1/traces", body, "application/x-protobuf"))[0] == 200
        assert len(sink.batches) == 2
    finally:
        await receiver.shutdown(time.monotonic() + 2)


async def test_a_deep_json_document_with_a_lone_surrogate_is_never_an_internal_error(
    running: Running,
) -> None:
    spans = b'"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"\\ud83d"}]}]}]'
    for depth, status_wanted in ((600, 200), (990, None)):  # 990: json.loads or the pass may give up
        body = b'{"meta":' + b"[" * depth + b"]" * depth + b"," + spans + b"}"
        status, _, _ = await post(f"{running.http_url}/v1/traces", body, "application/json")
        assert status == (status_wanted or status) and status in (200, 400)
    assert running.metric("otel_sidecar_receiver_failed_requests_total", reason="internal") == 0
    assert running.metric("otel_sidecar_receiver_repaired_strings_total", transport="http") >= 1


@pytest.mark.parametrize(
    ("raw", "repaired"),
    [(b"caf\xc3", "caf\ufffd"), (b"cut \\ud83d", "cut \ufffd")],
    ids=["bytes-not-utf8", "lone-surrogate"],
)
async def test_a_json_string_repaired_is_accepted_counted_and_told_as_in_protobuf(
    running: Running, sink: BatchSink, raw: bytes, repaired: str
) -> None:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    scope.spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="NAME")
    scope.spans.add(trace_id=b"\x01" * 16, span_id=b"\x03" * 8, name="fine")
    body = json_codec.encode(request).replace(b"NAME", raw)
    status, reply, _ = await post(f"{running.http_url}/v1/traces", body, "application/json")
    assert status == 200
    (batch,) = sink.batches
    assert [s.name for s in batch.resource_spans[0].scope_spans[0].spans] == [repaired, "fine"]
    answer = json_codec.decode(reply, ExportTraceServiceResponse)
    assert "1 strings were not valid UTF-8" in answer.partial_success.error_message
    assert running.metric("otel_sidecar_receiver_repaired_strings_total", transport="http") == 1
