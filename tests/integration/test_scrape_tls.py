"""The ``prometheus`` exporter's scrape endpoint over mutual TLS, scraped by a real Prometheus (Debian package).

The agent serves its span metrics over HTTPS and asks for a client certificate signed by the CA it is given.
One Prometheus runs three jobs against that one endpoint: with the certificate the agent trusts, with a certificate
of a stranger, and in plain HTTP. Only the first may read the metrics; the other two must be down, and must not
have stored a single sample of the agent's metrics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.testing.workload import Workload
from tests.helpers import (
    AgentProcess,
    PrometheusServer,
    base_config,
    free_port,
    http_post,
    self_signed_certificate,
    wait_until,
)

pytestmark = pytest.mark.integration

TRACES = 40


@dataclass
class Scraped:
    agent: AgentProcess
    prometheus: PrometheusServer
    spans: int


def agent_config(workdir: Path, metrics_endpoint: str, server: tuple[Path, Path], client_ca: Path) -> dict[str, Any]:
    config = base_config(workdir / "out")
    config["connectors"] = {"spanmetrics": {"metrics_flush_interval": "500ms"}}
    cert, key = server
    config["exporters"]["prometheus"] = {
        "endpoint": metrics_endpoint,
        "new_series_at_zero_for": "0s",
        "tls": {"cert_file": str(cert), "key_file": str(key), "client_ca_file": str(client_ca)},
    }
    config["service"]["pipelines"] = {
        "traces": {"receivers": ["otlp"], "exporters": ["spanmetrics"]},
        "metrics": {"receivers": ["spanmetrics"], "exporters": ["prometheus"]},
    }
    return config


def scrape_job(name: str, target: str, tls: dict[str, str] | None) -> dict[str, Any]:
    job: dict[str, Any] = {"job_name": name, "static_configs": [{"targets": [target]}]}
    if tls is not None:
        job["scheme"] = "https"
        job["tls_config"] = {"server_name": "localhost", **tls}
    return job


def prometheus_config(target: str, server_cert: Path, client: tuple[Path, Path], stranger: tuple[Path, Path]) -> Any:
    def identity(pair: tuple[Path, Path]) -> dict[str, str]:
        return {"ca_file": str(server_cert), "cert_file": str(pair[0]), "key_file": str(pair[1])}

    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            scrape_job("trusted", target, identity(client)),
            scrape_job("stranger", target, identity(stranger)),
            scrape_job("plain", target, None),
        ],
    }


def send_workload(agent: AgentProcess) -> int:
    spans = 0
    for request, _ in Workload(seed=5).requests(TRACES):
        spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        status, body, _ = http_post(
            agent.http_url + "/v1/traces", request.SerializeToString(), {"Content-Type": "application/x-protobuf"}
        )
        assert status == 200, body
    return spans


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    workdir = tmp_path_factory.mktemp("scrape-tls")
    server = self_signed_certificate(workdir, "agent")
    client = self_signed_certificate(workdir, "prometheus")  # self-signed: its own CA, the one the agent trusts
    stranger = self_signed_certificate(workdir, "stranger")
    target = f"127.0.0.1:{free_port()}"
    agent = AgentProcess(agent_config(workdir, target, server, client[0]), workdir).start()
    prometheus = PrometheusServer(workdir / "prometheus", prometheus_config(target, server[0], client, stranger))
    try:
        prometheus.start()
        spans = send_workload(agent)
        wait_until(
            lambda: prometheus.scalar('sum(orchestrator_spans_total{job="trusted"})') == spans,
            timeout=60,
            interval=0.5,
            what=f"Prometheus to read all {spans} spans over mutual TLS",
        )
        yield Scraped(agent, prometheus, spans)
    finally:
        prometheus.stop()
        agent.kill()


def test_a_prometheus_with_the_trusted_client_certificate_reads_every_span_over_https(scraped: Scraped) -> None:
    assert scraped.prometheus.scalar('sum(orchestrator_spans_total{job="trusted"})') == scraped.spans
    assert scraped.prometheus.vector('up{job="trusted"}', "instance") != {}
    assert set(scraped.prometheus.vector('up{job="trusted"}').values()) == {1.0}


def test_a_stranger_certificate_and_plain_http_are_refused_and_read_nothing(scraped: Scraped) -> None:
    prometheus = scraped.prometheus
    # Two scrapes of each have been tried since the trusted job read everything.
    wait_until(
        lambda: all(t["lastScrape"] != "0001-01-01T00:00:00Z" for t in prometheus.api("targets")["activeTargets"]),
        timeout=10,
        what="every job to have tried a scrape",
    )
    targets = {t["labels"]["job"]: t for t in prometheus.api("targets")["activeTargets"]}
    for job in ("stranger", "plain"):
        assert targets[job]["health"] == "down", json.dumps(targets[job])
        assert prometheus.vector(f'up{{job="{job}"}}', "job") == {(job,): 0.0}
        assert prometheus.scalar(f'count({{job="{job}", __name__=~"orchestrator_.+"}})') == 0
    assert targets["trusted"]["health"] == "up", json.dumps(targets["trusted"])


def test_the_agent_says_its_scrape_endpoint_listens_with_tls(scraped: Scraped) -> None:
    lines = [json.loads(line) for line in scraped.agent.log().splitlines() if line.startswith("{")]
    listening = [line for line in lines if line.get("message") == "Prometheus scrape endpoint listening"]
    assert listening and all(line["tls"] is True for line in listening), listening
