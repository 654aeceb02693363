"""The two OTLP transports of the ``otlp`` exporter: gRPC (``grpc.aio``) and HTTP/protobuf (``aiohttp``).

Each sends one export request and returns the server's ``Export*ServiceResponse``, or raises a classified
error following the OTLP specification: retryable gRPC codes and HTTP statuses become ``RetryableError``
(with the server's ``RetryInfo`` / ``Retry-After`` delay), everything else ``PermanentExportError``.
"""

from __future__ import annotations

import asyncio
import gzip
from typing import Protocol

import aiohttp
import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from agent import __version__
from agent.component import Signal
from agent.config.schema import without_credentials
from agent.exporters._helper.http import attempt_timeout, redirect_refused, request_body, unreachable
from agent.exporters._helper.retry import (
    ExportError,
    PermanentExportError,
    RetryableError,
    http_error,
    report_cut_short,
)
from agent.exporters._helper.tls import ClientTls
from agent.exporters.otlp.config import OtlpExporterConfig
from agent.otlp.signals import SPECS

USER_AGENT = f"otel-sidecar/{__version__}"
_MIB = 1024 * 1024

# OTLP: retry these; RESOURCE_EXHAUSTED only when the server sent RetryInfo; never the others.
GRPC_RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


# gRPC core's words for a connection lost under a call (a pod killed, a load balancer's reset), and for a gRPC
# core server stopped with calls in flight ("Cancelling all calls"): the call had a stream, so the request may
# have reached the server before the answer was lost. A connection that never came up is reported as "failed to
# connect to all addresses; last error: ..." instead.
_CONNECTION_LOST = (
    "Socket closed",
    "Stream removed",
    "Connection reset",
    "Broken pipe",
    "GOAWAY",
    "keepalive",
    "Cancelling all calls",
)


def wire_bytes(request: Message) -> bytes:
    """``request`` serialized for a backend, without the fields this agent's OTLP does not know.

    upb keeps fields it cannot read to write them out again, and among them a known field a sender wrote with the
    wrong wire type (a varint where a span's name belongs). A strict backend (a Collector's or Jaeger's pdata,
    rotel's prost) refuses the whole request such a field is in, and an exporter's batch merges many senders'
    requests: one sender would lose everyone's spans. A Collector reads only known fields; so does what the agent
    sends on. Done here, on what is exported (about 0.25 µs a span, in C), rather than on everything received; the
    batch may be shared with other exporters, for whom this is no change (see ``Factory.mutates_data``).
    """
    request.DiscardUnknownFields()
    return request.SerializeToString()


class Transport(Protocol):
    async def start(self) -> None: ...

    async def export(self, signal: Signal, request: Message, timeout: float) -> Message: ...

    async def close(self) -> None: ...


def grpc_retry_delay(trailing_metadata: object) -> float | None:
    """The ``RetryInfo.retry_delay`` in a status's ``grpc-status-details-bin`` trailer, if any."""
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key != "grpc-status-details-bin":
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def grpc_error(code: grpc.StatusCode, details: str, trailing_metadata: object) -> ExportError:
    delay = grpc_retry_delay(trailing_metadata)
    message = f"gRPC {code.name}: {details}"
    if code in GRPC_RETRYABLE or (code is grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None):
        # After DEADLINE_EXCEEDED (or a cancel) the server may have stored the data: a retry can duplicate it.
        unknown = code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
        return RetryableError(message, reason=code.name.lower(), retry_after=delay, maybe_delivered=unknown)
    return PermanentExportError(message)


def _connection_lost(details: str) -> bool:
    return not details.startswith("failed to connect") and any(words in details for words in _CONNECTION_LOST)


def make_transport(config: OtlpExporterConfig, tls: ClientTls | None) -> Transport:
    """The transport of ``config.protocol``; over TLS with ``tls`` (what the exporter read when it was built)."""
    return GrpcTransport(config, tls) if config.protocol == "grpc" else HttpTransport(config, tls)


