"""``nop`` exporter: accepts and discards everything (the Collector's ``nopexporter``).

For measuring the receive path alone and for pipelines that exist only to feed a connector.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from agent.component import Consumer, CreateSettings, Factory, Kind, Signal


@dataclass(frozen=True)
class NopExporterConfig:
    pass


class NopExporter:
    def consumer_for(self, signal: Signal) -> Consumer:
        return self

    def consume(self, batch: Message) -> None:
        return None

    async def start(self) -> None:
        return None

    async def shutdown(self, deadline: float) -> None:
        return None


def _create(config: NopExporterConfig, settings: CreateSettings) -> NopExporter:
    return NopExporter()


FACTORY: Factory[NopExporterConfig] = Factory(
    kind=Kind.EXPORTER,
    type="nop",
    config_class=NopExporterConfig,
    signals=frozenset(Signal),
    create=_create,
    description="Discards everything; for benchmarks and connector-only pipelines.",
)
