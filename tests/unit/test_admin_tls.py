"""The admin endpoint over TLS: certificates (and client CAs) rotated at a reload without closing its socket, with
real aiohttp clients and certificates made by openssl."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from agent.app import Agent
from agent.config.loader import AgentConfig, load_text
from agent.config.schema import HostPort
from agent.server_tls import TlsServerConfig
from agent.telemetry.admin import AdminServer
from agent.telemetry.selfmetrics import SelfMetrics
from tests.helpers import base_config, free_port, metric_value, self_signed_certificate

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
    server = AdminServer(HostPort(f"127.0.0.1:{port}"), SelfMetrics(), lambda: None, tls.load())
    await server.start()
    try:
        yield server, port
    finally:
        await server.shutdown()


def pair(cert: Pair) -> TlsServerConfig:
    return TlsServerConfig(cert_file=str(cert[0]), key_file=str(cert[1]))


async def test_the_admin_endpoint_serves_https_only(tmp_path: Path) -> None:
    cert = self_signed_certificate(tmp_path)
    async with admin_server(pair(cert)) as (_, port):
        assert await answers(f"https://localhost:{port}", client_context(cert[0]))
        assert not await answers(f"http://localhost:{port}", None)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_new_connections_get_the_rotated_certificate_with_or_without_a_server_name(
    tmp_path: Path, host: str
) -> None:
    """A client connecting to an IP address sends no server name (SNI): the rotation must not depend on one."""
    first = self_signed_certificate(tmp_path, "first")
    second = self_signed_certificate(tmp_path, "second")
    async with admin_server(pair(first)) as (server, port):
        url = f"https://{host}:{port}"
        assert await answers(url, client_context(first[0]))
        server.use_tls(pair(second).load())
        assert await answers(url, client_context(second[0]))
        assert not await answers(url, client_context(first[0]))


async def test_rotated_client_cas_decide_which_client_certificates_get_in(tmp_path: Path) -> None:
    cert = self_signed_certificate(tmp_path)
    old_client = self_signed_certificate(tmp_path, "old-client")  # self-signed: its own CA
    new_client = self_signed_certificate(tmp_path, "new-client")
    tls = TlsServerConfig(cert_file=str(cert[0]), key_file=str(cert[1]), client_ca_file=str(old_client[0]))
    async with admin_server(tls) as (server, port):
        url = f"https://localhost:{port}"
        assert await answers(url, client_context(cert[0], old_client))
        assert not await answers(url, client_context(cert[0]))  # no certificate at all
        rotated = TlsServerConfig(cert_file=tls.cert_file, key_file=tls.key_file, client_ca_file=str(new_client[0]))
        server.use_tls(rotated.load())
        assert await answers(url, client_context(cert[0], new_client))
        assert not await answers(url, client_context(cert[0], old_client))
        assert not await answers(url, client_context(cert[0]))


def test_turning_tls_on_for_a_plain_admin_endpoint_is_refused() -> None:
    server = AdminServer(HostPort(f"127.0.0.1:{free_port()}"), SelfMetrics(), lambda: None)
    with pytest.raises(ValueError, match="takes a restart"):
        server.use_tls(object())  # type: ignore[arg-type]


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


async def test_a_reload_turning_admin_tls_off_keeps_it_on_and_says_a_restart_is_needed(
    agent_with_admin_tls: tuple[Agent, dict[str, Any], Path], caplog: pytest.LogCaptureFixture
) -> None:
    agent, config, certs = agent_with_admin_tls
    del config["service"]["telemetry"]["admin"]["tls"]
    assert await agent.reload()
    assert "service.telemetry.admin.tls: turning TLS or client certificates on or off takes a restart" in caplog.text
    assert await answers(admin_url(config), client_context(certs / "server.pem"))
