"""The ``prometheus`` exporter: a scrape endpoint serving everything the metrics pipeline delivers.

Text format 0.0.4 (and 1.0.0 when asked) or OpenMetrics 1.0 (with exemplars), chosen from the scraper's
``Accept`` header by ``prometheus_client.exposition.choose_encoder``; gzip when accepted. Rendering runs in a
worker thread so a large scrape does not stall the receivers on the event loop.

Folding a batch into the state costs a few microseconds per data point, and the span-metrics connector
flushes thousands at once. So ``consume`` folds for at most ``FOLD_SLICE_SECONDS`` (a small batch: all of it)
and leaves the rest to a drain task that folds in slices of that length between the receivers' callbacks; a
scrape folds whatever is still queued before it renders. Batches are kept until folded (``retains_data``);
past ``MAX_PENDING_BATCHES`` queued, ``consume`` refuses (retryable) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiohttp import web
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from agent.component import Consumer, CreateSettings, Refused, Signal
from agent.exporters.prometheus.accumulator import Accumulator
from agent.exporters.prometheus.collector import OtlpCollector
from agent.exporters.prometheus.config import PrometheusExporterConfig
from agent.listen import serve, stop_runner
from agent.server_tls import HandshakeFailures, load_server_tls
from agent.telemetry.certificates import LoadedCertificate, presented_certificates
from agent.telemetry.logs import RateLimitedLog

# Most event-loop time one fold slice takes before the receivers run again.
FOLD_SLICE_SECONDS = 0.002
# Batches queued for folding before consume refuses: minutes of span-metrics flushes, or a burst of pushes.
MAX_PENDING_BATCHES = 1024
_SCRAPE_STOP_SECONDS = 2.0  # at shutdown, for a scrape in flight


def _state_settings(cfg: PrometheusExporterConfig) -> tuple[object, ...]:
    """The settings an accumulator's state depends on: what it holds, for how long, and under which names."""
    return (
        cfg.metric_expiration,
        cfg.max_series,
        cfg.add_metric_suffixes,
        cfg.without_scope_info,
        cfg.resource_to_telemetry_conversion,
        cfg.new_series_at_zero_for,
    )


