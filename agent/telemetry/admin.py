"""Admin HTTP endpoint: liveness, readiness and the agent's own metrics.

It outlives config reloads (probes are answered during one). With TLS, a reload makes it listen again with the
certificates read anew (``listen_again``), on the same listening socket: its open connections and TLS sessions end
with their context, and the port never closes (a probe meanwhile is not refused, no other socket can take it).
Handing new connections a new context through the listening one's SNI callback would not do: a resumed TLS
session skips the client-certificate check, the listening context keeps the sessions it made (Python cannot
empty its session cache), and a scraper's keep-alive connection would outlive a client CA rotated away.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from agent.config.schema import HostPort
from agent.listen import listening_sockets, serve, stop_accepting, stop_runner
from agent.server_tls import HandshakeFailures, ServerTls
from agent.telemetry.certificates import LoadedCertificate, presented_certificates
from agent.telemetry.logs import component_logger
from agent.telemetry.selfmetrics import SelfMetrics

_STOP_SECONDS = 2.0
ADMIN_SERVER = "service.telemetry.admin"  # its config path, naming it in the agent's own metrics


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
        self._tls = tls
        self._handshakes = HandshakeFailures(metrics, component_logger("admin"), ADMIN_SERVER)
        # Bound once and held until shutdown; each runner listens on duplicates of them, so the port stays open
        # from one runner to the next.
        self._sockets: list[socket.socket] = []

    @property
    def serves_tls(self) -> bool:
        return self._tls is not None

    def certificates(self) -> list[LoadedCertificate]:
        return presented_certificates(self._tls)

    async def listen_again(self, tls: ServerTls | None) -> None:
        """Serve with ``tls`` from now on, on the same listening sockets: new connections (and those waiting to be
        accepted) get ``tls``, the open ones are closed (a probe or scrape in flight gets a moment). The port is
        never closed meanwhile: a probe is not refused, and no other socket can take it."""
        old, self._runner = self._runner, None
        self._tls = tls
        if old is not None:
            await stop_accepting(old)
        try:
            await self.start()
        finally:
            if old is not None:
                await stop_runner(old, _STOP_SECONDS)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health/live", self._live)
        app.router.add_get("/health/ready", self._ready)
        app.router.add_get("/metrics", self._metrics_page)
        first = not self._sockets
        if first:
            self._sockets = await listening_sockets(self._endpoint.host, self._endpoint.port)
        try:
            duplicates = [sock.dup() for sock in self._sockets]  # closed with the runner's sites
            ssl_context = self._handshakes.ssl_context(self._tls)
            self._runner = await serve(
                app, self._endpoint, component_logger("admin"), ssl_context=ssl_context, sockets=duplicates
            )
            if first:  # as the receivers say where they listen: health and the agent's own metrics are here
                port = self._sockets[0].getsockname()[1] if self._sockets else self._endpoint.port
                listening = {"endpoint": str(self._endpoint), "port": port, "tls": ssl_context is not None}
                paths = "/health/live, /health/ready, /metrics"
                component_logger("admin").info(f"admin endpoint listening ({paths})", extra=listening)
        except BaseException:
            if first:  # nothing is kept of a start that failed (a listen again's keeps the port)
                for sock in self._sockets:
                    sock.close()
                self._sockets = []
            raise

    async def shutdown(self) -> None:
        """Last in the shutdown, after the pipelines: a probe or scrape in flight gets a moment, no more."""
        # First: the port then closes as the runner's sites stop, not after its connections' grace (listening with
        # no one accepting meanwhile, a probe would hang, and be reset at the end).
        for sock in self._sockets:
            sock.close()
        self._sockets = []
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
