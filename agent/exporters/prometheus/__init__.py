"""``prometheus`` exporter: exposes OTLP metrics (span metrics and orchestrators' own) for Prometheus to scrape."""

from __future__ import annotations

from agent.component import Factory, Kind, Signal
from agent.exporters.prometheus.config import PrometheusExporterConfig
from agent.exporters.prometheus.exporter import PrometheusExporter

FACTORY: Factory[PrometheusExporterConfig] = Factory(
    kind=Kind.EXPORTER,
    type="prometheus",
    config_class=PrometheusExporterConfig,
    signals=frozenset({Signal.METRICS}),
    create=lambda cfg, settings: PrometheusExporter(cfg, settings),
    retains_data=True,  # a large batch is folded in slices after consume() returns (see exporter.py)
    description="Serves OTLP metrics on a Prometheus scrape endpoint (text format and OpenMetrics with exemplars), "
    "following the OpenTelemetry→Prometheus compatibility rules.",
)
