"""Listening sockets for the agent's aiohttp servers: the OTLP/HTTP receiver, the admin endpoint, the scrape endpoint.

A wildcard host (``:4318``, ``0.0.0.0:4318``, ``[::]:4318``) listens on every interface of both address families,
as the OTLP/gRPC receiver (gRPC's core) and the OpenTelemetry Collector (Go's ``net.Listen``) do: one IPv6 socket
that also accepts IPv4 (``IPV6_V6ONLY`` off), or an IPv4 socket on a host without IPv6. Any other host listens on
the addresses it names only (a name: every address it resolves to). asyncio's own ``create_server``, which
aiohttp's ``TCPSite`` uses, would bind ``0.0.0.0`` to IPv4 only and ``::`` to IPv6 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger

from agent.config.schema import HostPort
from agent.telemetry.logs import RateLimitedLog

_BACKLOG = 128  # aiohttp's default
# An idle keep-alive connection to the admin or scrape endpoint is closed after this (aiohttp's default is an
# hour): a scraper reconnects in a millisecond, a client holding connections open would exhaust descriptors.
IDLE_CONNECTION_SECONDS = 30.0
_STOP_FLOOR_SECONDS = 0.25
# A bind of the dual-stack wildcard failing with these means the host has no usable IPv6: listen on IPv4.
_NO_IPV6 = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})


def is_wildcard(host: str) -> bool:
    """``""``, ``0.0.0.0``, ``::`` (in any spelling): every interface."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


async def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound (not yet listening) sockets for ``host:port``, with ``SO_REUSEADDR`` as aiohttp sets it.

    Raises ``OSError`` worded as asyncio words it (``error while attempting to bind on address ...: address
    already in use``), with nothing left open.
    """
    if is_wildcard(host):
        if socket.has_dualstack_ipv6():
            try:
                return [_bound(socket.AF_INET6, ("::", port), v6only=False)]
            except OSError as exc:
                if exc.errno not in _NO_IPV6:
                    raise
        return [_bound(socket.AF_INET, ("0.0.0.0", port))]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, address in dict.fromkeys((info[0], info[4]) for info in infos):
            sockets.append(_bound(family, address))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve(
    app: web.Application,
    endpoint: HostPort,
    logger: logging.Logger,
    *,
    count_unparsable: Callable[[], None] | None = None,
    grpc_port_hint: str = "the gRPC port, 4317 by default",
    keepalive_timeout: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
    sockets: list[socket.socket] | None = None,
    **options: Any,
) -> web.AppRunner:
    """Serve ``app`` on ``endpoint`` as every aiohttp server of the agent does: no access log, no signal handlers
    of aiohttp's own, idle keep-alive connections closed after ``keepalive_timeout`` (``IDLE_CONNECTION_SECONDS``
    unless given: each is a descriptor, and the port may be reachable from the cluster), and requests that are not
    HTTP told by ``UnparsableRequestLog``; over TLS with ``ssl_context``; on ``sockets`` (bound, a caller's own)
    instead of binding ``endpoint`` anew. ``options`` are aiohttp's other server settings. Raises
    OSError when it cannot listen, having released everything."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=IDLE_CONNECTION_SECONDS if keepalive_timeout is None else keepalive_timeout,
        logger=UnparsableRequestLog(logger, count_unparsable, grpc_port_hint),
        **options,
    )
    await runner.setup()
    try:
        await _start_sites(runner, endpoint, ssl_context, sockets)
    except OSError:
        await runner.cleanup()
        raise
    return runner


async def _start_sites(
    runner: web.AppRunner,
    endpoint: HostPort,
    ssl_context: ssl.SSLContext | None,
    sockets: list[socket.socket] | None,
) -> None:
    """Serve ``runner``'s application on ``endpoint`` (on ``sockets`` when given: they are closed with ``runner``'s
    sites, or here when they are not served). On failure the caller cleans ``runner`` up."""
    if sockets is None:
        sockets = await listening_sockets(endpoint.host, endpoint.port)
    started = 0
    try:
        for sock in sockets:
            await web.SockSite(runner, sock, backlog=_BACKLOG, ssl_context=ssl_context).start()
            started += 1  # now closed with the runner's sites
    finally:
        for sock in sockets[started:]:
            sock.close()


async def stop_accepting(runner: web.AppRunner) -> None:
    """Stop ``runner``'s sites accepting connections (the listening sockets close, but for their duplicates); its
    open connections are served until ``stop_runner``."""
    for site in list(runner.sites):
        await site.stop()


