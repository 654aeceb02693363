"""The ``prometheus`` exporter: a scrape endpoint serving everything the metrics pipeline delivers.

Text format 0.0.4 (and 1.0.0 when asked) or OpenMetrics 1.0 (with exemplars), chosen from the scraper's
``Accept`` header by ``prometheus_client.exposition.choose_encoder``; gzip when accepted. Rendering runs in a
worker thread so a large scrape does not stall the receivers on the event loop.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from agent.component import Consumer, CreateSettings, Signal
from agent.exporters.prometheus.accumulator import Accumulator
from agent.exporters.prometheus.collector import OtlpCollector
from agent.exporters.prometheus.config import PrometheusExporterConfig
from agent.telemetry.logs import RateLimitedLog


class PrometheusExporter:
    def __init__(self, cfg: PrometheusExporterConfig, settings: CreateSettings) -> None:
        self._cfg = cfg
        self._settings = settings
        self._log = RateLimitedLog(settings.logger)
        cid = settings.component_id
        m = settings.metrics
        self._dropped = m.counter(
            "prometheus_dropped_points_total",
            "OTLP data points the Prometheus exporter could not expose, by reason.",
            ["exporter", "reason"],
        )
        self._series = m.gauge("prometheus_series", "Series held by the Prometheus exporter.", ["exporter"]).labels(cid)
        self._scrapes = m.counter(
            "prometheus_scrapes_total", "Scrapes served, by exposition format.", ["exporter", "format"]
        )
        self.accumulator = Accumulator(
            float(cfg.metric_expiration),
            cfg.max_series,
            self._drop,
            add_suffixes=cfg.add_metric_suffixes,
            scope_labels=not cfg.without_scope_info,
            resource_labels=cfg.resource_to_telemetry_conversion,
        )
        # Our own registry (never the global one): only what the pipeline delivered is exposed here.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(OtlpCollector(self.accumulator, self._update_series_gauge))
        self._runner: web.AppRunner | None = None

    def _drop(self, reason: str, points: int) -> None:
        self._dropped.labels(self._settings.component_id, reason).inc(points)

    def _update_series_gauge(self) -> None:
        self._series.set(self.accumulator.series_count)

    # --- pipeline -------------------------------------------------------------------------------------------

    def consumer_for(self, signal: Signal) -> Consumer:
        if signal is not Signal.METRICS:
            raise ValueError(f"the prometheus exporter takes metrics, not {signal}")
        return self

    def consume(self, batch: Message) -> None:
        try:
            self.accumulator.consume(batch)  # type: ignore[arg-type]
        except Exception as exc:  # a malformed batch must not take the pipeline down; count it and say why
            self._drop("malformed", 1)
            self._log.warning("malformed", "cannot expose a metrics batch", error=repr(exc))
        self._update_series_gauge()

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(self._cfg.path, self._scrape)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        endpoint = self._cfg.endpoint
        try:
            await web.TCPSite(runner, endpoint.host, endpoint.port, reuse_address=True).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._settings.logger.info(
            "Prometheus scrape endpoint listening", extra={"endpoint": str(endpoint), "path": self._cfg.path}
        )

    async def shutdown(self, deadline: float) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _scrape(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(encoder, self.registry)
        fmt = "openmetrics" if content_type.startswith("application/openmetrics-text") else "text"
        self._scrapes.labels(self._settings.component_id, fmt).inc()
        response = web.Response(body=body, headers={"Content-Type": content_type})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression(web.ContentCoding.gzip)
        return response
