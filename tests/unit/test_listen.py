"""Listen addresses of the agent's servers: a wildcard host listens on IPv4 and IPv6, a specific address on itself only.

These tests need IPv6 loopback (``::1``) and fail, rather than skip, on a host without it.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import random
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from agent import listen
from agent.component import CreateSettings, Kind, Signal
from agent.config.schema import Duration, HostPort
from agent.config.service import ServiceConfig
from agent.exporters.prometheus.config import PrometheusExporterConfig
from agent.exporters.prometheus.exporter import PrometheusExporter
from agent.receivers.otlp import GrpcConfig, HttpConfig, OtlpReceiver, OtlpReceiverConfig
from agent.telemetry.admin import AdminServer
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.sinks import BatchSink


@pytest.fixture(autouse=True, scope="module")
def _ipv6_loopback() -> None:
    problem = "this test needs IPv6 loopback (::1) and a dual-stack socket; the host has neither: fix the host"
    assert socket.has_dualstack_ipv6(), problem
    with socket.socket(socket.AF_INET6) as sock:
        try:
            sock.bind(("::1", 0))
        except OSError as exc:
            pytest.fail(f"{problem} ({exc})")


def free_dual_stack_port() -> int:
    """A port free on every interface of both families (tests.helpers.free_port checks 127.0.0.1 only)."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket(socket.AF_INET6) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.bind(("::", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def _settings(component_id: str, kind: Kind) -> CreateSettings:
    return CreateSettings(component_id, kind, logging.getLogger("test"), SelfMetrics(), ServiceConfig(), {})


@asynccontextmanager
async def otlp_receiver(config: OtlpReceiverConfig) -> AsyncIterator[None]:
    receiver = OtlpReceiver(config, _settings("otlp", Kind.RECEIVER), {Signal.TRACES: BatchSink()})
    await receiver.start()
    try:
        yield
    finally:
        await receiver.shutdown(time.monotonic() + 2)


def otlp_http(endpoint: HostPort) -> Any:
    return otlp_receiver(OtlpReceiverConfig(grpc=GrpcConfig(enabled=False), http=HttpConfig(endpoint=endpoint)))


def otlp_grpc(endpoint: HostPort) -> Any:
    return otlp_receiver(OtlpReceiverConfig(grpc=GrpcConfig(endpoint=endpoint), http=HttpConfig(enabled=False)))


@asynccontextmanager
async def admin(endpoint: HostPort) -> AsyncIterator[None]:
    server = AdminServer(endpoint, SelfMetrics(), lambda: None)
    await server.start()
    try:
        yield
    finally:
        await server.shutdown()


@asynccontextmanager
async def prometheus(endpoint: HostPort) -> AsyncIterator[None]:
    exporter = PrometheusExporter(PrometheusExporterConfig(endpoint=endpoint), _settings("prometheus", Kind.EXPORTER))
    await exporter.start()
    try:
        yield
    finally:
        await exporter.shutdown(time.monotonic() + 2)


HTTP_LISTENERS = {"otlp_http": otlp_http, "admin": admin, "prometheus": prometheus}
LISTENERS = {**HTTP_LISTENERS, "otlp_grpc": otlp_grpc}


