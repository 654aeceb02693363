"""``service.tls_files_check_interval``: the TLS files a config names are compared with what they held when the
running pipelines read them, and a change reloads the running config, so certificates rotated in place are taken
without a SIGHUP. The agent runs here in process (``Agent.run``), its files rotated as the kubelet rotates a
mounted Secret: a new directory, then one symlink swapped."""

from __future__ import annotations

import asyncio
import datetime
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.app import Agent
from agent.config.loader import AgentConfig, load_text
from agent.pipeline.graph import Graph
from agent.tls_files import TlsFilesRead, admin_tls_files, component_tls_files
from tests.helpers import MountedSecret, base_config, free_port, metric_value, receiver_port_taken_once
from tests.unit.test_certificate_expiry import every_tls_config, expiry

UTC = datetime.UTC
NOW = datetime.datetime.now(UTC).replace(microsecond=0)
DAY = datetime.timedelta(days=1)


def load(config: dict[str, Any]) -> AgentConfig:
    return load_text(yaml.safe_dump(config))


def test_every_file_of_every_tls_setting_is_found_the_admin_endpoints_apart(tmp_path: Path) -> None:
    server, client = (tmp_path / "s.pem", tmp_path / "s.key"), (tmp_path / "c.pem", tmp_path / "c.key")
    config = every_tls_config(tmp_path, server, client)
    config["receivers"]["otlp"]["grpc"]["tls"]["client_ca_file"] = str(tmp_path / "clients-ca.pem")
    config["exporters"]["loki"]["tls"]["ca_file"] = str(tmp_path / "loki-ca.pem")
    admin = {"cert_file": str(tmp_path / "admin.pem"), "key_file": str(tmp_path / "admin.key")}
    config["service"]["telemetry"]["admin"]["tls"] = admin
    paths = ["s.pem", "s.key", "c.pem", "c.key", "clients-ca.pem", "loki-ca.pem"]
    loaded = load(config)
    assert component_tls_files(loaded) == sorted(str(tmp_path / name) for name in paths)
    assert admin_tls_files(loaded) == sorted(admin.values())


def test_a_switched_off_protocols_files_are_not_watched(tmp_path: Path) -> None:
    """No server presents them: a rotation there must not reload the pipelines."""
    config = {
        "receivers": {
            "otlp": {
                "grpc": {"endpoint": "127.0.0.1:4317"},
                "http": {"enabled": False, "tls": {"cert_file": str(tmp_path / "h.pem"), "key_file": "h.key"}},
            }
        },
        "exporters": {"file": {"path": str(tmp_path / "out")}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}}},
    }
    assert component_tls_files(load(config)) == []


