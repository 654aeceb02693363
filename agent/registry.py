"""Every component type the agent knows, in one explicit table (no import-time registration)."""

from __future__ import annotations

from typing import Any

from agent.component import Factory, Kind
from agent.connectors import spanmetrics as spanmetrics_connector
from agent.exporters import file as file_exporter
from agent.exporters import loadbalancing as loadbalancing_exporter
from agent.exporters import loki as loki_exporter
from agent.exporters import nop as nop_exporter
from agent.exporters import otlp as otlp_exporter
from agent.exporters import prometheus as prometheus_exporter
from agent.processors import memory_limiter, redaction, tail_sampling
from agent.receivers import otlp as otlp_receiver

FACTORIES: tuple[Factory[Any], ...] = (
    otlp_receiver.FACTORY,
    file_exporter.FACTORY,
    nop_exporter.FACTORY,
    otlp_exporter.FACTORY,
    loki_exporter.FACTORY,
    memory_limiter.FACTORY,
    tail_sampling.FACTORY,
    redaction.FACTORY,
    spanmetrics_connector.FACTORY,
    prometheus_exporter.FACTORY,
    loadbalancing_exporter.FACTORY,
)


def factories_for(kind: Kind) -> dict[str, Factory[Any]]:
    return {f.type: f for f in FACTORIES if f.kind is kind}