async def answers(host: str, port: int, http: bool) -> bool:
    """Whether ``host:port`` accepts a connection (and, for an HTTP server, answers a request on it)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except ConnectionRefusedError:
        return False
    try:
        if http:
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            status = await asyncio.wait_for(reader.readline(), 5)
            assert status.startswith(b"HTTP/1.1 "), status
        return True
    finally:
        writer.close()


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("form", [":{port}", "0.0.0.0:{port}", "[::]:{port}"])
async def test_a_wildcard_endpoint_listens_on_ipv4_and_ipv6(listener: str, form: str) -> None:
    port = free_dual_stack_port()
    async with LISTENERS[listener](HostPort.parse(form.format(port=port))):
        http = listener in HTTP_LISTENERS
        assert await answers("127.0.0.1", port, http), "IPv4 refused"
        assert await answers("::1", port, http), "IPv6 refused"


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize(
    ("form", "accepted", "refused"), [("127.0.0.1:{port}", "127.0.0.1", "::1"), ("[::1]:{port}", "::1", "127.0.0.1")]
)
async def test_a_specific_address_listens_on_that_address_only(
    listener: str, form: str, accepted: str, refused: str
) -> None:
    port = free_dual_stack_port()
    async with LISTENERS[listener](HostPort.parse(form.format(port=port))):
        http = listener in HTTP_LISTENERS
        assert await answers(accepted, port, http)
        assert not await answers(refused, port, http)


@pytest.mark.parametrize("listener", LISTENERS)
async def test_a_wildcard_endpoint_whose_port_is_taken_on_ipv4_fails_with_address_in_use(listener: str) -> None:
    # gRPC's core says only "Failed to bind" (the cause goes to its own stderr): the receiver reports the reason.
    port = free_dual_stack_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(OSError, match="address already in use") as raised:
            async with LISTENERS[listener](HostPort.parse(f"0.0.0.0:{port}")):
                pass
    assert raised.value.errno == errno.EADDRINUSE
    async with LISTENERS[listener](HostPort.parse(f"0.0.0.0:{port}")):  # nothing of the failed start is left
        assert await answers("::1", port, http=listener in HTTP_LISTENERS)


def test_grpc_never_makes_a_debug_record_that_pytest_could_keep_past_the_server_it_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """grpcio logs a server never started as it frees it, at DEBUG, with the server itself as an argument: a record
    pytest's capture keeps would hold the freed server and crash the run later (see tests/conftest.py)."""
    caplog.set_level(logging.DEBUG)
    assert not logging.getLogger("grpc._cython.cygrpc").isEnabledFor(logging.DEBUG)


async def test_a_grpc_receiver_whose_bind_failed_leaves_no_server_for_the_collector() -> None:
    """gRPC frees a server's core objects only when it stops: one never started is left to the collector, which
    frees only its Python half (about 2.4 KB kept for good per failed bind) and logs it at DEBUG as it goes."""
    freed: list[str] = []
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    keep_text = logging.Handler()
    keep_text.emit = lambda record: freed.append(record.getMessage())  # type: ignore[method-assign]
    level, propagate = grpc_log.level, grpc_log.propagate
    grpc_log.addHandler(keep_text)
    grpc_log.setLevel(logging.DEBUG)
    grpc_log.propagate = False  # only text is kept: a record pytest kept would hold the server past its end
    try:
        port = free_dual_stack_port()
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            with pytest.raises(OSError, match="address already in use"):
                async with LISTENERS["otlp_grpc"](HostPort.parse(f"0.0.0.0:{port}")):
                    pass
        gc.collect()
    finally:
        grpc_log.removeHandler(keep_text)
        grpc_log.setLevel(level)
        grpc_log.propagate = propagate
    assert [text for text in freed if "__dealloc__" in text] == []


async def test_the_wildcard_is_one_dual_stack_socket_reusing_addresses_as_aiohttp_did() -> None:
    sockets = await listen.listening_sockets("0.0.0.0", 0)
    try:
        [sock] = sockets
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    finally:
        for sock in sockets:
            sock.close()


async def test_without_ipv6_the_wildcard_listens_on_ipv4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "has_dualstack_ipv6", lambda: False)
    sockets = await listen.listening_sockets("::", 0)
    try:
        assert [(s.family, s.getsockname()[0]) for s in sockets] == [(socket.AF_INET, "0.0.0.0")]
    finally:
        for sock in sockets:
            sock.close()


