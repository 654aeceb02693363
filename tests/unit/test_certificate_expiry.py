"""The expiry of the TLS certificates the agent presents: read from what each component loaded, exported as
``otel_sidecar_tls_certificate_expiry_timestamp_seconds`` (and ``..._not_before_...``) after the start and each
reload, and logged when a certificate is already out of date."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import server_tls
from agent.app import Agent
from agent.config.loader import AgentConfig, load_text
from agent.telemetry import certificates
from agent.telemetry.certificates import CertificateValidity, LoadedCertificate, loaded_certificate
from agent.telemetry.selfmetrics import SelfMetrics
from tests.helpers import base_config, dated_certificate

EXPIRY = "otel_sidecar_tls_certificate_expiry_timestamp_seconds"
NOT_BEFORE = "otel_sidecar_tls_certificate_not_before_timestamp_seconds"
UTC = datetime.UTC
NOW = datetime.datetime.now(UTC).replace(microsecond=0)
DAY = datetime.timedelta(days=1)


def expiry(agent_or_metrics: Agent | SelfMetrics, setting: str, file: Path | str, family: str = EXPIRY) -> float | None:
    metrics = agent_or_metrics.metrics if isinstance(agent_or_metrics, Agent) else agent_or_metrics
    return metrics.registry.get_sample_value(family, {"setting": setting, "file": str(file)})


def test_a_chain_is_valid_from_its_latest_start_to_its_earliest_end(tmp_path: Path) -> None:
    leaf, _ = dated_certificate(tmp_path, "leaf", NOW - 2 * DAY, NOW + 90 * DAY)
    intermediate, _ = dated_certificate(tmp_path, "intermediate", NOW - 1 * DAY, NOW + 30 * DAY)
    chain = leaf.read_bytes() + intermediate.read_bytes()
    loaded = loaded_certificate("receivers.otlp.grpc.tls", "chain.pem", chain)
    assert loaded == LoadedCertificate(
        "receivers.otlp.grpc.tls", "chain.pem", (NOW - DAY).timestamp(), (NOW + 30 * DAY).timestamp()
    )


def test_a_certificate_whose_dates_cannot_be_read_gives_no_series_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    damaged = b"-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    with caplog.at_level(logging.WARNING, "otel_sidecar.tls"):
        assert loaded_certificate("exporters.loki.tls", "client.pem", damaged) is None
    [record] = caplog.records
    assert record.getMessage().startswith("cannot read the dates of a TLS certificate")
    assert (record.setting, record.file) == ("exporters.loki.tls", "client.pem")  # type: ignore[attr-defined]


def test_publishing_replaces_the_series_and_says_which_certificates_are_out_of_date(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = SelfMetrics()
    published = CertificateValidity(metrics)
    valid = LoadedCertificate("receivers.otlp.grpc.tls", "a.pem", (NOW - DAY).timestamp(), (NOW + DAY).timestamp())
    expired = LoadedCertificate("exporters.otlp.tls", "b.pem", (NOW - 9 * DAY).timestamp(), (NOW - DAY).timestamp())
    early = LoadedCertificate("exporters.loki.tls", "c.pem", (NOW + DAY).timestamp(), (NOW + 9 * DAY).timestamp())
    with caplog.at_level(logging.ERROR, "otel_sidecar.tls"):
        published.publish([valid, expired, early])
    assert expiry(metrics, "receivers.otlp.grpc.tls", "a.pem") == (NOW + DAY).timestamp()
    assert expiry(metrics, "exporters.otlp.tls", "b.pem") == (NOW - DAY).timestamp()
    assert expiry(metrics, "exporters.loki.tls", "c.pem", NOT_BEFORE) == (NOW + DAY).timestamp()
    said = {record.setting: record.getMessage() for record in caplog.records}  # type: ignore[attr-defined]
    assert said == {
        "exporters.otlp.tls": "TLS certificate has expired: its peers refuse it",
        "exporters.loki.tls": "TLS certificate is not valid yet: its peers refuse it (is the clock right?)",
    }
    published.publish([valid])
    assert expiry(metrics, "exporters.otlp.tls", "b.pem") is None
    assert expiry(metrics, "exporters.loki.tls", "c.pem") is None
    assert expiry(metrics, "exporters.loki.tls", "c.pem", NOT_BEFORE) is None
    assert expiry(metrics, "receivers.otlp.grpc.tls", "a.pem") == (NOW + DAY).timestamp()


def load(config: dict[str, Any]) -> AgentConfig:
    return load_text(yaml.safe_dump(config))


def every_tls_config(tmp_path: Path, server: tuple[Path, Path], client: tuple[Path, Path]) -> dict[str, Any]:
    """Each component that presents a certificate, with TLS: receivers, scrape and admin endpoints present
    ``server``; the otlp, loki and loadbalancing exporters ``client``."""
    config = base_config(tmp_path / "out")
    served = {"cert_file": str(server[0]), "key_file": str(server[1])}
    presented = {"cert_file": str(client[0]), "key_file": str(client[1])}
    config["receivers"]["otlp"]["grpc"]["tls"] = served
    config["receivers"]["otlp"]["http"]["tls"] = served
    config["service"]["telemetry"]["admin"]["tls"] = served
    config["exporters"] = {
        "prometheus": {"endpoint": "127.0.0.1:0", "tls": served},
        "otlp/jaeger": {"endpoint": "localhost:4317", "tls": presented},
        "loki": {"endpoint": "https://localhost:3100/loki/api/v1/push", "tls": presented},
        "loadbalancing": {"resolver": {"static": {"hostnames": ["localhost:4317"]}}, "protocol": {"tls": presented}},
    }
    config["service"]["pipelines"] = {
        "traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger", "loadbalancing"]},
        "metrics": {"receivers": ["otlp"], "exporters": ["prometheus"]},
        "logs": {"receivers": ["otlp"], "exporters": ["loki"]},
    }
    return config


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Agent, dict[str, Any], Path]]:
    dated_certificate(tmp_path, "server", NOW - DAY, NOW + 20 * DAY)
    dated_certificate(tmp_path, "client", NOW - DAY, NOW + 40 * DAY)
    config = every_tls_config(
        tmp_path, (tmp_path / "server.pem", tmp_path / "server.key"), (tmp_path / "client.pem", tmp_path / "client.key")
    )
    agent = Agent(load(config), load_config=lambda: load(config))
    await agent.start()
    yield agent, config, tmp_path
    await agent.stop()


SERVED = (
    "receivers.otlp.grpc.tls",
    "receivers.otlp.http.tls",
    "exporters.prometheus.tls",
    "service.telemetry.admin.tls",
)
PRESENTED = ("exporters.otlp/jaeger.tls", "exporters.loki.tls", "exporters.loadbalancing.protocol.tls")


async def test_the_agent_exports_the_expiry_of_every_certificate_it_presents(
    running: tuple[Agent, dict[str, Any], Path],
) -> None:
    agent, _, certs = running
    for setting in SERVED:
        assert expiry(agent, setting, certs / "server.pem") == (NOW + 20 * DAY).timestamp(), setting
        assert expiry(agent, setting, certs / "server.pem", NOT_BEFORE) == (NOW - DAY).timestamp(), setting
    for setting in PRESENTED:
        assert expiry(agent, setting, certs / "client.pem") == (NOW + 40 * DAY).timestamp(), setting


async def test_the_expiry_is_of_the_certificate_loaded_until_a_reload_takes_the_rotated_one(
    running: tuple[Agent, dict[str, Any], Path],
) -> None:
    agent, _, certs = running
    dated_certificate(certs, "server", NOW - DAY, NOW + 80 * DAY)  # rotated in place, not reloaded yet
    agent._publish_certificates()  # a publication without a reload reads nothing anew
    assert expiry(agent, "receivers.otlp.grpc.tls", certs / "server.pem") == (NOW + 20 * DAY).timestamp()
    assert await agent.reload()
    for setting in SERVED:
        assert expiry(agent, setting, certs / "server.pem") == (NOW + 80 * DAY).timestamp(), setting


async def test_a_refused_reload_keeps_the_expiry_and_a_reload_without_tls_removes_it(
    running: tuple[Agent, dict[str, Any], Path],
) -> None:
    agent, config, certs = running
    dated_certificate(certs, "next", NOW - DAY, NOW + 80 * DAY)
    (certs / "next.pem").replace(certs / "server.pem")  # the new certificate in place, its key not yet
    assert not await agent.reload()
    assert expiry(agent, "receivers.otlp.http.tls", certs / "server.pem") == (NOW + 20 * DAY).timestamp()
    (certs / "next.key").replace(certs / "server.key")
    del config["receivers"]["otlp"]["http"]["tls"]
    config["exporters"]["otlp/jaeger"]["tls"] = {"insecure": True}
    assert await agent.reload()
    assert expiry(agent, "receivers.otlp.http.tls", certs / "server.pem") is None
    assert expiry(agent, "exporters.otlp/jaeger.tls", certs / "client.pem") is None
    assert expiry(agent, "receivers.otlp.grpc.tls", certs / "server.pem") == (NOW + 80 * DAY).timestamp()


async def test_an_expired_certificate_is_said_at_the_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = dated_certificate(tmp_path, "server", NOW - 30 * DAY, NOW - DAY)
    config = base_config(tmp_path / "out")
    config["receivers"]["otlp"]["grpc"]["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    agent = Agent(load(config))
    with caplog.at_level(logging.ERROR, "otel_sidecar.tls"):
        await agent.start()
    try:
        [record] = caplog.records
        assert record.getMessage() == "TLS certificate has expired: its peers refuse it"
        assert record.setting == "receivers.otlp.grpc.tls"  # type: ignore[attr-defined]
        assert record.not_after == (NOW - DAY).strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[attr-defined]
    finally:
        await agent.stop()


async def test_a_certificate_in_use_is_logged_when_it_expires_unless_published_away_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    published = CertificateValidity(SelfMetrics())
    soon = time.time() + 0.2
    expiring = LoadedCertificate("receivers.otlp.grpc.tls", "a.pem", soon - 86400, soon)
    replaced = LoadedCertificate("exporters.loki.tls", "b.pem", soon - 86400, soon)
    with caplog.at_level(logging.ERROR, "otel_sidecar.tls"):
        published.publish([replaced])
        published.publish([expiring])  # a reload: the loki exporter's certificate no longer runs
        assert caplog.records == []
        await asyncio.sleep(0.4)
    said = [(r.getMessage(), r.setting) for r in caplog.records]  # type: ignore[attr-defined]
    assert said == [("TLS certificate has expired: its peers refuse it", "receivers.otlp.grpc.tls")]
    published.stop_watching()


async def test_the_expiry_log_follows_the_wall_clock_not_the_loops(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Published while the wall clock was 0.8 s ahead (then stepped back, as NTP does): the timer fires early,
    looks at the clock again and waits for the rest instead of logging an expiry that has not come."""
    published = CertificateValidity(SelfMetrics())
    real = time.time()
    cert = LoadedCertificate("receivers.otlp.grpc.tls", "a.pem", real - 86400, real + 1.0)
    with caplog.at_level(logging.ERROR, "otel_sidecar.tls"):
        monkeypatch.setattr(time, "time", lambda: real + 0.8)
        published.publish([cert])
        monkeypatch.undo()
        await asyncio.sleep(0.5)
        assert caplog.records == []
        await asyncio.sleep(0.8)
    assert [r.getMessage() for r in caplog.records] == ["TLS certificate has expired: its peers refuse it"]
    published.stop_watching()


