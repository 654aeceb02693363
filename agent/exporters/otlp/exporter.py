"""``otlp`` exporter: OTLP over gRPC or HTTP/protobuf, the way to Jaeger (which ingests OTLP natively).

The exporter only pushes one request; the sending queue around it bounds, batches, retries and counts.
A partial-success answer is counted (``exporter_rejected_items_total``) and logged, never retried.
"""

from __future__ import annotations

from google.protobuf.message import Message

from agent.component import Consumer, CreateSettings, Signal
from agent.exporters._helper.consumer import SignalConsumer
from agent.exporters._helper.queue import SendingQueue
from agent.exporters._helper.retention import RetentionFilter
from agent.exporters._helper.tls import ClientTls, load_client_tls
from agent.exporters.otlp.config import OtlpExporterConfig
from agent.exporters.otlp.transport import Transport, make_transport
from agent.otlp.signals import SPECS
from agent.telemetry.certificates import LoadedCertificate, presented_certificates
from agent.telemetry.logs import RateLimitedLog


class OtlpExporter:
    def __init__(self, config: OtlpExporterConfig, settings: CreateSettings) -> None:
        self._config = config
        self._settings = settings
        # Read now, so that bad files refuse the start or the reload before anything stops.
        self._tls = client_tls(config, f"exporters.{settings.component_id}.tls")
        self._transport: Transport = make_transport(config, self._tls)
        self._filter = RetentionFilter(config.retention_classes, settings)
        self._queue = SendingQueue(
            settings,
            config.sending_queue,
            self._push,
            retry=config.retry_on_failure,
            timeout=float(config.timeout),
            batch=config.batch,
        )
        self._log = RateLimitedLog(settings.logger)

    def consumer_for(self, signal: Signal) -> Consumer:
        return SignalConsumer(self.accept, signal)

    def accept(self, signal: Signal, batch: Message) -> None:
        part, routed = self._filter.apply(signal, batch)
        if part is not None:
            self._queue.offer(signal, part)
        self._filter.count(signal, routed)

    async def start(self) -> None:
        await self._transport.start()
        await self._queue.start()

    def certificates(self) -> list[LoadedCertificate]:
        return presented_certificates(self._tls)

    def held_items(self) -> int:
        return self._queue.held_items()

    async def shutdown(self, deadline: float) -> None:
        await self._queue.shutdown(deadline)
        await self._transport.close()

    async def _push(self, signal: Signal, batch: Message) -> int:
        response = await self._transport.export(signal, batch, float(self._config.timeout))
        return partial_rejections(response, signal, self._log, self._settings.component_id, "the backend")


def partial_rejections(response: Message, signal: Signal, log: RateLimitedLog, exporter: str, server: str) -> int:
    """Items an export response's ``partial_success`` says ``server`` rejected; logged with the server's message,
    as the counter alone would not say why (the spec's "empty partial success" is a full one: Collector-based
    servers send it every time)."""
    if not response.HasField("partial_success"):
        return 0
    spec = SPECS[signal]
    partial = response.partial_success
    rejected = max(0, int(getattr(partial, spec.rejected_field)))  # an int64: a server may send less than 0
    if not rejected and not partial.error_message:
        return 0
    log.warning(
        f"partial:{server}:{signal}",
        f"{server} accepted the batch partly: {rejected} {spec.item_name} rejected"
        if rejected
        else f"{server} accepted the batch with a warning",
        exporter=exporter,
        error_message=partial.error_message,
    )
    return rejected


def client_tls(config: OtlpExporterConfig, path: str) -> ClientTls | None:
    """What connections to ``config``'s endpoint use over TLS, read and checked now (None over plain text)."""
    return load_client_tls(config.tls, path) if config.uses_tls else None
