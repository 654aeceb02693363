"""``loadbalancing`` exporter: routes spans and logs to a gateway tier by trace id."""

from __future__ import annotations

from agent.component import Factory, Kind, Signal
from agent.exporters.loadbalancing.config import LoadBalancingExporterConfig
from agent.exporters.loadbalancing.exporter import LoadBalancingExporter

FACTORY: Factory[LoadBalancingExporterConfig] = Factory(
    kind=Kind.EXPORTER,
    type="loadbalancing",
    config_class=LoadBalancingExporterConfig,
    signals=frozenset({Signal.TRACES, Signal.LOGS}),
    create=lambda cfg, settings: LoadBalancingExporter(cfg, settings),
    description="Sends every span and log of a trace to the same gateway, chosen by consistent hashing of the "
    "trace id over gateways from a static list or DNS; failed gateways are routed around.",
    # After a partial delivery the queued batch is cut down to what is left: it must be this exporter's own.
    mutates_data=True,
)

__all__ = ["FACTORY", "LoadBalancingExporter", "LoadBalancingExporterConfig"]
