"""``loki`` exporter: log records and span events to Loki's push API, labelled by retention class."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.component import Factory, Kind, Signal
from agent.exporters._helper.retention import check_retention_classes
from agent.exporters.loki.config import LokiExporterConfig
from agent.exporters.loki.exporter import LokiExporter


def _cross_check(config: LokiExporterConfig, agent_config: Any) -> Iterable[tuple[str, str]]:
    return check_retention_classes(config.retention_classes, agent_config)


FACTORY: Factory[LokiExporterConfig] = Factory(
    kind=Kind.EXPORTER,
    type="loki",
    config_class=LokiExporterConfig,
    signals=frozenset({Signal.LOGS, Signal.TRACES}),
    create=lambda cfg, settings: LokiExporter(cfg, settings),
    description="Pushes log records, and the span events of kept traces, to Loki (protobuf+snappy or JSON) with "
    "low-cardinality labels (service_name, level, retention) and everything else as structured metadata.",
    cross_check=_cross_check,
    delivers=frozenset({Signal.LOGS}),  # of spans, only their events go on, as log lines
)

__all__ = ["FACTORY", "LokiExporter", "LokiExporterConfig"]
