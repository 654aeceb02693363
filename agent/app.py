"""The running agent: pipeline graph, admin endpoint, signals and the shutdown sequence."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable

from agent.config.loader import AgentConfig
from agent.config.schema import ConfigInvalid
from agent.exporters._helper.abandoned_queues import abandoned_directories, directories_in_use, queue_roots
from agent.exporters._helper.queue_volumes import oversubscribed_queue_volumes
from agent.pipeline.graph import Graph
from agent.server_tls import ServerTls, load_server_tls
from agent.telemetry.admin import AdminServer
from agent.telemetry.certificates import CertificateValidity
from agent.telemetry.logs import component_logger, configure
from agent.telemetry.selfmetrics import SelfMetrics
from agent.tls_files import TlsFilesRead

EXIT_FORCED = 3  # a second SIGTERM or SIGINT during the flush: exited without it
_FAILED_START_FLUSH_SECONDS = 2.0  # new pipelines that failed to start hold nothing yet: a short stop
ADMIN_TLS_PATH = "service.telemetry.admin.tls"
ABANDONED_QUEUES_CHECK_SECONDS = 60.0


def handled_signals() -> list[signal.Signals]:
    """SIGTERM and SIGINT (stop), and SIGHUP (reload the config) unless the agent was started to ignore it
    (``nohup``): an inherited "ignore" is the operator's wish that a closing terminal change nothing."""
    signals = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signals.append(signal.SIGHUP)
    return signals