class GrpcTransport:
    def __init__(self, config: OtlpExporterConfig, tls: ClientTls | None) -> None:
        self._config = config
        self._tls = tls
        self._channel: grpc.aio.Channel | None = None
        self._methods: dict[Signal, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._metadata = tuple((k.lower(), v) for k, v in config.headers.items())

    async def start(self) -> None:
        config = self._config
        options = [
            ("grpc.primary_user_agent", USER_AGENT),
            ("grpc.max_send_message_length", 64 * _MIB),
            ("grpc.max_receive_message_length", 4 * _MIB),
            ("grpc.enable_retries", 0),  # retries are ours, with the OTLP rules and counted
            # Notice a backend that is back within seconds, not after gRPC's default reconnect backoff (120 s).
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        if config.tls.server_name_override:
            options.append(("grpc.ssl_target_name_override", config.tls.server_name_override))
        compression = grpc.Compression.Gzip if config.compression == "gzip" else grpc.Compression.NoCompression
        if self._tls is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self._tls.root_certificates,
                private_key=self._tls.private_key,
                certificate_chain=self._tls.certificate_chain,
            )
            self._channel = grpc.aio.secure_channel(config.grpc_target, credentials, options, compression)
        else:
            self._channel = grpc.aio.insecure_channel(config.grpc_target, options, compression)
        for signal, spec in SPECS.items():
            self._methods[signal] = self._channel.unary_unary(
                f"/{spec.grpc_service}/Export",
                request_serializer=wire_bytes,
                response_deserializer=spec.response_type.FromString,
            )

    async def export(self, signal: Signal, request: Message, timeout: float) -> Message:
        connected_before = self._connected()
        try:
            return await self._methods[signal](request, timeout=timeout, metadata=self._metadata)
        except asyncio.CancelledError:
            if not connected_before and not self._connected():
                report_cut_short(0)  # still connecting when the shutdown deadline came: nothing was sent
            raise
        except grpc.aio.AioRpcError as exc:
            details = self._explained(exc.details() or "")
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                # gRPC says only "Deadline Exceeded": which deadline, and whose setting it is.
                details = f"{details}: no answer within {timeout:g}s (the exporter's timeout)"
            error = grpc_error(exc.code(), details, exc.trailing_metadata())
            never_connected = not connected_before and not self._connected()
            if isinstance(error, RetryableError) and error.maybe_delivered and never_connected:
                # Not connected before the call, nor after: the deadline passed while connecting, nothing sent.
                error.maybe_delivered = False
                error.reason = "connection"
            elif isinstance(error, RetryableError) and _connection_lost(exc.details() or ""):
                # UNAVAILABLE from the transport, not from the server: the server may have stored the request.
                error.maybe_delivered = True
            raise error from None

    def _explained(self, details: str) -> str:
        """gRPC's words, with what to do when they are a TLS handshake's failure against a plain-text server (an
        in-cluster Jaeger without TLS, the most common case): gRPC says only "Tls handshake failed"."""
        if self._tls is not None and "handshake failed" in details.lower():
            return f"{details} (if the endpoint speaks plain text, set tls.insecure: true or write http://)"
        return details

    def _connected(self) -> bool:
        assert self._channel is not None
        return self._channel.get_state(try_to_connect=False) is grpc.ChannelConnectivity.READY

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class HttpTransport:
    def __init__(self, config: OtlpExporterConfig, tls: ClientTls | None) -> None:
        self._config = config
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None
        base = config.endpoint.rstrip("/")
        self._urls = {signal: base + spec.http_path for signal, spec in SPECS.items()}
        self._headers = {**config.headers, "Content-Type": "application/x-protobuf", "User-Agent": USER_AGENT}
        if config.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"

    async def start(self) -> None:
        ssl_context = self._tls.ssl_context if self._tls is not None else False
        connector = aiohttp.TCPConnector(ssl=ssl_context, limit=32)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)

    async def export(self, signal: Signal, request: Message, timeout: float) -> Message:
        assert self._session is not None
        body = wire_bytes(request)
        if self._config.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
        url = self._urls[signal]
        try:
            async with self._session.post(
                url,
                data=request_body(body),
                headers=self._headers,
                timeout=attempt_timeout(timeout),
                server_hostname=self._config.tls.server_name_override or None,
                allow_redirects=False,  # see redirect_refused
            ) as response:
                payload = await _read_answer(response)
                return _answer(signal, url, response, payload)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Classified here, a timeout included, so that callers splitting a batch over several backends
            # (loadbalancing) see a retryable failure of this one.
            raise unreachable(exc, self._urls[signal], timeout) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_answer(response: aiohttp.ClientResponse) -> bytes:
    """The body of an answer; an empty one when a 2xx answer is cut short, since the backend took the batch
    before it answered (resending it would store it twice)."""
    try:
        return await response.read()
    except aiohttp.ClientPayloadError:
        if 200 <= response.status < 300:
            return b""
        raise


def _answer(signal: Signal, url: str, response: aiohttp.ClientResponse, payload: bytes) -> Message:
    """The export response of a 2xx answer (any 2xx is a success, as for the Collector); an error otherwise."""
    status, shown = response.status, without_credentials(url)
    if 200 <= status < 300:
        if payload and response.content_type == "text/html":
            raise PermanentExportError(
                f"{shown} answered {status} with an HTML page, not an OTLP response: is the endpoint an OTLP receiver?"
            )
        return _decode_response(signal, payload)
    if 300 <= status < 400:
        raise redirect_refused(status, response.headers.get("Location", "?"), url)
    raise http_error(status, f"{_status_message(payload)} ({shown})", response.headers.get("Retry-After"))


def _decode_response(signal: Signal, payload: bytes) -> Message:
    try:
        return SPECS[signal].response_type.FromString(payload)
    except DecodeError:
        return SPECS[signal].response_type()  # a success with an unreadable body is still a success


def _status_message(payload: bytes) -> str:
    """The message of a ``google.rpc.Status`` error body, or the start of a text body."""
    try:
        status = status_pb2.Status.FromString(payload)
        if status.message:
            return status.message
    except DecodeError:
        pass
    return payload[:256].decode("utf-8", "replace").strip()
