"""``loadbalancing`` exporter: every span and log of a trace to the same gateway, chosen by the trace id.

One sending queue holds whole batches; each push splits its batch over the current ring and sends the parts to
their gateways concurrently. A gateway that has failed (unreachable, timing out) for ``eject_after`` (0s: at
its first failure) leaves the ring for ``backend_cooldown``: its part is split again over the remaining gateways
at once (every sidecar sees a dead gateway, so they agree on the new owner). Until then its part waits in the
queue, so that a stall only one sidecar saw does not move that sidecar's traces alone. A gateway that is alive
but full (it answers with a retry delay) keeps its part too, up to ``max_throttled``: back-pressure must not split
a trace between gateways. Neither waits when no retry would come back to it (retries off, or the agent shutting
down): its part goes to the next gateway at once rather than be dropped.
Parts already delivered are removed from the batch before the queue retries what is left, so a retry never
resends them. Membership comes from a resolver; a gateway that disappears simply stops being an owner, and
batches still queued go to the new owners.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.message import Message

from agent.component import Consumer, CreateSettings, Signal
from agent.exporters._helper.batcher import merge
from agent.exporters._helper.consumer import SignalConsumer
from agent.exporters._helper.queue import DUPLICATES_DOC, SendingQueue
from agent.exporters._helper.retry import (
    PermanentExportError,
    RetryableError,
    SendProgress,
    attempt_part,
    report_cut_short,
)
from agent.exporters.loadbalancing.config import LoadBalancingExporterConfig
from agent.exporters.loadbalancing.resolver import DnsResolver, Resolver, StaticResolver
from agent.exporters.loadbalancing.ring import HashRing
from agent.exporters.loadbalancing.split import split_logs, split_traces
from agent.exporters.otlp.exporter import client_tls, partial_rejections
from agent.exporters.otlp.transport import Transport, make_transport
from agent.otlp.signals import SPECS
from agent.telemetry.certificates import LoadedCertificate, presented_certificates
from agent.telemetry.logs import RateLimitedLog

GATEWAY_REMOVED = "gateway_removed"

# Each splitter takes and returns its own signal's requests; keyed by signal, the table can only say Message.
_SPLITTERS: dict[Signal, Callable[[Any, Any], dict[str, Message]]] = {
    Signal.TRACES: split_traces,
    Signal.LOGS: split_logs,
}


class LoadBalancingExporter:
    def __init__(self, config: LoadBalancingExporterConfig, settings: CreateSettings) -> None:
        self._config = config
        self._settings = settings
        self._log = RateLimitedLog(settings.logger)
        self._transports: dict[str, Transport] = {}
        self._resolved_once = False  # the first membership is no change: after a reload, all would read as added
        self._ejected_until: dict[str, float] = {}
        # (gateway, signal) answering "busy" since when, until the gateway takes data of that signal: kept across
        # an ejection, so that one still busy when it returns leaves again at its first busy answer instead of
        # holding the queue again. Per signal: a gateway's queues refuse one signal and take the other, and logs
        # it takes must not end the busy spell of its traces.
        self._throttled_since: dict[tuple[str, Signal], float] = {}
        # Gateways failing (no retry delay) since when, until one of their exports succeeds: see eject_after.
        self._failing_since: dict[str, float] = {}
        # Gateways whose cooldown is over and whose first part since is on its way: until it is answered, the
        # other batches keep going round it. A hung gateway would otherwise hold every consumer's part for
        # protocol.timeout at the end of each cooldown, stalling the whole queue.
        self._on_trial: set[str] = set()
        # When each gateway last left the ring: a part sent to it before then failing later tells nothing new.
        self._ejected_at: dict[str, float] = {}
        self._ring = HashRing([])
        self._ring_key: tuple[str, ...] = ()
        self._queue = SendingQueue(settings, config.sending_queue, self._push, retry=config.retry_on_failure)
        self._resolver = self._make_resolver()
        self._init_metrics()
        # Read now, so that bad files refuse the start or the reload before anything stops; every gateway's
        # connection uses them, those resolved later too.
        gateway = config.protocol.for_backend("gateway:4317")
        self._tls = client_tls(gateway, f"exporters.{settings.component_id}.protocol.tls")

    def consumer_for(self, signal: Signal) -> Consumer:
        return SignalConsumer(self._queue.offer, signal)

    async def start(self) -> None:
        self.expose_gauges()
        await self._resolver.start(self._set_backends)
        await self._queue.start()

    def certificates(self) -> list[LoadedCertificate]:
        return presented_certificates(self._tls)

    def held_items(self) -> int:
        return self._queue.held_items()

    async def shutdown(self, deadline: float) -> None:
        await self._queue.shutdown(deadline)
        await self._resolver.shutdown()
        await asyncio.gather(*(t.close() for t in self._transports.values()))
        self._transports.clear()

    def expose_gauges(self) -> None:
        """At start, not in __init__: a config reload builds its components before it knows it can use them, and a
        refused one must leave the running exporter's gauges alone (the healthy count would read its state)."""
        cid = self._settings.component_id
        self._backends.labels(cid).set(len(self._transports))
        self._healthy.labels(cid).set_function(self._count_healthy)

    # --- membership -------------------------------------------------------------------------------------------

    def _make_resolver(self) -> Resolver:
        resolver = self._config.resolver
        if resolver.static is not None:
            return StaticResolver(resolver.static.hostnames)
        assert resolver.dns is not None
        dns = resolver.dns
        return DnsResolver(
            dns.hostname,
            dns.port,
            float(dns.interval),
            float(dns.timeout),
            dns.nameservers,
            self._log,
            lambda outcome: self._resolutions.labels(self._settings.component_id, outcome).inc(),
        )

    async def _set_backends(self, endpoints: list[str]) -> None:
        added = [e for e in endpoints if e not in self._transports]
        removed = [e for e in self._transports if e not in endpoints]
        for endpoint in added:
            transport = self._make_transport(endpoint)
            await transport.start()
            self._transports[endpoint] = transport
        for endpoint in removed:
            transport = self._transports.pop(endpoint)
            self._ejected_until.pop(endpoint, None)
            for signal in _SPLITTERS:
                self._throttled_since.pop((endpoint, signal), None)
            self._failing_since.pop(endpoint, None)  # should it come back, its failures start afresh
            self._on_trial.discard(endpoint)
            self._ejected_at.pop(endpoint, None)
            self._forget_series_of(endpoint)
            asyncio.get_running_loop().call_later(float(self._config.protocol.timeout) + 1, _close_later, transport)
        self._backends.labels(self._settings.component_id).set(len(self._transports))
        if not self._resolved_once:
            self._resolved_once = True
            self._settings.logger.info(
                "gateways resolved", extra={"exporter": self._settings.component_id, "gateways": endpoints}
            )
            return
        self._settings.logger.info(
            "gateway membership changed",
            extra={"exporter": self._settings.component_id, "gateways": endpoints, "added": added, "removed": removed},
        )

    def _forget_series_of(self, endpoint: str) -> None:
        """A gateway gone from the resolver takes its own series along: pod IPs change at every rollout, and
        the series of every address ever seen would otherwise stay for the process's life."""
        cid = self._settings.component_id
        for signal in Signal:
            with contextlib.suppress(KeyError):
                self._routed.remove(cid, endpoint, signal.value)
        with contextlib.suppress(KeyError):
            self._ejections.remove(cid, endpoint)

    def _make_transport(self, endpoint: str) -> Transport:
        return make_transport(self._config.protocol.for_backend(endpoint), self._tls)

    def _healthy_ring(self, trials: set[str]) -> HashRing:
        """The gateways to split a batch over. A gateway whose cooldown is over comes back for one batch first
        (added to ``trials``, which the caller must settle); while that batch's part is out, the others avoid it.
        One trial per batch, and none when no other gateway is in: then they all come back at once, as with no
        trials, rather than leave a batch no gateway at all (with no retry to come, it would be dropped)."""
        now = time.monotonic()
        healthy, cooled = [], []
        for endpoint in self._transports:
            until = self._ejected_until.get(endpoint)
            if until is None:
                healthy.append(endpoint)
            elif until <= now:
                cooled.append(endpoint)
        if not healthy:
            healthy = cooled
        else:
            trial = next((e for e in sorted(cooled) if e not in self._on_trial), None)
            if trial is not None:
                self._on_trial.add(trial)
                trials.add(trial)
                healthy.append(trial)
        healthy.sort()
        return self._ring_of(tuple(healthy))

    def _ring_of(self, healthy: tuple[str, ...]) -> HashRing:
        if healthy != self._ring_key:
            self._ring, self._ring_key = HashRing(healthy), healthy
        return self._ring

    def _count_healthy(self) -> int:
        """Gateways in the ring now, at scrape time: membership changes and cooldowns that end while no data
        flows must show too (the ring itself is only rebuilt when a batch is pushed). Read from the scrape
        thread: a snapshot of each dict, never an iteration over a dict the event loop may change."""
        now = time.monotonic()
        ejected_until = dict(self._ejected_until)
        return sum(1 for e in tuple(self._transports) if ejected_until.get(e, 0.0) <= now)

    def _throttled_too_long(self, gateway: str, signal: Signal) -> bool:
        limit = float(self._config.max_throttled)
        since = self._throttled_since.setdefault((gateway, signal), time.monotonic())
        return limit > 0 and time.monotonic() - since >= limit

    def _throttle_left(self, gateway: str, signal: Signal) -> float:
        """How long ``gateway`` may still be waited for before it is taken out as throttled too long."""
        limit = float(self._config.max_throttled)
        if limit <= 0:
            return math.inf
        since = self._throttled_since.get((gateway, signal), time.monotonic())
        return max(limit - (time.monotonic() - since), 0.0)

    def _retry_to_come(self) -> bool:
        """Whether a part left waiting for its gateway is sent again: not with retries off, nor once the agent is
        shutting down (the retry may come after the deadline, or never with a persistent queue)."""
        return self._config.retry_on_failure.enabled and not self._queue.closing

    def _failing_long_enough(self, gateway: str) -> bool:
        """Whether a gateway failing now leaves the ring: after ``eject_after``, or at once when no retry would
        come back to it (retries off, or the agent shutting down)."""
        if not self._retry_to_come():
            return True
        since = self._failing_since.setdefault(gateway, time.monotonic())
        return time.monotonic() - since >= float(self._config.eject_after)

    def _eject(self, endpoint: str, error: Exception, sent_at: float) -> None:
        now = time.monotonic()
        if self._ejected_until.get(endpoint, 0.0) > now or sent_at <= self._ejected_at.get(endpoint, -math.inf):
            # Already out, or a part sent before it left: the other parts out at it then fail too (a hung
            # gateway: every consumer's part, one timeout later, maybe after the cooldown). One ejection, and its
            # cooldown runs from the first failure; a later success is not undone by an older failure.
            return
        self._ejected_at[endpoint] = now
        self._ejected_until[endpoint] = now + float(self._config.backend_cooldown)
        self._ejections.labels(self._settings.component_id, endpoint).inc()
        if getattr(error, "retry_after", None) is not None:
            why = "is busy"  # alive, asking for a delay: past max_throttled, or with no retry to come
            if self._retry_to_come():
                why = f"is still busy after max_throttled ({self._config.max_throttled.render()})"
        else:
            why = "failed"
        # Not rate-limited: at most one per gateway per backend_cooldown, and each is a change of the ring an
        # operator reads the log for (a second one, after the trial that followed the cooldown, was suppressed).
        self._settings.logger.warning(
            f"gateway {endpoint} {why} ({error}); its traces go to the next gateway for "
            f"{self._config.backend_cooldown.render()}",
            extra={"exporter": self._settings.component_id},
        )

    # --- sending ----------------------------------------------------------------------------------------------

    async def _push(self, signal: Signal, batch: Message) -> int:
        """Deliver every part of ``batch`` to its gateway, re-routing around dead ones; return items rejected.

        A gateway that answers with a retry delay (RetryInfo / Retry-After) is alive but full: its part waits for
        it, so that a trace is never split between gateways by back-pressure (up to ``max_throttled``, and only
        while a retry is to come). A gateway that cannot be reached leaves the ring (once it has failed for
        ``eject_after``, or at once with no retry to come) and its part goes to the next owner. What is still
        undelivered stays in ``batch`` (what was delivered is removed) and RetryableError is raised so the queue
        retries it with backoff.
        """
        push = _Push(signal)
        pending: Message | None = batch
        for _round in range(len(self._transports) + 1):
            trials: set[str] = set()
            ring = self._healthy_ring(trials)
            if pending is None or not len(ring):
                self._on_trial -= trials
                break
            self._count_rerouted(push)  # counted when they do go to another gateway, not when there is none
            parts = _SPLITTERS[signal](pending, ring.owner)
            self._on_trial -= trials - parts.keys()  # no part for it in this batch: the next batch tries it
            sent_at = time.monotonic()
            progress = [SendProgress() for _ in parts]
            sends = [
                asyncio.ensure_future(self._send(signal, gateway, part, part_progress))
                for (gateway, part), part_progress in zip(parts.items(), progress, strict=True)
            ]
            try:
                outcomes = await asyncio.gather(*sends)
            except asyncio.CancelledError:
                self._on_trial -= trials
                # The shutdown deadline: what the gateways did take is delivered, not lost (the queue counts what
                # is left in the batch); the rest stays in it.
                report_cut_short(self._keep_only_undelivered(batch, parts, sends, progress, push.waiting, signal))
                raise
            rerouted: list[Message] = []
            for (gateway, part), outcome in zip(parts.items(), outcomes, strict=True):
                if not self._settle(push, gateway, part, outcome, gateway in trials, sent_at):
                    rerouted.append(part)
            pending = merge(rerouted) if rerouted else None
        undelivered = [*push.waiting, *([pending] if pending is not None else [])]
        if not undelivered:
            return push.rejected
        _leave_only(batch, undelivered)  # what was delivered is not sent again by the queue's retry
        raise push.retry_error()

    def _settle(
        self, push: _Push, gateway: str, part: Message, outcome: int | RetryableError, trial: bool, sent_at: float
    ) -> bool:
        """Account for one part's outcome: True once it is settled (taken, or left waiting for its gateway), False
        when it must go to another gateway (its own was ejected, or is gone)."""
        if trial:
            self._on_trial.discard(gateway)  # answered: the next batch may try it, if it is still out
        if isinstance(outcome, RetryableError) and outcome.reason == GATEWAY_REMOVED:
            push.last_error = outcome
            push.reroute(part, outcome)  # the resolver dropped it while its part was out: its state went with it
            return False
        if not isinstance(outcome, RetryableError):
            self._take_back_after_cooldown(gateway)
            self._throttled_since.pop((gateway, push.signal), None)
            self._failing_since.pop(gateway, None)
            push.rejected += outcome
            return True
        push.last_error = outcome
        if self._waits_for_its_gateway(gateway, push.signal, outcome):
            if outcome.retry_after is not None:
                # Busy, but there: back in the ring, so that its traces wait for it rather than go round it.
                self._take_back_after_cooldown(gateway)
            limit = self._throttle_left(gateway, push.signal) if outcome.retry_after is not None else None
            push.wait(part, outcome, limit)
            return True
        self._failing_since.pop(gateway, None)
        self._eject(gateway, outcome, sent_at)
        push.reroute(part, outcome)
        return False

    def _take_back_after_cooldown(self, gateway: str) -> None:
        until = self._ejected_until.get(gateway)
        if until is not None and until <= time.monotonic():
            # Said, as its ejection was: else only the healthy_backends gauge shows it back in the ring. An
            # answer within the cooldown (a send begun before the ejection) does not end the cooldown.
            del self._ejected_until[gateway]
            self._settings.logger.info(
                f"gateway {gateway} answers again; its traces go to it", extra={"exporter": self._settings.component_id}
            )

    def _waits_for_its_gateway(self, gateway: str, signal: Signal, error: RetryableError) -> bool:
        """Whether a part ``gateway`` did not take waits for the same gateway (the queue's retry) rather than go to
        the next one. A busy gateway (it asked for a delay) is waited for up to ``max_throttled``, but not with no
        retry to come: its part would be lost while others could take it, so it leaves like a failing one (and is
        ejected, so later batches avoid it too). A failing one is waited for until it has failed ``eject_after``."""
        if error.retry_after is not None:
            return self._retry_to_come() and not self._throttled_too_long(gateway, signal)
        return not self._failing_long_enough(gateway)

    def _count_rerouted(self, push: _Push) -> None:
        if not push.rerouted_items:
            return
        cid, signal = self._settings.component_id, push.signal.value
        self._reroutes.labels(cid, signal).inc(push.rerouted_items)
        if push.unconfirmed_items:
            self._duplicates.labels(cid, signal).inc(push.unconfirmed_items)
        push.rerouted_items = push.unconfirmed_items = 0

    @staticmethod
    def _keep_only_undelivered(
        batch: Message,
        parts: dict[str, Message],
        sends: Sequence[asyncio.Future[Any]],
        progress: Sequence[SendProgress],
        waiting: list[Message],
        signal: Signal,
    ) -> int:
        """Leave in ``batch`` what no gateway took; return how many of those items a gateway may hold: the parts
        whose gateway had not answered (unless its transport said it never connected), or answered after a
        timeout (not those refused, or waiting to be retried)."""
        undelivered = list(waiting)
        at_risk = 0
        for part, send, part_progress in zip(parts.values(), sends, progress, strict=True):
            if not send.done() or send.cancelled():
                undelivered.append(part)
                items = SPECS[signal].count_items(part)
                at_risk += items if part_progress.at_risk is None else min(part_progress.at_risk, items)
            elif send.exception() is not None or isinstance(send.result(), RetryableError):
                undelivered.append(part)
                error = send.exception() or send.result()
                if getattr(error, "maybe_delivered", False):
                    at_risk += SPECS[signal].count_items(part)
        _leave_only(batch, undelivered)
        return at_risk

    async def _send(self, signal: Signal, gateway: str, part: Message, progress: SendProgress) -> int | RetryableError:
        transport = self._transports.get(gateway)
        if transport is None:  # removed while this batch was being split
            return RetryableError(f"gateway {gateway} left", reason=GATEWAY_REMOVED)
        items = SPECS[signal].count_items(part)
        try:
            with attempt_part(progress):
                response = await transport.export(signal, part, float(self._config.protocol.timeout))
        except RetryableError as exc:
            return self._gone_instead(gateway, transport, exc) or exc
        except PermanentExportError as exc:
            self._log.warning(
                f"rejected:{gateway}",
                f"gateway {gateway} rejected {items} items for good: {exc}",
                exporter=self._settings.component_id,
            )
            # Dropped as the otlp exporter drops a rejected batch; the sending queue counts them as rejected.
            self._queue.count_given_up(signal, items, exc.reason)
            return items
        except Exception as exc:  # unclassified: treat as a failed gateway, so the other parts stay accounted for
            error = RetryableError(f"gateway {gateway} failed: {exc!r}", reason=type(exc).__name__)
            return self._gone_instead(gateway, transport, error) or error
        if self._transports.get(gateway) is transport:  # a gateway the resolver dropped keeps no series
            self._routed.labels(self._settings.component_id, gateway, signal.value).inc(items)
        # No more than the part held: the parts' counts are added up, so one gateway's claim would take the others'.
        return min(
            items, partial_rejections(response, signal, self._log, self._settings.component_id, f"gateway {gateway}")
        )

    def _gone_instead(self, gateway: str, transport: Transport, error: RetryableError) -> RetryableError | None:
        """For a failure of a gateway the resolver dropped (or replaced by a new connection) while its part was out:
        an error saying so, which reroutes the part and leaves the gateway's state alone; else None."""
        if self._transports.get(gateway) is transport:
            return None
        gone = RetryableError(f"gateway {gateway} left: {error}", reason=GATEWAY_REMOVED)
        gone.maybe_delivered = error.maybe_delivered
        return gone

    def _init_metrics(self) -> None:
        m = self._settings.metrics
        self._backends = m.gauge("loadbalancer_backends", "Gateways known from the resolver.", ["exporter"])
        self._healthy = m.gauge("loadbalancer_healthy_backends", "Gateways currently in the ring.", ["exporter"])
        self._resolutions = m.counter(
            "loadbalancer_resolutions_total", "Gateway resolutions by outcome.", ["exporter", "outcome"]
        )
        self._routed = m.counter(
            "loadbalancer_routed_items_total", "Items delivered, per gateway.", ["exporter", "backend", "signal"]
        )
        self._reroutes = m.counter(
            "loadbalancer_rerouted_items_total",
            "Items sent again to another gateway after theirs failed.",
            ["exporter", "signal"],
        )
        self._duplicates = m.counter("exporter_duplicates_total", DUPLICATES_DOC, ["exporter", "signal"])
        self._ejections = m.counter(
            "loadbalancer_backend_ejections_total", "Times a failing gateway left the ring.", ["exporter", "backend"]
        )


