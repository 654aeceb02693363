"""``service.tls_files_check_interval``: the TLS files a config names are compared with what they held when the
running pipelines read them, and a change reloads the running config, so certificates rotated in place are taken
without a SIGHUP. The agent runs here in process (``Agent.run``), its files rotated as the kubelet rotates a
mounted Secret: a new directory, then one symlink swapped."""

from __future__ import annotations

import asyncio
import datetime
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.app import Agent
from agent.config.loader import load_text
from agent.tls_files import changed, digests, tls_files
from tests.helpers import MountedSecret, base_config, metric_value
from tests.unit.test_certificate_expiry import every_tls_config, expiry

UTC = datetime.UTC
NOW = datetime.datetime.now(UTC).replace(microsecond=0)
DAY = datetime.timedelta(days=1)


def test_every_file_of_every_tls_setting_is_found(tmp_path: Path) -> None:
    config = every_tls_config(
        tmp_path, (tmp_path / "s.pem", tmp_path / "s.key"), (tmp_path / "c.pem", tmp_path / "c.key")
    )
    config["receivers"]["otlp"]["grpc"]["tls"]["client_ca_file"] = str(tmp_path / "clients-ca.pem")
    config["exporters"]["loki"]["tls"]["ca_file"] = str(tmp_path / "loki-ca.pem")
    paths = ["s.pem", "s.key", "c.pem", "c.key", "clients-ca.pem", "loki-ca.pem"]
    for name in paths:
        (tmp_path / name).write_text("not read by the config loader")
    assert tls_files(load_text(yaml.safe_dump(config))) == sorted(str(tmp_path / name) for name in paths)


def test_a_file_changed_appeared_or_gone_is_a_change(tmp_path: Path) -> None:
    kept, rewritten, removed, created = (tmp_path / name for name in ("kept", "rewritten", "removed", "created"))
    for path in (kept, rewritten, removed):
        path.write_text("first")
    before = digests([str(p) for p in (kept, rewritten, removed, created)])
    assert changed(before) == []
    rewritten.write_text("second")
    removed.unlink()
    created.write_text("new")
    assert changed(before) == [str(rewritten), str(removed), str(created)]


@dataclass
class Running:
    agent: Agent
    secret: MountedSecret
    config: dict[str, Any]

    def reloads(self, result: str) -> float:
        return metric_value(self.agent.metrics.render().decode(), "otel_sidecar_config_reloads_total", result=result)

    def expiry(self) -> float | None:
        return expiry(self.agent, "receivers.otlp.grpc.tls", self.secret.cert)


@pytest.fixture
def handlers_restored() -> Iterator[None]:
    """``Agent.run`` leaves the stop signals ignored once it has flushed (it is the process's last step)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@asynccontextmanager
async def running_agent(tmp_path: Path, interval: str) -> AsyncIterator[Running]:
    secret = MountedSecret(tmp_path / "secret")
    secret.update(NOW + 20 * DAY)
    config = base_config(tmp_path / "out")
    config["receivers"]["otlp"]["grpc"]["tls"] = {"cert_file": str(secret.cert), "key_file": str(secret.key)}
    config["service"]["tls_files_check_interval"] = interval
    agent = Agent(load_text(yaml.safe_dump(config)), load_config=lambda: load_text(yaml.safe_dump(config)))
    task = asyncio.create_task(agent.run())
    await eventually(lambda: agent.graph.receivers_started)
    try:
        yield Running(agent, secret, config)
    finally:
        agent.request_stop(signal.SIGTERM)
        await task


@pytest.fixture
async def checking(tmp_path: Path, handlers_restored: None) -> AsyncIterator[Running]:
    async with running_agent(tmp_path, "50ms") as running:
        yield running


async def eventually(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_rotated_certificate_is_taken_without_a_sighup(
    checking: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "otel_sidecar.agent")
    assert checking.expiry() == (NOW + 20 * DAY).timestamp()
    checking.secret.update(NOW + 80 * DAY)
    await eventually(lambda: checking.expiry() == (NOW + 80 * DAY).timestamp())
    assert checking.reloads("reloaded") == 1
    assert checking.agent.graph.receivers_started
    [said] = [r for r in caplog.records if r.getMessage().startswith("TLS files changed")]
    assert said.files == [str(checking.secret.cert), str(checking.secret.key)]  # type: ignore[attr-defined]


async def test_a_broken_rotation_is_refused_once_and_taken_when_it_is_fixed(checking: Running) -> None:
    checking.secret.update(NOW + 80 * DAY, key_of=1)  # the new certificate beside the old key
    await eventually(lambda: checking.reloads("invalid") == 1)
    await asyncio.sleep(0.3)  # six checks: the same files are not tried again
    assert checking.reloads("invalid") == 1
    assert checking.expiry() == (NOW + 20 * DAY).timestamp()  # still serving what it loaded
    checking.secret.update(NOW + 90 * DAY)
    await eventually(lambda: checking.reloads("reloaded") == 1)
    assert checking.expiry() == (NOW + 90 * DAY).timestamp()


async def test_a_tls_reload_does_not_read_the_config_file_again(checking: Running) -> None:
    """A config edited on disk but not yet SIGHUP'd is not applied behind the operator's back by a rotation."""
    checking.config["service"]["telemetry"]["logs"]["level"] = "debug"
    checking.config["service"]["tls_files_check_interval"] = "0s"
    checking.secret.update(NOW + 80 * DAY)
    await eventually(lambda: checking.reloads("reloaded") == 1)
    assert checking.agent.config.service.tls_files_check_interval == 0.05
    assert checking.agent.config.service.telemetry.logs.level == "info"


async def test_with_the_check_off_a_rotation_waits_for_a_sighup(tmp_path: Path, handlers_restored: None) -> None:
    async with running_agent(tmp_path, "0s") as running:
        running.secret.update(NOW + 80 * DAY)
        await asyncio.sleep(1.5)  # more than the 1 s the agent waits between looks at the setting
        assert running.reloads("reloaded") == 0
        assert running.expiry() == (NOW + 20 * DAY).timestamp()
        running.agent.request_stop(signal.SIGHUP)
        await eventually(lambda: running.reloads("reloaded") == 1)
        assert running.expiry() == (NOW + 80 * DAY).timestamp()
