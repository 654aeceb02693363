"""The running agent: pipeline graph, admin endpoint, signals and the shutdown sequence."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from agent.config.loader import AgentConfig
from agent.pipeline.graph import Graph
from agent.telemetry.admin import AdminServer
from agent.telemetry.logs import component_logger
from agent.telemetry.selfmetrics import SelfMetrics

EXIT_FORCED = 3  # a second SIGTERM or SIGINT during the flush: exited without it


def stop_signals() -> list[signal.Signals]:
    """SIGTERM, SIGINT, and SIGHUP unless the agent was started to ignore it (``nohup``).

    SIGHUP's default action (a closed terminal) would kill the process at once, losing everything accepted and
    buffered, so it stops the agent cleanly instead; an inherited "ignore" is the operator's wish to keep running.
    """
    signals = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signals.append(signal.SIGHUP)
    return signals


class Agent:
    """Lifecycle: ``start`` (exporters → processors → receivers, then ready), ``stop`` (not ready, receivers
    stop, everything buffered flushes downstream within ``service.shutdown_timeout``)."""

    def __init__(self, config: AgentConfig, metrics: SelfMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or SelfMetrics()
        self.graph = Graph(config, self.metrics)
        self.admin = AdminServer(config.service.telemetry.admin.endpoint, self.metrics, self.not_ready_reason)
        self._log = component_logger("agent")
        self._stopping = False
        self._started = False
        self._stop_requested = asyncio.Event()
        self._ready_gauge = self.metrics.gauge("ready", "1 when the agent accepts data, 0 otherwise.")

    def not_ready_reason(self) -> str | None:
        if self._stopping:
            return "shutting down"
        if not self._started or not self.graph.receivers_started:
            return "starting: receivers are not listening yet"
        return None

    async def start(self) -> None:
        try:
            await self.admin.start()
        except OSError as exc:
            endpoint = self.config.service.telemetry.admin.endpoint
            raise RuntimeError(f"service.telemetry.admin.endpoint: cannot listen on {endpoint}: {exc}") from exc
        try:
            await self.graph.start()
        except Exception:
            await self.graph.shutdown(time.monotonic() + 2.0)
            await self.admin.shutdown()
            raise
        self._started = True
        self._ready_gauge.set(1)
        self._log.info("agent started", extra={"pipelines": list(self.config.service.pipelines)})

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._ready_gauge.set(0)
        timeout = float(self.config.service.shutdown_timeout)
        self._log.info("shutting down: flushing buffered data", extra={"timeout_seconds": timeout})
        started = time.monotonic()
        await self.graph.shutdown(started + timeout)
        await self.admin.shutdown()
        self._log.info("agent stopped", extra={"seconds": round(time.monotonic() - started, 3)})

    def request_stop(self, sig: signal.Signals) -> None:
        if not self._stop_requested.is_set():
            # Named, SIGHUP above all: a Collector reloads its config on it, this agent stops.
            reason = " (this agent does not reload its config on SIGHUP: it stops)" if sig is signal.SIGHUP else ""
            self._log.info(f"{sig.name} received: shutting down{reason}")
            self._stop_requested.set()
        elif sig is signal.SIGHUP:
            # A terminal closing, or a config reloader retrying, must not abandon the flush under way.
            self._log.warning("SIGHUP received while shutting down: ignored, the flush goes on")
        else:
            self._log.error(
                f"second termination signal ({sig.name}): exiting without flushing; what is still buffered or "
                "queued in memory is lost"
            )
            os._exit(EXIT_FORCED)

    async def run(self) -> None:
        """Start, serve until SIGTERM, SIGINT or SIGHUP, then stop."""
        loop = asyncio.get_running_loop()
        signals = stop_signals()
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop, sig)
        await self.start()
        await self._stop_requested.wait()
        await self.stop()
        # Flushed: the rest is teardown. Closing the loop would give these signals their default action back, and
        # one arriving then would kill a process that has lost nothing (exit 143 reads as a crash).
        for sig in signals:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