class Agent:
    """Lifecycle: ``start`` (exporters → processors → receivers, then ready), ``stop`` (not ready, receivers
    stop, everything buffered flushes downstream within ``service.shutdown_timeout``), and ``reload`` between
    them (SIGHUP: the pipelines of the config read again replace the running ones, as a Collector does).

    ``load_config`` reads the config again for a reload (the same file); without it, SIGHUP reloads ``config``.
    """

    def __init__(
        self,
        config: AgentConfig,
        metrics: SelfMetrics | None = None,
        load_config: Callable[[], AgentConfig] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or SelfMetrics()
        # Before anything reads them: a rotation in between makes one reload more, never one fewer.
        self._tls_read = TlsFilesRead(config)
        self.graph = Graph(config, self.metrics)
        admin = config.service.telemetry.admin
        self._admin_endpoint = admin.endpoint  # where it stays, across reloads
        self.admin = AdminServer(
            self._admin_endpoint, self.metrics, self.not_ready_reason, load_server_tls(admin.tls, ADMIN_TLS_PATH)
        )
        self._load_config = load_config or (lambda: self.config)
        self._log = component_logger("agent")
        self._stopping = False
        self._flushed = False
        self._reloading = False
        self._started = False
        self._stop_requested = asyncio.Event()
        self._reload_requested = False
        self._tls_reload_requested = False
        self._signalled = asyncio.Event()  # a stop or a reload was asked for
        self._reconfigured = asyncio.Event()  # a reload ended: the TLS files check reads its interval again
        self._ready_gauge = self.metrics.gauge("ready", "1 when the agent accepts data, 0 otherwise.")
        self._certificate_validity = CertificateValidity(self.metrics)
        self._abandoned_bytes = self.metrics.gauge(
            "persistent_queue_abandoned_bytes",
            "Queued data in persistent-queue directories no running exporter reads (its exporter renamed or removed "
            "by a reload, or switched to a memory queue): accepted, and not sent. Give the exporter its id and "
            "storage back to send it, or delete the directory.",
            ["directory"],
        )
        self._abandoned: set[str] = set()
        self._queue_roots: set[str] = set()  # every storage directory a config has named since the start
        self._abandoned_check = asyncio.Lock()  # one look at a time: a slow one must not undo a reload's
        self._reloads = self.metrics.counter(
            "config_reloads_total",
            "Config reloads (SIGHUP, or a change of the TLS files) by result: reloaded; invalid (the new config was "
            "refused, the running one kept); failed (the new config did not start, the previous one was started "
            "again).",
            ["result"],
        )

    def not_ready_reason(self) -> str | None:
        if self._stopping:
            return "shutting down"
        if self._reloading:
            return "reloading its config"
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
        self._publish_certificates()
        await self._report_abandoned_queues()
        self._log.info("agent started", extra={"pipelines": list(self.config.service.pipelines)})
        self._warn_of_config_concerns(self.config)

    def _warn_of_config_concerns(self, config: AgentConfig) -> None:
        unused = config.unused_components()
        if unused:
            self._log.warning(
                "components defined but used by no pipeline: they do nothing", extra={"components": unused}
            )
        for problem in oversubscribed_queue_volumes(config):
            self._log.warning("persistent queues may outgrow their volume", extra={"problem": problem})

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._ready_gauge.set(0)
        timeout = float(self.config.service.shutdown_timeout)
        self._log.info("shutting down: flushing buffered data", extra={"timeout_seconds": timeout})
        started = time.monotonic()
        await self.graph.shutdown(started + timeout)
        self._flushed = True  # nothing is held any more: a second signal while the admin endpoint closes is moot
        self._certificate_validity.stop_watching()
        await self.admin.shutdown()
        self._log.info("agent stopped", extra={"seconds": round(time.monotonic() - started, 3)})

    def request_stop(self, sig: signal.Signals) -> None:
        if sig is signal.SIGHUP:
            if self._flushed:
                self._log.info("SIGHUP received after the flush: ignored, the agent is exiting")
            elif self._stop_requested.is_set():
                # A terminal closing, or a config reloader retrying, must not abandon the flush under way.
                self._log.warning("SIGHUP received while shutting down: ignored, the flush goes on")
            else:
                self._log.info("SIGHUP received: reloading the config")
                self._reload_requested = True  # several during one reload make one more reload
                self._signalled.set()
        elif not self._stop_requested.is_set():
            self._log.info(f"{sig.name} received: shutting down")
            self._stop_requested.set()
            self._signalled.set()
        elif self._flushed:
            self._log.info(f"{sig.name} received after the flush: ignored, the agent is exiting")
        else:
            self._exit_without_flushing(sig)

    def _exit_without_flushing(self, sig: signal.Signals) -> None:
        try:
            held = self.graph.held_items()
        except Exception:  # the exit must not depend on the count
            self._log.exception("could not count the items held in memory")
            held = {"*": None}
        counted = sum(items for items in held.values() if items is not None)
        lost = f"{counted} items" if None not in held.values() else f"{counted} items and an unknown number more"
        self._log.error(
            f"second termination signal ({sig.name}): exiting without flushing; {lost} held in memory are lost "
            "(persistent queues keep theirs on disk)",
            extra={"lost_items": held},
        )
        os._exit(EXIT_FORCED)

    async def run(self) -> None:
        """Start, serve (reloading the config on SIGHUP) until SIGTERM or SIGINT, then stop."""
        loop = asyncio.get_running_loop()
        signals = handled_signals()
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop, sig)
        if signal.SIGHUP not in signals:
            self._warn_that_sighup_is_ignored()
        await self.start()
        checkers = [
            asyncio.create_task(self._check_tls_files()),
            asyncio.create_task(self._watch_abandoned_queues()),
        ]
        try:
            await self._serve_until_stopped()
        finally:
            for checker in checkers:
                checker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checker
        await self.stop()
        # Flushed: the rest is teardown. Closing the loop would give these signals their default action back, and
        # one arriving then would kill a process that has lost nothing (exit 143 reads as a crash).
        for sig in signals:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)

    def _warn_that_sighup_is_ignored(self) -> None:
        """A ``kill -HUP`` that does nothing, with nothing logged, is a trap (pass 141 fell in it)."""
        names_tls_files = bool(self._tls_read.pipelines or self._tls_read.admin)
        tls_checked = names_tls_files and float(self.config.service.tls_files_check_interval) > 0
        self._log.warning(
            "SIGHUP is ignored (inherited, e.g. from nohup): kill -HUP will not reload the config file; restart "
            "the agent to change it, or start it without nohup (setsid, a service manager)"
            + ("; a change of the TLS files it names still restarts its pipelines" if tls_checked else "")
        )

    async def _serve_until_stopped(self) -> None:
        while not self._stop_requested.is_set():
            await self._signalled.wait()
            self._signalled.clear()
            if self._stop_requested.is_set():
                break
            if self._reload_requested:  # reads the TLS files anew too
                self._reload_requested = self._tls_reload_requested = False
                await self.reload()
            elif self._tls_reload_requested:
                self._tls_reload_requested = False
                await self.reload(read_config=False)

    async def _check_tls_files(self) -> None:
        """Ask for a reload of the running config when a TLS file it names has changed since it was read
        (``service.tls_files_check_interval``); files a refused reload found are not tried again until they
        change."""
        while True:
            interval = float(self.config.service.tls_files_check_interval)
            try:
                async with asyncio.timeout(interval if interval > 0 else None):
                    await self._reconfigured.wait()
            except TimeoutError:
                pass
            else:  # a reload ended: its config may change the interval, or turn the check on or off
                self._reconfigured.clear()
                continue
            if self._reloading or self._signalled.is_set():
                continue
            # Off the event loop: a file on a stalled volume must not stop the agent serving.
            files = await asyncio.to_thread(self._tls_read.changed_files)
            if self._reloading or self._signalled.is_set() or self._reconfigured.is_set():
                continue  # a reload began or ended meanwhile: what it read is newer than this look
            if files:
                self._log.info("TLS files changed: reloading the running config to take them", extra={"files": files})
                self._tls_reload_requested = True
                self._signalled.set()

    async def reload(self, *, read_config: bool = True) -> bool:
        """Replace the running pipelines with those of the config read again (or, without ``read_config``, of the
        running config, its files read anew); whether it did.

        The new config is read and its pipelines built before anything stops: an invalid one changes nothing.
        Then, as at shutdown, the receivers stop (senders retry meanwhile) and everything buffered flushes within
        ``service.shutdown_timeout``, and the new pipelines start, unless a SIGTERM came meanwhile. If they cannot
        (a port taken), the previous config starts again. The admin endpoint stays where it is (changing it takes a
        restart); with TLS it listens again with its files read anew. The agent's own series of components the new
        config no longer has are removed, but for counters above zero.
        """
        read: TlsFilesRead | None = None
        try:
            config = self._load_config() if read_config else self.config
            read = TlsFilesRead(config)
            graph = Graph(config, self.metrics)
            # Read now, so that bad files refuse the reload as the receivers' do; used once the reload is done.
            admin_tls = load_server_tls(config.service.telemetry.admin.tls, ADMIN_TLS_PATH)
        except ConfigInvalid as exc:
            return self._reload_refused([str(e) for e in exc.errors], None if read_config else read)
        except Exception as exc:  # the file unreadable, or a component refusing its settings
            return self._reload_refused([f"{type(exc).__name__}: {exc}"], None if read_config else read)
        self._reloading = True
        self._ready_gauge.set(0)
        try:
            await self.graph.shutdown(time.monotonic() + float(self.config.service.shutdown_timeout))
            if self._stop_requested.is_set():
                # The flush is done and the agent stops next: starting pipelines only to stop them would open the
                # ports to senders for a moment, and a failure there would turn a clean exit into a failed start.
                self._log.info("stopping during the config reload: the new config is not started")
                return False
            graph.take_over(self.graph)
            reloaded = await self._start_instead(graph)
            if reloaded:
                self._apply_service_settings(config)
                self.config = config
                self._tls_read.pipelines = read.pipelines
            if config.service.telemetry.admin.tls == self.config.service.telemetry.admin.tls:
                # Reloaded, or the previous config started again with the same admin TLS files, read anew.
                await self._renew_admin_tls(admin_tls)
                self._tls_read.admin = read.admin
        finally:
            self._reloading = False
            self._reconfigured.set()
            self._ready_gauge.set(0 if self._stopping or not self.graph.receivers_started else 1)
        self.metrics.forget_components(self.graph.component_ids())
        self._publish_certificates()
        await self._report_abandoned_queues()
        self._reloads.labels("reloaded" if reloaded else "failed").inc()
        if reloaded:
            self._log.info("config reloaded", extra={"pipelines": list(config.service.pipelines)})
            self._warn_of_config_concerns(config)
        return reloaded

    async def _report_abandoned_queues(self) -> None:
        """Say which persistent-queue directories hold data no running exporter will send: a warning for each one
        found anew, and the gauge for all (gone when the directory is read again or deleted)."""
        async with self._abandoned_check:
            self._queue_roots |= queue_roots(self.config)
            in_use = directories_in_use(self.config, self.graph.component_ids()["exporter"])
            try:
                found = await asyncio.to_thread(abandoned_directories, set(self._queue_roots), in_use)
            except Exception:  # a bug here must not fail a start or a reload
                self._log.exception("looking for abandoned persistent-queue directories failed")
                return
            self._show_abandoned(found)

    def _show_abandoned(self, found: dict[str, int]) -> None:
        for gone in self._abandoned - found.keys():
            self._abandoned_bytes.remove(gone)
        new, self._abandoned = found.keys() - self._abandoned, set(found)
        for directory, size in found.items():
            self._abandoned_bytes.labels(directory).set(size)
        for directory in sorted(new):
            self._log.warning(
                "a persistent queue directory holds data no exporter of this config sends (its exporter was renamed "
                "or removed, or given a memory queue); give the exporter its id and storage back to send it, or "
                "delete the directory",
                extra={"directory": directory, "bytes": found[directory]},
            )

    async def _watch_abandoned_queues(self) -> None:
        """Look again every minute: a directory deleted as the warning advises, or another agent's that was only
        stopped, must not keep its alert firing until the next reload."""
        while True:
            await asyncio.sleep(ABANDONED_QUEUES_CHECK_SECONDS)
            if not self._reloading and not self._stopping:
                await self._report_abandoned_queues()

    def _publish_certificates(self) -> None:
        self._certificate_validity.publish([*self.graph.certificates(), *self.admin.certificates()])

    async def _start_instead(self, graph: Graph) -> bool:
        """Start ``graph`` in place of the stopped one, or else the running config again; whether ``graph`` runs."""
        try:
            await graph.start()
        except Exception as exc:
            # Components that began anew beside a predecessor the fallback goes back to must not flush into the
            # state they share with it (the Prometheus exporter's): their series would read as restarts.
            graph.forgo_fresh_state_beside(self.graph)
            await graph.shutdown(time.monotonic() + _FAILED_START_FLUSH_SECONDS)
            self._log.error(
                "config reload failed: the new pipelines did not start; the previous config starts again",
                extra={"error": str(exc)},
            )
        else:
            self.graph = graph
            return True
        previous: Graph | None = None
        try:
            # Built again (its components were shut down), which may fail now: TLS files moved away since.
            self._tls_read.pipelines = TlsFilesRead(self.config).pipelines
            stopped, previous = self.graph, Graph(self.config, self.metrics)
            self.graph = previous
            # From the graph that failed where it took the stopped one's state over (span metrics, the Prometheus
            # exporter's) and may have added to it: going back to the older state would show Prometheus a start
            # going back, and count again what it had seen. Elsewhere from the stopped one, which kept its own.
            previous.take_over(graph, older=stopped)
            await previous.start()
        except Exception as exc:
            # Nothing runs any more: release what did start, and exit as at a failed start.
            if previous is not None:
                await previous.shutdown(time.monotonic() + _FAILED_START_FLUSH_SECONDS)
            await self.admin.shutdown()
            raise RuntimeError(f"config reload: neither the new nor the previous config could start: {exc}") from exc
        return False

    def _reload_refused(self, errors: list[str], tls_attempt: TlsFilesRead | None) -> bool:
        """``tls_attempt``: the files a reload of the running config (for their change) found, not tried again.
        A SIGHUP's refusal marks nothing: its config may be refused for another reason than files that have
        meanwhile changed for the better."""
        if tls_attempt is not None:
            self._tls_read.refuse(tls_attempt)
        # Building the refused config's graph made the series of its components: those that do not run go again.
        self.metrics.forget_components(self.graph.component_ids())
        self._reloads.labels("invalid").inc()
        self._log.error("config reload refused: the running config stays", extra={"errors": errors})
        return False

    def _apply_service_settings(self, config: AgentConfig) -> None:
        """The log level and format of ``config``; a changed admin endpoint is said to need a restart."""
        logs, running = config.service.telemetry.logs, self.config.service.telemetry.logs
        if (logs.level, logs.format) != (running.level, running.format):
            configure(logs.level, logs.format)
        endpoint = config.service.telemetry.admin.endpoint
        if endpoint != self._admin_endpoint:
            self._log.warning(
                "service.telemetry.admin.endpoint: a change takes a restart; the admin endpoint stays where it is",
                extra={"listening": str(self._admin_endpoint), "configured": str(endpoint)},
            )

    async def _renew_admin_tls(self, loaded: ServerTls | None) -> None:
        """With TLS before or after the reload, the admin endpoint listens again with ``loaded``: rotated
        certificates taken, and the connections and TLS sessions made with the old ones ended."""
        if loaded is None and not self.admin.serves_tls:
            return
        try:
            await self.admin.listen_again(loaded)
        except OSError as exc:
            self._log.error(
                "the admin endpoint could not listen again: probes and the agent's own metrics go unanswered",
                extra={"endpoint": str(self._admin_endpoint), "error": str(exc)},
            )
            return
