"""Admin HTTP endpoint: liveness, readiness and the agent's own metrics.

It outlives config reloads (probes must be answered during one), so its TLS certificates are rotated without
closing its socket: the listening context hands each new connection, at its handshake, the latest context loaded
(``use_tls``). The client-certificate requirement is the listening context's, so turning it on or off takes a
restart; the CAs that verify client certificates are the latest context's.
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
        self._listening_context = tls.ssl_context if tls is not None else None
        self._latest_context = self._listening_context
        if self._listening_context is not None:
            self._listening_context.sni_callback = self._hand_latest_context

    def use_tls(self, tls: ServerTls) -> None:
        """New connections get ``tls`` (certificates read again at a reload); those open keep theirs."""
        if self._listening_context is None:
            raise ValueError("the admin endpoint listens without TLS: turning it on takes a restart")
        self._latest_context = tls.ssl_context

    def _hand_latest_context(self, connection: ssl.SSLObject, _server_name: str | None, _: ssl.SSLContext) -> None:
        # OpenSSL asks this of every ClientHello, with or without a server name in it.
        if self._latest_context is not None and connection.context is not self._latest_context:
            connection.context = self._latest_context

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health/live", self._live)
        app.router.add_get("/health/ready", self._ready)
        app.router.add_get("/metrics", self._metrics_page)
        self._runner = await serve(app, self._endpoint, component_logger("admin"), ssl_context=self._listening_context)

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