async def test_ipv6_switched_off_at_bind_falls_back_to_ipv4(monkeypatch: pytest.MonkeyPatch) -> None:
    bound = listen._bound

    def no_ipv6(family: int, address: object, **kwargs: bool) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EADDRNOTAVAIL, "cannot assign requested address")
        return bound(family, address, **kwargs)

    monkeypatch.setattr(listen, "_bound", no_ipv6)
    sockets = await listen.listening_sockets("0.0.0.0", 0)
    try:
        assert [(s.family, s.getsockname()[0]) for s in sockets] == [(socket.AF_INET, "0.0.0.0")]
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("", True),
        ("0.0.0.0", True),
        ("::", True),
        ("0:0::0", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("localhost", False),
    ],
)
def test_wildcard_hosts(host: str, expected: bool) -> None:
    assert listen.is_wildcard(host) is expected


@pytest.mark.parametrize("listener", HTTP_LISTENERS)
async def test_a_client_that_sent_half_a_body_does_not_hold_the_shutdown(listener: str) -> None:
    # aiohttp reads the unread rest of a body for 10 s after answering ("lingering close"); unbounded, that held
    # the shutdown past the stages' deadline. Each server stops within its bound (at most 2 s here).
    port = free_dual_stack_port()
    serving = HTTP_LISTENERS[listener](HostPort(f"127.0.0.1:{port}"))
    await serving.__aenter__()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: agent\r\nContent-Length: 100\r\n\r\nx")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 ")
        started = time.monotonic()
        await serving.__aexit__(None, None, None)
        assert time.monotonic() - started < 5, "the shutdown waited for the client"
    finally:
        writer.close()


@pytest.mark.parametrize("listener", ["admin", "prometheus"])
@pytest.mark.parametrize("sends_a_request", [False, True])
async def test_an_idle_connection_to_the_admin_or_scrape_endpoint_is_closed(
    listener: str, sends_a_request: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp keeps an idle keep-alive connection for an hour: held open by the thousand from the cluster, they
    exhausted the agent's descriptors, and its receivers and probes failed with it."""
    monkeypatch.setattr(listen, "IDLE_CONNECTION_SECONDS", 0.3)
    port = free_dual_stack_port()
    async with HTTP_LISTENERS[listener](HostPort(f"127.0.0.1:{port}")):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if sends_a_request:
                writer.write(b"GET /health/live HTTP/1.1\r\nHost: agent\r\n\r\n")
                await writer.drain()
            await asyncio.wait_for(reader.read(), 5)  # returns at EOF: the server closed the connection
        finally:
            writer.close()


async def test_an_idle_connection_to_the_otlp_http_receiver_is_closed_after_the_receivers_own_idle_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Senders from the whole cluster keep connections to a gateway's OTLP/HTTP port: an idle one is closed after the
    receiver's idle_timeout (longer than the admin endpoint's, which a scraper reconnects to at once)."""
    monkeypatch.setattr(listen, "IDLE_CONNECTION_SECONDS", 3600.0)
    port = free_dual_stack_port()
    http = HttpConfig(endpoint=HostPort(f"127.0.0.1:{port}"), idle_timeout=Duration(0.3))
    async with otlp_receiver(OtlpReceiverConfig(grpc=GrpcConfig(enabled=False), http=http)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await asyncio.wait_for(reader.read(), 5)  # returns at EOF: the server closed the connection
        finally:
            writer.close()


async def test_an_address_a_name_resolves_to_twice_is_bound_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """/etc/hosts may list a name's address twice (and getaddrinfo then returns it twice): binding it twice would
    fail the start with "address already in use"."""
    port = free_dual_stack_port()
    resolved = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))] * 2

    async def getaddrinfo(*args: Any, **kwargs: Any) -> list[Any]:
        return resolved

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    sockets = await listen.listening_sockets("agent.local", port)
    try:
        assert [sock.getsockname() for sock in sockets] == [("127.0.0.1", port)]
    finally:
        for sock in sockets:
            sock.close()


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from agent.cli import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        raised = raise_open_file_limit()
        assert raised == hard or (hard == resource.RLIM_INFINITY and raised > 256)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("component", ["prometheus", "otlp_http"])
async def test_a_server_stopped_past_its_deadline_still_frees_its_port(component: str) -> None:
    """Past the shutdown deadline (a down backend used it up) the bound was 0 s: cleanup was cancelled at once,
    and the port stayed bound and serving."""
    port = free_dual_stack_port()
    endpoint = HostPort(f"127.0.0.1:{port}")
    stage: Any
    if component == "prometheus":
        stage = PrometheusExporter(PrometheusExporterConfig(endpoint=endpoint), _settings("prometheus", Kind.EXPORTER))
    else:
        config = OtlpReceiverConfig(grpc=GrpcConfig(enabled=False), http=HttpConfig(endpoint=endpoint))
        stage = OtlpReceiver(config, _settings("otlp", Kind.RECEIVER), {Signal.TRACES: BatchSink()})
    await stage.start()
    assert await answers("127.0.0.1", port, http=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: agent\r\n\r\n")  # a keep-alive connection
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await stage.shutdown(time.monotonic() - 1)
        assert not await answers("127.0.0.1", port, http=True)
        # Its open connections are closed too: none goes on being served by the stopped stage.
        await asyncio.wait_for(reader.read(), 5)  # returns at EOF
    finally:
        writer.close()


@pytest.mark.parametrize("listener", HTTP_LISTENERS)
async def test_requests_that_are_not_http_get_400_and_one_warning_not_a_traceback_each(
    listener: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A scraper set to ``https`` sends TLS to the plain port at every scrape: aiohttp's own answer is kept, its
    traceback at ERROR for each is not."""
    caplog.set_level(logging.DEBUG)
    port = free_dual_stack_port()
    async with HTTP_LISTENERS[listener](HostPort.parse(f"127.0.0.1:{port}")):
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.0 400 ")
            writer.close()
        assert await answers("127.0.0.1", port, http=True)
    told = [(r.levelno, r.getMessage(), bool(r.exc_info)) for r in caplog.records if r.levelno >= logging.WARNING]
    assert told == [(logging.WARNING, "request is not valid HTTP; answered 400", False)]


