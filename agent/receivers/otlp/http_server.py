"""OTLP/HTTP: ``POST /v1/{traces,metrics,logs}`` with protobuf or JSON bodies, gzip, on aiohttp."""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING

from aiohttp import web
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from agent.component import CreateSettings, Signal
from agent.listen import serve, stop_runner
from agent.otlp import json_codec
from agent.otlp.signals import SPECS
from agent.receivers.otlp.core import ExportHandler, Failure, RequestFailed
from agent.receivers.otlp.encoding import decompressed
from agent.server_tls import HandshakeFailures, ServerTls

if TYPE_CHECKING:
    from agent.config.schema import HostPort
    from agent.receivers.otlp import HttpConfig

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_MIB = 1024 * 1024
_INCOMPLETE_RETRY_AFTER = 1.0  # a body that did not arrive whole is nothing wrong with the data: send it again

_HTTP_STATUS = {
    Failure.MALFORMED: (400, code_pb2.INVALID_ARGUMENT),
    Failure.TOO_LARGE: (413, code_pb2.RESOURCE_EXHAUSTED),
    Failure.UNSUPPORTED_MEDIA_TYPE: (415, code_pb2.INVALID_ARGUMENT),
    Failure.REFUSED: (503, code_pb2.UNAVAILABLE),
    Failure.INCOMPLETE: (503, code_pb2.UNAVAILABLE),
    Failure.NO_PIPELINE: (404, code_pb2.UNIMPLEMENTED),
    Failure.INTERNAL: (500, code_pb2.INTERNAL),
}


