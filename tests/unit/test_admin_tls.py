"""The admin endpoint over TLS: certificates and client CAs rotated at a reload by listening again, with real
aiohttp and ssl clients and certificates made by openssl."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from agent.app import ADMIN_TLS_PATH, Agent
from agent.config.loader import AgentConfig, load_text
from agent.config.schema import HostPort
from agent.server_tls import TlsServerConfig
from agent.telemetry.admin import AdminServer
from agent.telemetry.selfmetrics import SelfMetrics
from tests.helpers import (
    base_config,
    free_port,
    metric_value,
    receiver_port_taken_once,
    self_signed_certificate,
    status_after_handshake,
)

Pair = tuple[Path, Path]


def client_context(trusted: Path, identity: Pair | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(trusted))
    if identity is not None:
        context.load_cert_chain(*map(str, identity))
    return context


async def answers(url: str, context: ssl.SSLContext | None) -> bool:
    """Whether ``url``'s /health/live answers 200 to a client with ``context`` (None: plain HTTP)."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/health/live", ssl=context if context is not None else False) as response,
        ):
            return response.status == 200
    except aiohttp.ClientError:
        return False


@asynccontextmanager
async def admin_server(tls: TlsServerConfig) -> AsyncIterator[tuple[AdminServer, int]]:
    port = free_port()
    server = AdminServer(HostPort(f"127.0.0.1:{port}"), SelfMetrics(), lambda: None, tls.load(ADMIN_TLS_PATH))
    await server.start()
    try:
        yield server, port
    finally:
        await server.shutdown()


def pair(cert: Pair) -> TlsServerConfig:
    return TlsServerConfig(cert_file=str(cert[0]), key_file=str(cert[1]))


def mutual_tls(cert: Pair, client_ca: Path) -> TlsServerConfig:
    return TlsServerConfig(cert_file=str(cert[0]), key_file=str(cert[1]), client_ca_file=str(client_ca))


async def test_the_admin_endpoint_serves_https_only(tmp_path: Path) -> None:
    cert = self_signed_certificate(tmp_path)
    async with admin_server(pair(cert)) as (_, port):
        assert await answers(f"https://localhost:{port}", client_context(cert[0]))
        assert not await answers(f"http://localhost:{port}", None)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_listening_again_serves_the_rotated_certificate(tmp_path: Path, host: str) -> None:
    first = self_signed_certificate(tmp_path, "first")
    second = self_signed_certificate(tmp_path, "second")
    async with admin_server(pair(first)) as (server, port):
        url = f"https://{host}:{port}"
        assert await answers(url, client_context(first[0]))
        await server.listen_again(pair(second).load(ADMIN_TLS_PATH))
        assert await answers(url, client_context(second[0]))
        assert not await answers(url, client_context(first[0]))


async def test_rotated_client_cas_decide_which_client_certificates_get_in(tmp_path: Path) -> None:
    cert = self_signed_certificate(tmp_path)
    old_client = self_signed_certificate(tmp_path, "old-client")  # self-signed: its own CA
    new_client = self_signed_certificate(tmp_path, "new-client")
    async with admin_server(mutual_tls(cert, old_client[0])) as (server, port):
        url = f"https://localhost:{port}"
        assert await answers(url, client_context(cert[0], old_client))
        assert not await answers(url, client_context(cert[0]))  # no certificate at all
        await server.listen_again(mutual_tls(cert, new_client[0]).load(ADMIN_TLS_PATH))
        assert await answers(url, client_context(cert[0], new_client))
        assert not await answers(url, client_context(cert[0], old_client))
        assert not await answers(url, client_context(cert[0]))


