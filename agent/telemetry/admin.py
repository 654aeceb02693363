"""Admin HTTP endpoint: liveness, readiness and the agent's own metrics.

It outlives config reloads (probes are answered during one). With TLS, a reload makes it listen again with the
certificates read anew (``listen_again``), as the receivers do: its open connections and TLS sessions end with
their context. Handing new connections a new context on the same socket would not do: a resumed TLS session
skips the client-certificate check, the listening context keeps the sessions it made (Python cannot empty its
session cache), and a scraper's keep-alive connection would outlive a client CA rotated away.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from agent.config.schema import HostPort
from agent.listen import serve, stop_runner
from agent.server_tls import ServerTls
from agent.telemetry.logs import component_logger
from agent.telemetry.selfmetrics import SelfMetrics

_STOP_SECONDS = 2.0


class AdminServer:
    """``/health/live`` is 200 while the process serves; ``/health/ready`` is 200 only when ``not_ready()`` is None."""

    def __init__(
        self,
        endpoint: HostPort,
        metrics: SelfMetrics,
        not_ready: Callable[[], str | None],
        tls: ServerTls | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._metrics = metrics
        self._not_ready = not_ready
        self._runner: web.AppRunner | None = None
        self._ssl_context: ssl.SSLContext | None = tls.ssl_context if tls is not None else None

    async def listen_again(self, tls: ServerTls | None) -> None:
        """Close the endpoint (a probe or scrape in flight gets a moment) and listen again at once with ``tls``."""
        await self.shutdown()
        self._ssl_context = tls.ssl_context if tls is not None else None
        await self.start()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health/live", self._live)
        app.router.add_get("/health/ready", self._ready)
        app.router.add_get("/metrics", self._metrics_page)
        self._runner = await serve(app, self._endpoint, component_logger("admin"), ssl_context=self._ssl_context)

    async def shutdown(self) -> None:
        """Last in the shutdown, after the pipelines: a probe or scrape in flight gets a moment, no more."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await stop_runner(runner, _STOP_SECONDS)

    async def _live(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def _ready(self, _: web.Request) -> web.Response:
        reason = self._not_ready()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": reason}, status=503)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self._metrics.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response