def _pure_python_parse_error(raw: bytes) -> Exception:
    """The error aiohttp's pure-Python parser (AIOHTTP_NO_EXTENSIONS=1, or no C wheel) raises for ``raw``."""
    from unittest import mock

    from aiohttp.http_parser import HttpRequestParserPy

    parser = HttpRequestParserPy(mock.Mock(), mock.Mock(), 2**16, max_line_size=8190, max_field_size=8190)
    with pytest.raises(Exception) as raised:
        parser.feed_data(raw)
    return raised.value


@pytest.mark.parametrize(
    "raw",
    [
        # TransferEncodingError(<the chunk-size line, decoded as is>): terminal escapes, bytes that are not UTF-8.
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\x1b[2J\x1b]0;owned\x07\xff\xfe"
        + b"Z" * 8000
        + b"\r\n",
        # InvalidURLError(<the target, decoded as latin-1>)
        b"GET /\x1b[2J\x1b]0;owned\x07\x85next HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"Z" * 1000 + b"\r\n",
    ],
    ids=["chunk size line", "request target", "a line of a thousand bytes"],
)
def test_what_a_client_sent_is_not_logged_raw_nor_at_any_length(raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """With the pure-Python parser the first line of the error's message is the client's bytes themselves."""
    error = _pure_python_parse_error(raw)
    caplog.set_level(logging.DEBUG)
    listen.UnparsableRequestLog(logging.getLogger("test")).exception("Error handling request", exc_info=error)
    [record] = caplog.records
    told: str = record.error  # type: ignore[attr-defined]
    assert told.isascii() and told.isprintable(), told[:80]
    assert len(told) <= 300


async def test_a_connection_reaching_a_stopped_server_is_closed_unread_and_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """stop_runner closes a connection that reaches aiohttp after it (one accepted just before; over TLS, one whose
    handshake ends after). Aborted at once, its connection_lost came before its handler's task began, which on
    Python 3.11 (the image's) failed on an assertion: "Task exception was never retrieved", an ERROR with a
    traceback for a connection the stop meant to refuse."""
    served: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        served.append(await request.read())
        return web.Response()

    app = web.Application()
    app.router.add_post("/", handle)
    runner = await listen.serve(app, HostPort(f"127.0.0.1:{free_dual_stack_port()}"), logging.getLogger("test"))
    server = runner.server
    assert server is not None
    await listen.stop_runner(runner, 1.0)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    with client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: agent\r\nContent-Length: 2\r\n\r\nhi")
        # As the stopped server's listener hands it a connection late.
        await asyncio.get_running_loop().connect_accepted_socket(server, accepted)
        client.settimeout(5)
        try:
            answer = await asyncio.to_thread(client.recv, 100)
        except ConnectionResetError:
            answer = b""
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()
    await asyncio.sleep(0)
    assert answer == b""
    assert served == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_admin_endpoint_that_cannot_listen_releases_the_port_it_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin endpoint binds its sockets itself and keeps them across its runners. When listening fails at its
    start (another socket listened on the port between the bind and the listen), the socket it bound was kept:
    a descriptor, and the port held bound, after "cannot listen"."""
    port = free_dual_stack_port()
    taker = socket.socket()
    bound = listen.listening_sockets

    async def port_taken_meanwhile(host: str, port: int) -> list[socket.socket]:
        sockets = await bound(host, port)
        taker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taker.bind((host, port))
        taker.listen()
        return sockets

    monkeypatch.setattr("agent.telemetry.admin.listening_sockets", port_taken_meanwhile)
    server = AdminServer(HostPort(f"127.0.0.1:{port}"), SelfMetrics(), lambda: None)
    with taker:
        with pytest.raises(OSError) as failed:
            await server.start()
        assert failed.value.errno == errno.EADDRINUSE
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # without SO_REUSEADDR: fails while any socket is bound to the port


async def test_the_admin_port_closes_as_its_shutdown_begins_not_after_the_grace() -> None:
    """The admin endpoint's runners listen on duplicates of sockets it holds until shutdown. Closed after the
    runner's stop, they kept the port listening with no one accepting for the whole grace a slow client took: a
    probe or scrape meanwhile hung, and was reset at the end, where it had been refused at once."""
    port = free_dual_stack_port()
    server = AdminServer(HostPort(f"127.0.0.1:{port}"), SelfMetrics(), lambda: None)
    await server.start()
    _, slow = await asyncio.open_connection("127.0.0.1", port)
    try:
        slow.write(b"GET /health/live HTTP/1.1\r\nHost: agent\r\nContent-Length: 100000\r\n\r\nhalf")
        await slow.drain()
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(server.shutdown())
        await asyncio.sleep(0.2)
        assert not stopping.done(), "the shutdown was expected to wait for the slow client"
        with pytest.raises(ConnectionRefusedError):
            async with asyncio.timeout(1):
                await asyncio.open_connection("127.0.0.1", port)
        await stopping
    finally:
        slow.close()


async def test_the_admin_endpoint_says_where_it_listens_the_port_the_kernel_chose_included(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As the receivers do: health and the agent's own metrics are found from this line (a new user's point)."""
    server = AdminServer(HostPort("127.0.0.1:0"), SelfMetrics(), lambda: None)
    with caplog.at_level(logging.INFO, logger="otel_sidecar.admin"):
        await server.start()
    try:
        (line,) = [r for r in caplog.records if r.getMessage().startswith("admin endpoint listening")]
        assert line.port > 0 and line.endpoint == "127.0.0.1:0" and line.tls is False  # type: ignore[attr-defined]
    finally:
        await server.shutdown()