def fetch(port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None) -> ssl.SSLSession | None:
    """GET /health/live with a blocking client (``session`` to resume one); the session when it answered 200, with
    its ticket (TLS 1.3 sends it after the handshake), or None when the connection was refused."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            tls.sendall(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
            if not answer.startswith(b"HTTP/1.1 200"):
                return None
            assert session is None or tls.session_reused, "served, but without resuming the session"
            return tls.session
    except (ssl.SSLError, ConnectionError):
        return None


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_client_whose_ca_was_rotated_away_cannot_resume_a_session_made_before(
    tmp_path: Path, version: ssl.TLSVersion
) -> None:
    """A resumed session skips the client-certificate check: the sessions (and the keys sealing the tickets) of the
    old certificates must go with them."""
    cert = self_signed_certificate(tmp_path)
    old_client = self_signed_certificate(tmp_path, "old-client")
    new_client = self_signed_certificate(tmp_path, "new-client")
    async with admin_server(mutual_tls(cert, old_client[0])) as (server, port):
        old = client_context(cert[0], old_client)
        old.maximum_version = version
        session = await asyncio.to_thread(fetch, port, old)
        assert session is not None
        assert await asyncio.to_thread(fetch, port, old, session) is not None  # resumption works
        await server.listen_again(mutual_tls(cert, new_client[0]).load(ADMIN_TLS_PATH))
        assert await asyncio.to_thread(fetch, port, old) is None
        assert await asyncio.to_thread(fetch, port, old, session) is None


async def test_a_keep_alive_connection_made_with_a_client_ca_rotated_away_does_not_outlive_the_rotation(
    tmp_path: Path,
) -> None:
    """A scraper keeps its connection open between scrapes."""
    cert = self_signed_certificate(tmp_path)
    old_client = self_signed_certificate(tmp_path, "old-client")
    new_client = self_signed_certificate(tmp_path, "new-client")
    async with admin_server(mutual_tls(cert, old_client[0])) as (server, port):
        url = f"https://localhost:{port}/health/live"
        async with aiohttp.ClientSession() as scraper:
            old = client_context(cert[0], old_client)
            async with scraper.get(url, ssl=old) as response:
                assert response.status == 200
            await server.listen_again(mutual_tls(cert, new_client[0]).load(ADMIN_TLS_PATH))
            with pytest.raises(aiohttp.ClientError):
                async with scraper.get(url, ssl=old) as response:
                    await response.read()


async def test_listening_again_keeps_the_port_listening_while_a_slow_client_holds_the_old_endpoint(
    tmp_path: Path,
) -> None:
    """A slow client makes the old endpoint's stop take its whole grace: probes meanwhile must be answered (refused,
    the kubelet counts a failure), and no other socket may take the port (the endpoint would stay closed)."""
    cert = self_signed_certificate(tmp_path)
    async with admin_server(pair(cert)) as (server, port):
        _, slow = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(cert[0]), server_hostname="localhost"
        )
        slow.write(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\nhalf")
        await slow.drain()
        await asyncio.sleep(0.1)
        again = asyncio.create_task(server.listen_again(pair(cert).load(ADMIN_TLS_PATH)))
        await asyncio.sleep(0.3)
        assert not again.done(), "the old endpoint's stop was expected to wait for the slow client"
        assert await answers(f"https://localhost:{port}", client_context(cert[0]))
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
                other.listen()
        await again
        slow.close()
        assert await answers(f"https://localhost:{port}", client_context(cert[0]))


PROBE = b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


async def test_a_connection_accepted_before_listening_again_cannot_finish_its_handshake_with_the_old_client_cas(
    tmp_path: Path,
) -> None:
    """asyncio hands aiohttp a TLS connection only once its handshake is done: one the old endpoint accepted, whose
    ClientHello came after the rotation, was verified with the client CAs rotated away and served by the stopped
    endpoint, which no later reload or stop knew of."""
    cert = self_signed_certificate(tmp_path)
    old_client = self_signed_certificate(tmp_path, "old-client")
    new_client = self_signed_certificate(tmp_path, "new-client")
    async with admin_server(mutual_tls(cert, old_client[0])) as (server, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # accepted; no ClientHello yet
            await asyncio.sleep(0.2)
            await server.listen_again(mutual_tls(cert, new_client[0]).load(ADMIN_TLS_PATH))
            answer = await asyncio.to_thread(status_after_handshake, raw, client_context(cert[0], old_client), PROBE)
        assert answer is None, answer
        assert await answers(f"https://localhost:{port}", client_context(cert[0], new_client))


# --- the agent: at start and at a reload ----------------------------------------------------------------------


def load(config: dict[str, Any]) -> AgentConfig:
    return load_text(yaml.safe_dump(config))


def admin_tls_config(tmp_path: Path, certs: Path) -> dict[str, Any]:
    config = base_config(tmp_path / "out")
    config["service"]["telemetry"]["admin"]["tls"] = {
        "cert_file": str(certs / "server.pem"),
        "key_file": str(certs / "server.key"),
    }
    return config


def test_an_admin_tls_file_that_is_missing_fails_the_start_naming_the_setting(tmp_path: Path) -> None:
    config = admin_tls_config(tmp_path, tmp_path / "no-such-directory")
    with pytest.raises(RuntimeError) as raised:
        Agent(load(config))
    assert str(raised.value).startswith("service.telemetry.admin.tls: TLS file not found"), raised.value


@pytest.fixture
async def agent_with_admin_tls(tmp_path: Path) -> AsyncIterator[tuple[Agent, dict[str, Any], Path]]:
    certs = tmp_path / "certs"
    certs.mkdir()
    self_signed_certificate(certs)
    config = admin_tls_config(tmp_path, certs)
    agent = Agent(load(config), load_config=lambda: load(config))
    await agent.start()
    yield agent, config, certs
    await agent.stop()


def admin_url(config: dict[str, Any]) -> str:
    return "https://" + config["service"]["telemetry"]["admin"]["endpoint"]


async def test_a_reload_takes_certificates_rotated_in_place(
    agent_with_admin_tls: tuple[Agent, dict[str, Any], Path],
) -> None:
    agent, config, certs = agent_with_admin_tls
    first = (certs / "server.pem").read_bytes()
    self_signed_certificate(certs)  # rotated in place, as a Secret mounted in a pod is
    assert await answers(admin_url(config), client_context(certs / "server.pem")) is False  # not read yet
    assert await agent.reload()
    assert await answers(admin_url(config), client_context(certs / "server.pem"))
    (certs / "first.pem").write_bytes(first)
    assert not await answers(admin_url(config), client_context(certs / "first.pem"))


async def test_a_reload_with_broken_admin_tls_files_is_refused_and_the_endpoint_keeps_its_certificate(
    agent_with_admin_tls: tuple[Agent, dict[str, Any], Path],
) -> None:
    agent, config, certs = agent_with_admin_tls
    (certs / "first.pem").write_bytes((certs / "server.pem").read_bytes())
    self_signed_certificate(certs, "next")
    (certs / "next.pem").replace(certs / "server.pem")  # the new certificate is in place, its key not yet
    assert not await agent.reload()
    assert metric_value(agent.metrics.render().decode(), "otel_sidecar_config_reloads_total", result="invalid") == 1
    assert await answers(admin_url(config), client_context(certs / "first.pem"))


async def test_a_reload_turning_admin_tls_off_serves_plain_http(
    agent_with_admin_tls: tuple[Agent, dict[str, Any], Path],
) -> None:
    agent, config, certs = agent_with_admin_tls
    del config["service"]["telemetry"]["admin"]["tls"]
    assert await agent.reload()
    plain = "http://" + config["service"]["telemetry"]["admin"]["endpoint"]
    assert await answers(plain, None)
    assert not await answers(admin_url(config), client_context(certs / "server.pem"))


async def test_a_reload_falling_back_to_the_running_config_takes_its_rotated_admin_certificate_too(
    agent_with_admin_tls: tuple[Agent, dict[str, Any], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new pipelines fail to start (a port taken) and the running config starts again, its receivers reading its
    files anew: the admin endpoint, whose files are the same, takes what was read from them too."""
    agent, config, certs = agent_with_admin_tls
    self_signed_certificate(certs)  # rotated in place
    receiver_port_taken_once(monkeypatch)
    assert not await agent.reload()
    assert agent.graph.receivers_started
    assert await answers(admin_url(config), client_context(certs / "server.pem"))


async def test_a_reload_falling_back_keeps_the_running_configs_admin_certificate_not_the_new_configs(
    agent_with_admin_tls: tuple[Agent, dict[str, Any], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new config names other admin files, and its pipelines fail to start: the running config, started again,
    serves its own certificate, not one of a config that is not running."""
    agent, config, certs = agent_with_admin_tls
    self_signed_certificate(certs, "next")
    config["service"]["telemetry"]["admin"]["tls"] = {
        "cert_file": str(certs / "next.pem"),
        "key_file": str(certs / "next.key"),
    }
    receiver_port_taken_once(monkeypatch)
    assert not await agent.reload()
    assert agent.graph.receivers_started
    assert await answers(admin_url(config), client_context(certs / "server.pem"))
    assert not await answers(admin_url(config), client_context(certs / "next.pem"))
