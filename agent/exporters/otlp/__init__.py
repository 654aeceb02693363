"""``otlp`` exporter: OTLP/gRPC or OTLP/HTTP (protobuf) to Jaeger or any OTLP receiver."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.component import Factory, Kind, Signal
from agent.exporters._helper.retention import check_retention_classes
from agent.exporters.otlp.config import OtlpExporterConfig
from agent.exporters.otlp.exporter import OtlpExporter


def _cross_check(config: OtlpExporterConfig, agent_config: Any) -> Iterable[tuple[str, str]]:
    return check_retention_classes(config.retention_classes, agent_config)


FACTORY: Factory[OtlpExporterConfig] = Factory(
    kind=Kind.EXPORTER,
    type="otlp",
    config_class=OtlpExporterConfig,
    signals=frozenset(Signal),
    create=lambda cfg, settings: OtlpExporter(cfg, settings),
    description="Sends OTLP over gRPC or HTTP/protobuf (Jaeger ingests it natively), with retries, a bounded or "
    "persistent queue and routing by retention class.",
    cross_check=_cross_check,
)

__all__ = ["FACTORY", "OtlpExporter", "OtlpExporterConfig"]
