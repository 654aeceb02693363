"""OTLP/gRPC: the three ``Export`` services on ``grpc.aio``.

Requests are deserialized here rather than by gRPC so that a malformed or oversized message is counted
and answered with a clear status instead of disappearing inside the gRPC core.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agent.component import CreateSettings, Signal
from agent.config.schema import HostPort
from agent.listen import listening_sockets
from agent.otlp.signals import SPECS
from agent.receivers.otlp.core import ExportHandler, Failure, RequestFailed
from agent.server_tls import ServerTls

_GRPC_CODES = {
    Failure.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    Failure.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Failure.REFUSED: grpc.StatusCode.UNAVAILABLE,
    Failure.NO_PIPELINE: grpc.StatusCode.UNIMPLEMENTED,
    Failure.INTERNAL: grpc.StatusCode.INTERNAL,
}
_MIB = 1024 * 1024
_MAX_STREAMS_PER_CONNECTION = 100
_IDLE_CONNECTION_MS = 5 * 60 * 1000


class GrpcServer:
    def __init__(
        self,
        endpoint: HostPort,
        max_mib: int,
        handler: ExportHandler,
        settings: CreateSettings,
        tls: ServerTls | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._limit = max_mib * _MIB
        self._handler = handler
        self._settings = settings
        self.tls = tls
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        credentials = self.tls.grpc_credentials if self.tls is not None else None
        # gRPC's own limit is set above ours so that requests between the two are counted and answered by us.
        core_limit = min(self._limit * 2, 2**31 - 1)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", core_limit),
                ("grpc.so_reuseport", 0),
                # A sender's streams and idle connections are bounded (grpc-go's advice after CVE-2023-44487; the
                # Collector leaves streams unbounded unless configured): streams opened and never finished would
                # each hold memory, without limit or end.
                ("grpc.max_concurrent_streams", _MAX_STREAMS_PER_CONNECTION),
                ("grpc.max_connection_idle_ms", _IDLE_CONNECTION_MS),
            ],
        )
        # Every signal's service, also one without a pipeline: its sender is told why (refuse_unless_accepted).
        server.add_generic_rpc_handlers([self._service(signal) for signal in Signal])
        # gRPC's core listens on IPv4 and IPv6 for a wildcard host (":4317", "0.0.0.0", "[::]"), and on the one
        # address otherwise: as agent/listen.py binds the HTTP servers.
        host = self._endpoint.host
        address = f"[{host}]:{self._endpoint.port}" if ":" in host else f"{host}:{self._endpoint.port}"
        try:
            if credentials is None:
                bound = server.add_insecure_port(str(address))
            else:
                bound = server.add_secure_port(str(address), credentials)
        except RuntimeError:  # grpcio ≥ 1.5x raises; older ones return 0
            bound = 0
        if bound == 0:
            await _release_unstarted(server)
            raise await self._why_not_listening()
        await server.start()
        self._server = server
        # The port itself too: with port 0 the kernel chose it, and this line is the only place that says which.
        listening = {"endpoint": str(self._endpoint), "port": bound, "tls": credentials is not None}
        self._settings.logger.info("OTLP/gRPC receiver listening", extra=listening)

    async def _why_not_listening(self) -> OSError:
        """gRPC's core says only "Failed to bind" (the cause goes to its own stderr, outside the agent's log):
        binding the address here gives the operator the reason, as the HTTP servers report it."""
        try:
            for sock in await listening_sockets(self._endpoint.host, self._endpoint.port):
                sock.close()
        except OSError as exc:
            return exc
        return OSError(f"cannot listen for OTLP/gRPC on {self._endpoint}")

    async def shutdown(self, deadline: float) -> None:
        if self._server is not None:
            await self._server.stop(grace=max(deadline - time.monotonic(), 0.0) / 2)
            self._server = None

    def _service(self, signal: Signal) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(self._export_method(signal))  # raw bytes in and out
        return grpc.method_handlers_generic_handler(SPECS[signal].grpc_service, {"Export": method})

    def _export_method(self, signal: Signal) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        handler = self._handler

        async def answer(raw: bytes, peer: str) -> bytes:
            handler.refuse_unless_accepted(signal, "grpc", peer)
            if len(raw) > self._limit:
                handler.request_failed(signal, "grpc", Failure.TOO_LARGE)
                raise RequestFailed(Failure.TOO_LARGE, f"request of {len(raw)} bytes exceeds {self._limit}")
            handler.refuse_if_short_of_memory(signal, "grpc")
            decoded = await handler.decode(signal, raw, json=False, transport="grpc")
            return handler.export(signal, decoded, "grpc", len(raw), peer=peer).SerializeToString()

        async def export(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await answer(raw, context.peer() or "")
            except RequestFailed as exc:
                code, message, details = _GRPC_CODES[exc.failure], exc.message, _status_details(exc)
            except Exception:
                handler.request_failed(signal, "grpc", Failure.INTERNAL)
                self._settings.logger.exception("internal error handling an OTLP/gRPC export")
                code, message, details = grpc.StatusCode.INTERNAL, "internal error; see the agent's log", ()
            # Aborted after the except blocks, with nothing of the request left in this frame: an abort raised in
            # one chains the handled exception, whose traceback holds the decoded request (1.5 GB for 16 MiB of
            # empty spans), and gRPC keeps the abort's exception in a cycle only a full collection frees.
            del raw
            await context.abort(code, message, details)
            raise AssertionError("unreachable: abort raises")

        return export


async def _release_unstarted(server: grpc.aio.Server) -> None:
    """gRPC frees a server's core objects only when it stops, and stops only a server that started: one left
    unstarted keeps about 2.4 KB for good (a reload refused for a port in use, at every retry). Started with no
    port, it listens nowhere. Best effort: the bind's error is what the operator needs to see."""
    with contextlib.suppress(Exception):
        await server.start()
        await server.stop(None)


def _status_details(exc: RequestFailed) -> tuple[tuple[str, bytes], ...]:
    """``grpc-status-details-bin`` with a RetryInfo for refusals, which makes the sender's retry explicit; the
    RetryInfo also alone as ``google.rpc.retryinfo-bin``, the trailer the OpenTelemetry Python SDK reads."""
    if exc.failure is not Failure.REFUSED:
        return ()
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=0, seconds=int(exc.retry_after)))
    if exc.retry_after % 1:
        retry.retry_delay.nanos = int((exc.retry_after % 1) * 1e9)
    detail = any_pb2.Any()
    detail.Pack(retry)
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=exc.message, details=[detail])
    return (
        ("grpc-status-details-bin", status.SerializeToString()),
        ("google.rpc.retryinfo-bin", retry.SerializeToString()),
    )