def test_files_changed_appeared_or_gone_are_changes_unless_a_refused_reload_found_them(tmp_path: Path) -> None:
    cert, key, admin_cert, admin_key = (tmp_path / name for name in ("c.pem", "c.key", "a.pem", "a.key"))
    for path in (cert, key, admin_cert):
        path.write_text("first")
    config = base_config(tmp_path / "out")
    config["receivers"]["otlp"]["grpc"]["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    config["service"]["telemetry"]["admin"]["tls"] = {"cert_file": str(admin_cert), "key_file": str(admin_key)}
    read = TlsFilesRead(load(config))
    assert read.changed_files() == []
    cert.write_text("second")
    admin_key.write_text("appeared")
    assert read.changed_files() == sorted([str(admin_key), str(cert)])
    read.refuse(TlsFilesRead(load(config)))
    assert read.changed_files() == []  # what a refused reload found is not tried again
    key.unlink()
    assert read.changed_files() == sorted([str(admin_key), str(cert), str(key)])


@dataclass
class Running:
    agent: Agent
    secret: MountedSecret
    config: dict[str, Any]

    def reloads(self, result: str) -> float:
        return metric_value(self.agent.metrics.render().decode(), "otel_sidecar_config_reloads_total", result=result)

    def expiry(self) -> float | None:
        return expiry(self.agent, "receivers.otlp.grpc.tls", self.secret.cert)

    async def reload_with_interval(self, interval: str) -> None:
        """A SIGHUP reloading the config with ``interval`` as ``tls_files_check_interval``."""
        self.config["service"]["tls_files_check_interval"] = interval
        self.agent.request_stop(signal.SIGHUP)
        await eventually(lambda: self.reloads("reloaded") == 1)


@pytest.fixture
def handlers_restored() -> Iterator[None]:
    """``Agent.run`` leaves the stop signals ignored once it has flushed (it is the process's last step)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@asynccontextmanager
async def running_agent(
    tmp_path: Path, interval: str, configure: Callable[[dict[str, Any]], None] | None = None
) -> AsyncIterator[Running]:
    """An agent whose gRPC receiver presents ``secret``'s certificate; ``configure`` changes its config first."""
    secret = MountedSecret(tmp_path / "secret")
    secret.update(NOW + 20 * DAY)
    config = base_config(tmp_path / "out")
    config["receivers"]["otlp"]["grpc"]["tls"] = {"cert_file": str(secret.cert), "key_file": str(secret.key)}
    config["service"]["tls_files_check_interval"] = interval
    if configure is not None:
        configure(config)
    agent = Agent(load(config), load_config=lambda: load(config))
    task = asyncio.create_task(agent.run())
    await eventually(lambda: agent.graph.receivers_started)
    try:
        yield Running(agent, secret, config)
    finally:
        assert not task.done(), "the agent exited"
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


@pytest.mark.parametrize(
    ("sighup", "interval", "warned"),
    [
        (signal.SIG_IGN, "50ms", "; a change of the TLS files it names still restarts its pipelines"),
        (signal.SIG_IGN, "0s", ""),  # nothing reloads it then
        (signal.SIG_DFL, "50ms", None),
    ],
)
async def test_an_agent_started_with_sighup_ignored_warns_that_kill_hup_will_not_reload_it(
    tmp_path: Path,
    handlers_restored: None,
    caplog: pytest.LogCaptureFixture,
    sighup: Any,
    interval: str,
    warned: str | None,
) -> None:
    """Pass 141 started the agent under nohup: its reloads did nothing, and nothing said so."""
    signal.signal(signal.SIGHUP, sighup)
    caplog.set_level(logging.WARNING, "otel_sidecar.agent")
    async with running_agent(tmp_path, interval):
        pass
    found = [r for r in caplog.records if "SIGHUP" in r.getMessage()]
    if warned is None:
        assert found == []
        return
    (warning,) = found
    assert warning.name == "otel_sidecar.agent" and warning.levelno == logging.WARNING
    assert warning.getMessage() == (
        "SIGHUP is ignored (inherited, e.g. from nohup): kill -HUP will not reload the config file; restart the "
        "agent to change it, or start it without nohup (setsid, a service manager)" + warned
    )


async def test_a_rotated_certificate_is_taken_without_a_sighup(
    checking: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "otel_sidecar.agent")
    assert checking.expiry() == (NOW + 20 * DAY).timestamp()
    checking.secret.update(NOW + 80 * DAY)
    await eventually(lambda: checking.expiry() == (NOW + 80 * DAY).timestamp())
    await asyncio.sleep(0.3)  # six checks more: the files read are the files there, so no reload follows
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
        await asyncio.sleep(1.5)
        assert running.reloads("reloaded") == 0
        assert running.expiry() == (NOW + 20 * DAY).timestamp()
        running.agent.request_stop(signal.SIGHUP)
        await eventually(lambda: running.reloads("reloaded") == 1)
        assert running.expiry() == (NOW + 80 * DAY).timestamp()


async def test_a_reload_that_falls_back_takes_the_rotated_files_once(
    checking: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new pipelines fail to start (a port taken) and the running config starts again, reading the rotated
    files: those count as read, so no reload follows."""
    receiver_port_taken_once(monkeypatch)
    checking.secret.update(NOW + 80 * DAY)
    await eventually(lambda: checking.reloads("failed") == 1)
    assert checking.expiry() == (NOW + 80 * DAY).timestamp()
    await asyncio.sleep(0.3)
    assert (checking.reloads("failed"), checking.reloads("reloaded")) == (1, 0)


async def test_an_admin_certificate_rotated_during_a_reload_that_falls_back_is_taken_after_it(
    tmp_path: Path, handlers_restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin endpoint keeps what the reload read before its flush; a rotation during the flush is taken by the
    next check, not counted as read."""
    admin = MountedSecret(tmp_path / "admin")
    admin.update(NOW + 20 * DAY)
    shutdown = Graph.shutdown

    async def rotating_admin_during_the_flush(self: Graph, deadline: float) -> None:
        await shutdown(self, deadline)
        if admin.versions == 1:
            admin.update(NOW + 80 * DAY)

    def with_admin_tls(config: dict[str, Any]) -> None:
        config["service"]["telemetry"]["admin"]["tls"] = {"cert_file": str(admin.cert), "key_file": str(admin.key)}

    async with running_agent(tmp_path, "50ms", with_admin_tls) as running:
        monkeypatch.setattr(Graph, "shutdown", rotating_admin_during_the_flush)
        receiver_port_taken_once(monkeypatch)
        running.secret.update(NOW + 80 * DAY)
        await eventually(lambda: running.reloads("reloaded") == 1)
        assert running.reloads("failed") == 1
        assert expiry(running.agent, "service.telemetry.admin.tls", admin.cert) == (NOW + 80 * DAY).timestamp()


async def test_a_reload_turning_the_check_off_stops_it_at_once(tmp_path: Path, handlers_restored: None) -> None:
    async with running_agent(tmp_path, "200ms") as running:
        await running.reload_with_interval("0s")
        running.secret.update(NOW + 80 * DAY)
        await asyncio.sleep(0.6)  # three of the old intervals
        assert running.reloads("reloaded") == 1


async def test_a_reload_shortening_the_interval_is_followed_at_once(tmp_path: Path, handlers_restored: None) -> None:
    async with running_agent(tmp_path, "1h") as running:
        await running.reload_with_interval("50ms")
        running.secret.update(NOW + 80 * DAY)
        await eventually(lambda: running.reloads("reloaded") == 2)
        assert running.expiry() == (NOW + 80 * DAY).timestamp()


async def test_a_refused_sighup_does_not_hide_a_rotation_it_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A SIGHUP's config may be refused for a mistake of its own (here the admin endpoint given the receiver's
    certificate and key the wrong way round, refused when it is built), while the same files have meanwhile been
    rotated for the better: the check still takes them."""
    secret = MountedSecret(tmp_path / "secret")
    secret.update(NOW + 20 * DAY)
    config = base_config(tmp_path / "out")
    config["receivers"]["otlp"]["grpc"]["tls"] = {"cert_file": str(secret.cert), "key_file": str(secret.key)}
    agent = Agent(load(config), load_config=lambda: load(config))
    await agent.start()
    try:
        secret.update(NOW + 80 * DAY)
        swapped = {"cert_file": str(secret.key), "key_file": str(secret.cert)}
        config["service"]["telemetry"]["admin"]["tls"] = swapped
        assert not await agent.reload()
        [refused] = [r for r in caplog.records if r.getMessage().startswith("config reload refused")]
        assert "service.telemetry.admin.tls: TLS file(s) not usable" in str(refused.errors)  # type: ignore[attr-defined]
        assert agent._tls_read.changed_files() == sorted([str(secret.cert), str(secret.key)])
    finally:
        await agent.stop()


async def test_a_half_written_rotation_of_an_exporters_client_certificate_is_refused_and_the_agent_goes_on(
    tmp_path: Path, handlers_restored: None
) -> None:
    """Exporters read their TLS files when they are built, as servers do: checked only at their start, after the
    flush, a half-written rotation failed the new pipelines and then the previous config on the same files, and
    the agent exited."""
    client = MountedSecret(tmp_path / "client")
    client.update(NOW + 20 * DAY)

    def with_client_certificate(config: dict[str, Any]) -> None:
        tls = {"cert_file": str(client.cert), "key_file": str(client.key)}
        config["exporters"]["otlp/gateway"] = {"endpoint": f"localhost:{free_port()}", "tls": tls}
        config["service"]["pipelines"]["traces"]["exporters"].append("otlp/gateway")

    async with running_agent(tmp_path, "50ms", with_client_certificate) as running:
        client.update(NOW + 80 * DAY, key_of=1)  # the new certificate beside the old key
        await eventually(lambda: running.reloads("invalid") == 1)
        assert running.agent.graph.receivers_started
        client.update(NOW + 90 * DAY)
        await eventually(lambda: running.reloads("reloaded") == 1)
        assert expiry(running.agent, "exporters.otlp/gateway.tls", client.cert) == (NOW + 90 * DAY).timestamp()