class _Push:
    """What one push of a batch has learnt so far, across its rounds of sends."""

    def __init__(self, signal: Signal) -> None:
        self.signal = signal
        self.rejected = 0  # items the gateways that took their parts rejected
        self.waiting: list[Message] = []  # parts left for their own gateway: the queue's retry sends them again
        # Items failed on another gateway, not yet sent to their new owner (counted as rerouted once they are),
        # and of those the ones whose attempt timed out after sending (that gateway may hold them: duplicates).
        self.rerouted_items = 0
        self.unconfirmed_items = 0
        # The items of parts left waiting that timed out at their gateway after sending: the gateway may hold
        # them, and the queue's retry sends them to that gateway again.
        self.unconfirmed_waiting = 0
        self.last_error: RetryableError | None = None
        self.longest_wait: float | None = None  # the longest delay a throttled gateway asked for

    def wait(self, part: Message, error: RetryableError, limit: float | None) -> None:
        """Leave ``part`` for its own gateway. ``limit``: how long a busy gateway (one that asked for a delay) may
        still be waited for; None for a failing one, which asked for none."""
        self.waiting.append(part)
        if error.retry_after is not None:
            # No longer than max_throttled allows: a gateway asking for a minute holds up every batch behind.
            wait = error.retry_after if limit is None else min(error.retry_after, limit)
            self.longest_wait = max(self.longest_wait or 0.0, wait)
        if error.maybe_delivered:
            self.unconfirmed_waiting += SPECS[self.signal].count_items(part)

    def reroute(self, part: Message, error: RetryableError) -> None:
        items = SPECS[self.signal].count_items(part)
        self.rerouted_items += items
        self.unconfirmed_items += items if error.maybe_delivered else 0

    def retry_error(self) -> RetryableError:
        """The error that makes the queue retry what is left undelivered."""
        error = self.last_error or RetryableError("no gateway is available", reason="no_backends")
        error.rejected = self.rejected  # what delivered parts rejected: counted even though the batch is retried
        # Only what is still undelivered and may sit on a gateway makes the retry a possible duplicate: a part
        # that found no gateway to reroute it to, or one waiting for the gateway that timed out on it. The queue
        # counts those items (``at_risk``), not the whole remainder, once its retry delivers them.
        error.maybe_delivered = self.unconfirmed_items > 0 or self.unconfirmed_waiting > 0
        error.at_risk = self.unconfirmed_items + self.unconfirmed_waiting
        if self.longest_wait is not None:
            error.retry_after = self.longest_wait  # the waiting parts go no sooner than their gateways asked
        return error


def _leave_only(batch: Message, parts: list[Message]) -> None:
    """Make ``batch`` hold only ``parts`` (parts of it, or nothing): the queue counts and retries what is left."""
    remaining = merge(parts) if parts else None
    if remaining is not batch:
        batch.Clear()
        if remaining is not None:
            batch.MergeFrom(remaining)


def _close_later(transport: Transport) -> None:
    asyncio.ensure_future(transport.close())  # noqa: RUF006 - fire and forget: the channel is no longer used