async def test_an_expiry_far_ahead_is_looked_at_again_so_a_host_suspended_past_it_still_says_so(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's clock stops while a host is suspended: a timer set for an expiry a month ahead would fire a month
    after it. The timer looks at the wall clock again at least hourly (here: every 0.2 s)."""
    monkeypatch.setattr(certificates, "_LOOK_AGAIN_SECONDS", 0.2)
    published = CertificateValidity(SelfMetrics())
    real = time.time()
    cert = LoadedCertificate("receivers.otlp.grpc.tls", "a.pem", real - 86400, real + 30 * 86400)
    with caplog.at_level(logging.ERROR, "otel_sidecar.tls"):
        published.publish([cert])
        monkeypatch.setattr(time, "time", lambda: real + 31 * 86400)  # woken a month later
        await asyncio.sleep(0.6)
    assert [r.getMessage() for r in caplog.records] == ["TLS certificate has expired: its peers refuse it"]
    published.stop_watching()


async def test_a_certificate_whose_dates_cannot_be_read_leaves_the_agent_running_without_its_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What OpenSSL accepts and the parser of dates does not: no series for it, and nothing else changes.
    monkeypatch.setattr(server_tls, "loaded_certificate", lambda setting, file, pem: None)
    cert, key = dated_certificate(tmp_path, "server", NOW - DAY, NOW + 20 * DAY)
    config = base_config(tmp_path / "out")
    config["receivers"]["otlp"]["grpc"]["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    agent = Agent(load(config))
    await agent.start()
    try:
        assert expiry(agent, "receivers.otlp.grpc.tls", cert) is None
    finally:
        await agent.stop()


async def test_a_stopped_agent_logs_no_expiry_after_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Ends 3 s from now: well after the agent's start and stop even on a loaded machine (with 1 s, a slow start
    # let it expire while the agent ran, which is logged rightly, and failed the test).
    ends = datetime.datetime.now(UTC) + datetime.timedelta(seconds=3)
    cert, key = dated_certificate(tmp_path, "server", NOW - DAY, ends)
    config = base_config(tmp_path / "out")
    config["receivers"]["otlp"]["grpc"]["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    agent = Agent(load(config))
    await agent.start()
    await agent.stop()
    assert datetime.datetime.now(UTC) < ends  # the timer was still waiting when the agent stopped
    with caplog.at_level(logging.ERROR, "otel_sidecar.tls"):
        # Past the certificate's end, in the loop that ran the agent.
        await asyncio.sleep((ends - datetime.datetime.now(UTC)).total_seconds() + 0.5)
    assert caplog.records == []