class HttpServer:
    def __init__(
        self,
        config: HttpConfig,
        handler: ExportHandler,
        settings: CreateSettings,
        tls: ServerTls | None = None,
        grpc_endpoint: HostPort | None = None,
    ) -> None:
        self._endpoint = config.endpoint
        # Where gRPC sent to this port should go (the log of an HTTP/2 preface here): this receiver's gRPC port.
        if grpc_endpoint is None:
            self._grpc_port_hint = "another receiver: this one serves no OTLP/gRPC"
        elif grpc_endpoint.port == 0:
            self._grpc_port_hint = "the gRPC port this receiver logged at start"
        else:
            self._grpc_port_hint = f"this receiver's gRPC port, {grpc_endpoint.port}"
        self._limit = config.max_request_body_size_mib * _MIB
        self._read_timeout = float(config.read_timeout)
        self._idle_timeout = float(config.idle_timeout)
        self._handler = handler
        self._settings = settings
        self.tls = tls
        self._runner: web.AppRunner | None = None
        self._handshakes = HandshakeFailures(
            settings.metrics, settings.logger, f"receivers.{settings.component_id}.http"
        )

    async def start(self) -> None:
        ssl_context = self._handshakes.ssl_context(self.tls)
        app = web.Application(client_max_size=self._limit)
        for signal in Signal:  # a signal without a pipeline too: its sender is told why (refuse_unless_accepted)
            app.router.add_post(SPECS[signal].http_path, self._route(signal))
        runner = await serve(
            app,
            self._endpoint,
            self._settings.logger,
            count_unparsable=self._handler.unparsable_http_request,
            grpc_port_hint=self._grpc_port_hint,
            keepalive_timeout=self._idle_timeout,
            ssl_context=ssl_context,
            auto_decompress=False,  # bodies are decompressed by the handler (encoding.py), bounded, checked whole
        )
        self._runner = runner
        ports = sorted({address[1] for address in runner.addresses})  # chosen by the kernel for port 0
        listening = {"endpoint": str(self._endpoint), "ports": ports, "tls": ssl_context is not None}
        self._settings.logger.info("OTLP/HTTP receiver listening", extra=listening)

    async def shutdown(self, deadline: float) -> None:
        # In-flight handlers do no I/O (they only enqueue), so aiohttp's own wait for them is short.
        if self._runner is not None:
            runner, self._runner = self._runner, None
            # Half the time left at most: a slow client upload must not eat the time the pipelines need to flush.
            await stop_runner(runner, (deadline - time.monotonic()) / 2)

    def _route(self, signal: Signal):
        async def handle(request: web.Request) -> web.Response:
            return await self._handle(signal, request)

        return handle

    async def _handle(self, signal: Signal, request: web.Request) -> web.Response:
        content_type = request.content_type.lower()
        as_json = content_type == JSON  # an answer mirrors the request's encoding; protobuf when that is unknown
        try:
            self._handler.refuse_unless_accepted(signal, "http", request.remote or "")
            if content_type not in (PROTOBUF, JSON):
                self._handler.request_failed(signal, "http", Failure.UNSUPPORTED_MEDIA_TYPE)
                # Not request.content_type: aiohttp reports a missing header as application/octet-stream.
                sent = request.headers.get("Content-Type")
                raise RequestFailed(
                    Failure.UNSUPPORTED_MEDIA_TYPE,
                    f"unsupported content type {sent!r}; use {PROTOBUF} or {JSON}"
                    if sent
                    else f"no Content-Type; use {PROTOBUF} or {JSON}",
                )
            self._handler.refuse_if_short_of_memory(signal, "http")
            body = await self._read_body(signal, request)
            decoded = await self._handler.decode(
                signal, body, json=as_json, transport="http", still_wanted=lambda: _connected(request)
            )
            # The protobuf size for JSON too: stages bound memory by it, and JSON is 2-3 times larger.
            size = decoded.request.ByteSize() if as_json else len(body)
            response = self._handler.export(signal, decoded, "http", size, peer=request.remote or "")
            return _reply(200, response, as_json)
        except RequestFailed as exc:
            status, code = _HTTP_STATUS[exc.failure]
            reply = _reply(status, status_pb2.Status(code=code, message=exc.message), as_json)
            if exc.failure in (Failure.REFUSED, Failure.INCOMPLETE):
                reply.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))  # never sooner than asked
            return reply
        except Exception:
            self._handler.request_failed(signal, "http", Failure.INTERNAL)
            self._settings.logger.exception("internal error handling an OTLP/HTTP export")
            return _reply(500, status_pb2.Status(code=code_pb2.INTERNAL, message="internal error"), as_json)

    async def _read_body(self, signal: Signal, request: web.Request) -> bytes:
        try:
            # A body trickled in (or stopped short of its Content-Length) would hold up to the size limit, forever.
            async with asyncio.timeout(self._read_timeout):
                body = await request.read()
        except TimeoutError:
            self._handler.request_failed(signal, "http", Failure.INCOMPLETE)
            raise RequestFailed(
                Failure.INCOMPLETE,
                f"request body not received within {self._read_timeout:g}s; retry later",
                _INCOMPLETE_RETRY_AFTER,
            ) from None
        except web.HTTPRequestEntityTooLarge:
            self._handler.request_failed(signal, "http", Failure.TOO_LARGE)
            raise RequestFailed(Failure.TOO_LARGE, f"request body exceeds {self._limit} bytes") from None
        except Exception as exc:  # a connection dropped mid-body
            self._handler.request_failed(signal, "http", Failure.INCOMPLETE)
            raise RequestFailed(
                Failure.INCOMPLETE, f"cannot read request body: {exc}; retry later", _INCOMPLETE_RETRY_AFTER
            ) from None
        try:
            return decompressed(request.headers.get("Content-Encoding", ""), body, self._limit)
        except RequestFailed as failed:
            self._handler.request_failed(signal, "http", failed.failure)
            raise


def _connected(request: web.Request) -> bool:
    """Whether the sender is still there to read an answer (aiohttp runs a handler on after it has gone)."""
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _reply(status: int, message: Message, as_json: bool) -> web.Response:
    if as_json:
        return web.Response(status=status, body=json_codec.encode(message), content_type=JSON)
    return web.Response(status=status, body=message.SerializeToString(), content_type=PROTOBUF)
