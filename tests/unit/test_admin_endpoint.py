"""The admin endpoint's answers: liveness, readiness with its reason, and the agent's metrics in the format asked."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from agent.config.schema import HostPort
from agent.telemetry.admin import AdminServer
from agent.telemetry.selfmetrics import SelfMetrics
from tests.helpers import free_port


@pytest.fixture
async def admin() -> AsyncIterator[tuple[str, list[str | None]]]:
    """A running admin endpoint, its base URL, and the not-ready reason it reports (a test sets it)."""
    reason: list[str | None] = [None]
    port = free_port()
    server = AdminServer(HostPort(f"127.0.0.1:{port}"), SelfMetrics(), lambda: reason[0])
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", reason
    finally:
        await server.shutdown()


async def test_readiness_is_200_when_ready_and_503_with_the_reason_when_not(
    admin: tuple[str, list[str | None]],
) -> None:
    url, reason = admin
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/health/ready") as response:
            assert (response.status, await response.json()) == (200, {"status": "ready"})
        reason[0] = "starting"
        async with session.get(url + "/health/ready") as response:
            assert (response.status, await response.json()) == (503, {"status": "not ready", "reason": "starting"})
        async with session.get(url + "/health/live") as response:  # live however ready it is
            assert (response.status, await response.json()) == (200, {"status": "live"})


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("", "text/plain; version=0.0.4; charset=utf-8"),
        ("application/openmetrics-text; version=1.0.0", "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    ],
)
async def test_the_agent_s_metrics_come_in_the_format_the_scraper_asks_for(
    admin: tuple[str, list[str | None]], accept: str, content_type: str
) -> None:
    url, _ = admin
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics", headers=headers) as response:
        assert response.status == 200
        # prometheus_client's own spelling (later releases add "; escaping=underscores" to OpenMetrics)
        assert response.headers["Content-Type"].startswith(content_type)
        body = await response.text()
    assert ("# EOF" in body) == accept.startswith("application/openmetrics-text")
