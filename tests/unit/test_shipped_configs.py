"""The configs shipped in config/ are valid, and the sidecar/gateway pair splits the work without overlap."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.loader import load_path

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "config"
AGENT_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p.name != "pricing.yaml")


@pytest.mark.parametrize("path", AGENT_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    load_path(path, environ={})


def test_the_sidecar_derives_metrics_and_forwards_while_the_gateway_samples_without_counting_again() -> None:
    sidecar = load_path(CONFIG_DIR / "sidecar-gateway.yaml", environ={})
    gateway = load_path(CONFIG_DIR / "gateway.yaml", environ={})
    assert "spanmetrics" in sidecar.connectors and not gateway.connectors
    assert "tail_sampling" in gateway.processors and "tail_sampling" not in sidecar.processors
    assert sidecar.service.pipelines["traces"].exporters == ["loadbalancing"]
    assert sidecar.service.pipelines["logs"].exporters == ["loadbalancing"]
    assert gateway.receivers["otlp"].config.grpc.endpoint.host == "0.0.0.0"
    resolver = sidecar.exporters["loadbalancing"].config.resolver.dns
    assert resolver.port == gateway.receivers["otlp"].config.grpc.endpoint.port