async def stop_runner(runner: web.AppRunner, seconds: float) -> None:
    """Close ``runner``'s sites and connections within ``seconds``.

    Unbounded, aiohttp's cleanup waits for in-flight handlers, and then reads the unread rest of a request's body
    for up to 10 s ("lingering close"): one client that sent half a body would hold the shutdown past the
    kubelet's grace period, and the stages still to stop would lose their time.

    A TLS connection the listener accepted reaches aiohttp only once its handshake is done: one whose handshake
    ends after this would be served by the stopped application, with the certificates and client CAs it had
    (rotated away at a reload), and no one would close it. Such a connection is closed as it arrives.
    """
    server = runner.server
    if server is not None:
        server.connection_made = _refuse_connection  # type: ignore[method-assign]
    with contextlib.suppress(TimeoutError):
        # Never less than a moment, even past the deadline: cancelled at once, cleanup would leave the port bound
        # and serving.
        async with asyncio.timeout(max(seconds, _STOP_FLOOR_SECONDS)):  # not wait_for: see agent/waits.py
            await runner.cleanup()


def _refuse_connection(handler: Any, transport: asyncio.Transport) -> None:
    # Nothing it sent is read (close(): over TLS, asyncio feeds the request that came with the handshake at once),
    # and the abort waits a turn of the loop: aborted at once, its connection_lost would come before the start of
    # its handler's task, which on Python 3.11 then fails on an assertion ("Task exception was never retrieved").
    handler.close()
    asyncio.get_running_loop().call_soon(transport.abort)


def _bound(family: int, address: Any, *, v6only: bool = True) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        try:
            sock.bind(address)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise OSError(exc.errno, f"error while attempting to bind on address {address!r}: {reason}") from None
    except BaseException:
        sock.close()
        raise
    return sock


_REASON_CHARS = 200  # of an unparsable request's error, escaped, in its log line
_HTTP2_PREFACE_REASON = "Pause on PRI/Upgrade"  # aiohttp's parser, at "PRI * HTTP/2.0"


class UnparsableRequestLog:
    """aiohttp's server logger, for the agent's aiohttp servers.

    aiohttp answers a request it cannot parse as HTTP (a broken request line, header or chunked framing; TLS sent
    to a plain-HTTP port, as by a scraper set to ``https``) with 400 itself, before any handler, and logs each with
    its traceback at ERROR (at DEBUG for a bad method). Here each is counted (``count``: the OTLP receiver's
    ``receiver_failed_requests_total{reason="malformed_http"}``) and logged as one warning line at a limited rate:
    a client repeating its mistake must not flood the log. Everything else goes to aiohttp's own logger.
    """

    def __init__(
        self,
        logger: logging.Logger,
        count: Callable[[], None] | None = None,
        grpc_port_hint: str = "the gRPC port, 4317 by default",
    ) -> None:
        self._log = RateLimitedLog(logger)
        self._count = count
        self._grpc_port_hint = grpc_port_hint  # where an exporter that sent gRPC here should send it

    def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        if not self._took_unparsable(kwargs):
            server_logger.debug(message, *args, **kwargs)

    def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
        if not self._took_unparsable(kwargs):
            server_logger.exception(message, *args, **kwargs)

    def _took_unparsable(self, kwargs: dict[str, Any]) -> bool:
        error = kwargs.get("exc_info")
        if not isinstance(error, HttpProcessingError):
            return False
        if self._count is not None:
            self._count()
        # The message's first line, escaped and cut short: with the C parser the rest quotes the raw bytes, and with
        # the pure-Python one the first line itself can be them (a chunk-size line, a request target: terminal
        # escapes, bytes that are not UTF-8, up to the 8 KiB line limit).
        reason = ascii((error.message or type(error).__name__).splitlines()[0].strip())[1:-1]
        if len(reason) > _REASON_CHARS:
            reason = reason[:_REASON_CHARS] + "..."
        if reason.startswith(_HTTP2_PREFACE_REASON):
            # The HTTP/2 preface on an HTTP/1.1 port: almost always an OTLP/gRPC exporter given the HTTP port.
            reason += (
                f" (an HTTP/2 connection preface: gRPC sent to the HTTP port? OTLP/gRPC goes to {self._grpc_port_hint})"
            )
        self._log.warning("unparsable_http", "request is not valid HTTP; answered 400", error=reason)
        return True