class PrometheusExporter:
    def __init__(self, cfg: PrometheusExporterConfig, settings: CreateSettings) -> None:
        self._cfg = cfg
        self._settings = settings
        self._log = RateLimitedLog(settings.logger)
        cid = settings.component_id
        # Read and checked here, when the pipelines are built: bad files refuse the start, or a reload.
        self._tls = load_server_tls(cfg.tls, f"exporters.{cid}.tls")
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
            new_series_at_zero_for=float(cfg.new_series_at_zero_for),
            on_malformed=self._malformed,
        )
        self.registry = self._registry_of(self.accumulator)
        self.took_over = False  # whether it holds its predecessor's state whole (see take_over_from)
        self._runner: web.AppRunner | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._queued = asyncio.Event()
        self._renders: dict[str, asyncio.Future[bytes]] = {}  # by content type: the render under way

    def _registry_of(self, accumulator: Accumulator) -> CollectorRegistry:
        # Our own registry (never the global one): only what the pipeline delivered is exposed here.
        registry = CollectorRegistry(auto_describe=False)
        registry.register(OtlpCollector(accumulator, self._update_series_gauge))
        return registry

    def _malformed(self, exc: Exception) -> None:
        self._log.warning("malformed", "cannot expose a metrics batch", error=repr(exc))

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
        accumulator = self.accumulator
        if accumulator.pending >= MAX_PENDING_BATCHES:
            raise Refused("the prometheus exporter is still folding earlier batches")
        accumulator.consume(batch)
        if accumulator.fold_pending(FOLD_SLICE_SECONDS, wait=False) != "done":
            self._queued.set()  # the drain task folds the rest
        self._update_series_gauge()

    async def _drain(self) -> None:
        """Fold what consume left queued, one slice per event-loop turn."""
        while True:
            await self._queued.wait()
            self._queued.clear()
            while (outcome := self.accumulator.fold_pending(FOLD_SLICE_SECONDS, wait=False)) != "done":
                # "busy": a scrape thread holds the state and folds the queue itself; look again a bit later.
                await asyncio.sleep(0 if outcome == "more" else 0.005)
            self._update_series_gauge()

    # --- lifecycle ------------------------------------------------------------------------------------------

    def certificates(self) -> list[LoadedCertificate]:
        return presented_certificates(self._tls)

    def take_over_from(self, previous: PrometheusExporter) -> None:
        """At a reload, on the same endpoint and path. With the same settings of what is held and how it is named,
        the previous exporter's state goes on here whole: applications' series stay exposed until they push
        again, delta sums go on, and nothing counted since the last scrape is lost. Otherwise Prometheus has
        still scraped the previous exporter (see ``Accumulator.resume_after``)."""
        same_target = (previous._cfg.endpoint, previous._cfg.path) == (self._cfg.endpoint, self._cfg.path)
        if not same_target:
            return
        if _state_settings(previous._cfg) == _state_settings(self._cfg):
            self.accumulator = previous.accumulator
            self.accumulator.serve_for(self._drop, self._malformed)
            self.registry = self._registry_of(self.accumulator)
            self.took_over = True
        else:
            self.accumulator.resume_after(previous.accumulator)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(self._cfg.path, self._scrape)
        endpoint = self._cfg.endpoint
        server = f"exporters.{self._settings.component_id}"
        handshakes = HandshakeFailures(self._settings.metrics, self._settings.logger, server)
        ssl_context = handshakes.ssl_context(self._tls)
        self._runner = await serve(app, endpoint, self._settings.logger, ssl_context=ssl_context)
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(), name="prometheus-fold")
        if self.accumulator.pending:
            self._queued.set()  # consumed before start
        self._settings.logger.info(
            "Prometheus scrape endpoint listening",
            extra={"endpoint": str(endpoint), "path": self._cfg.path, "tls": ssl_context is not None},
        )

    async def shutdown(self, deadline: float) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
            self._drain_task = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            # Nothing to flush here: a scrape in flight gets a moment, the exporters stopping next keep the rest.
            await stop_runner(runner, min(_SCRAPE_STOP_SECONDS, deadline - time.monotonic()))

    async def _scrape(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await self._render(encoder, content_type)
        fmt = "openmetrics" if content_type.startswith("application/openmetrics-text") else "text"
        self._scrapes.labels(self._settings.component_id, fmt).inc()
        response = web.Response(body=body, headers={"Content-Type": content_type})
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            response.enable_compression(web.ContentCoding.gzip)
        return response

    def _render(self, encoder: Callable[[CollectorRegistry], bytes], content_type: str) -> asyncio.Future[bytes]:
        """The exposition in ``content_type``, rendered once for every scrape that asks while a render is under way.

        A render of many series takes seconds of CPU in a thread; each scrape rendering its own (an HA pair of
        Prometheus servers, a retry after a timeout) made them share the interpreter and all time out, and a
        render goes on after its scraper gave up. Shielded: a scraper leaving does not cancel the others' render.
        """
        render = self._renders.get(content_type)
        if render is None:
            render = self._renders[content_type] = asyncio.ensure_future(asyncio.to_thread(encoder, self.registry))
            render.add_done_callback(lambda done: self._render_done(content_type, done))
        return asyncio.shield(render)

    def _render_done(self, content_type: str, render: asyncio.Future[bytes]) -> None:
        if self._renders.get(content_type) is render:
            del self._renders[content_type]
        if not render.cancelled() and render.exception() is not None:
            self._log.warning("render", "cannot render the scrape", error=repr(render.exception()))


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (RFC 9110 12.5.3): named, or matched by ``*``, with a
    quality above zero; ``gzip;q=0`` refuses it. Codings are case-insensitive."""
    qualities: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0  # a quality that cannot be read is no consent to a coding
        if coding:
            qualities[coding.lower()] = quality
    return qualities.get("gzip", qualities.get("x-gzip", qualities.get("*", 0.0))) > 0
