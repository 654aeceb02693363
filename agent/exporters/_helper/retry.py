"""Retry with exponential backoff and jitter around an exporter's push, with a per-attempt timeout.

Exporters classify every failure as :class:`RetryableError` (the backend may take the data later: gRPC
``UNAVAILABLE``, HTTP 503, a refused connection, a timeout) or :class:`PermanentExportError` (the backend
will never take it: gRPC ``INVALID_ARGUMENT``, HTTP 400). Only the first is retried, with the Collector's
backoff (``initial_interval * multiplier**n`` capped at ``max_interval``, ± ``randomization_factor``),
never sooner than the server asked for (gRPC ``RetryInfo``, HTTP ``Retry-After``), and never past
``max_elapsed_time``: a retry whose wait would end after it is not made and the batch is given up.

Waits are interruptible: :meth:`RetryingSender.interrupt` ends every wait at once with :class:`ExportAborted`,
so shutdown never sleeps out a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_before_delay, stop_never
from tenacity.wait import wait_base

from agent.component import CreateSettings, Signal
from agent.config.schema import Duration, setting
from agent.telemetry.logs import RateLimitedLog
from agent.waits import wait_event


class ExportError(Exception):
    """A failed export attempt; ``reason`` is a short, low-cardinality label for metrics."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class RetryableError(ExportError):
    """The backend may take the batch later. ``retry_after`` is the server's hint in seconds, if it gave one.

    ``maybe_delivered`` is set when the attempt's outcome is unknown (a timeout after the request was sent):
    if a retry then succeeds, the backend may hold the batch twice, which is counted as a duplicate.

    ``rejected`` counts items a backend refused for good during an attempt that still failed as a whole (a push
    that delivers a batch in parts, as loadbalancing does, may get a partial success for one part and a
    retryable failure for another); they are counted as rejected whatever the retries then do.

    ``settled`` counts items of the batch that earlier parts of it delivered or had rejected, though the batch
    still holds them (loki, which sends a large batch as several pushes and resumes at the first not taken;
    loadbalancing removes settled parts from the batch instead).

    ``at_risk``, with ``maybe_delivered``: how many items the attempt may have delivered, where a push sends the
    batch in parts and knows (the failed push of several, the parts a gateway timed out on); None: the whole
    batch as it stood. Each such attempt counts that many duplicates once a later attempt delivers them.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        retry_after: float | None = None,
        maybe_delivered: bool = False,
        rejected: int = 0,
        settled: int = 0,
        at_risk: int | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after
        # Set when the retries end: how many attempts, how long, and why no more (for the log line).
        self.given_up = ""
        self.maybe_delivered = maybe_delivered
        self.rejected = rejected
        self.settled = settled
        self.at_risk = at_risk


class PermanentExportError(ExportError):
    """The backend refused the batch for good (bad data, unauthorized, too large); never retried."""

    def __init__(self, message: str, *, reason: str = "rejected") -> None:
        super().__init__(message, reason=reason)


class ExportAborted(Exception):
    """Shutdown interrupted a backoff wait; the batch was not delivered (a persistent queue keeps it).

    ``maybe_delivered``: whether an attempt before the wait may have reached the backend (it timed out after
    sending), which makes sending the batch again after a restart a possible duplicate.
    """

    maybe_delivered = False


@dataclass(frozen=True)
class RetryConfig:
    enabled: bool = setting(True, doc="Retry batches that failed with a retryable error.")
    initial_interval: Duration = setting(Duration(5.0), doc="Wait before the first retry.", positive=True)
    multiplier: float = setting(1.5, doc="Factor the wait grows by after each retry.", minimum=1)
    randomization_factor: float = setting(
        0.5, doc="Jitter: each wait is drawn from interval * (1 +- factor).", minimum=0, maximum=1
    )
    max_interval: Duration = setting(Duration(30.0), doc="Longest wait between two attempts.")
    max_elapsed_time: Duration = setting(
        Duration(300.0),
        doc="Give a batch up (dropped, counted, logged) when the next retry would start later than this after the "
        "first attempt; 0 retries until shutdown (the queue bound still applies).",
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        if self.max_interval < self.initial_interval:
            yield "max_interval", "must be at least initial_interval"


class BackoffWait(wait_base):
    """Exponential backoff with jitter that never waits less than the server asked for."""

    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        config = self._config
        retries = max(retry_state.attempt_number - 1, 0)
        interval = min(config.initial_interval * config.multiplier**retries, config.max_interval)
        delta = config.randomization_factor * interval
        wait = self._rng.uniform(interval - delta, interval + delta)
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        hint = getattr(error, "retry_after", None)
        return max(wait, hint) if hint else wait


Push = Callable[[Signal, Message], Awaitable["int | None"]]


@dataclass
class SendProgress:
    """Where a ``send`` stands, for a caller that cancels it (the shutdown deadline): whether an attempt is under
    way, so that the backend may be storing the batch, and whether an earlier attempt's outcome was unknown."""

    attempting: bool = False
    maybe_delivered: bool = False
    # Of the attempt cut short: how many items the backend may hold, where the push knows (see report_cut_short);
    # None: all it was sending.
    at_risk: int | None = None


_ATTEMPT: contextvars.ContextVar[SendProgress | None] = contextvars.ContextVar("export_attempt", default=None)


def report_cut_short(at_risk: int | None) -> None:
    """Said by a push that knows how many of its items the backend would hold if the shutdown deadline cut it
    short now: the one push of several under way (loki), the parts whose gateways had not answered
    (loadbalancing), none for a connection never made or a file not written yet; None: all it is sending. The
    last word before the cut counts; without one, all it was sending counts as unconfirmed."""
    progress = _ATTEMPT.get()
    if progress is not None:
        progress.at_risk = at_risk


@contextlib.contextmanager
def attempt_part(progress: SendProgress) -> Iterator[None]:
    """Within a push that sends parts of its batch in tasks of their own (loadbalancing): what a part's transport
    reports goes to ``progress``, the part's, not to the attempt's as a whole."""
    token = _ATTEMPT.set(progress)
    try:
        yield
    finally:
        _ATTEMPT.reset(token)


class RetryingSender:
    """Calls ``push`` under a timeout, retrying retryable failures as configured.

    ``send`` returns the number of items the backend rejected in a partial-success answer (0 normally) and how
    many extra copies of items earlier attempts may have left with the backend (each attempt whose outcome is
    unknown, its items at risk); it raises
    :class:`PermanentExportError`, the last :class:`RetryableError` when retries are exhausted (or disabled), or
    :class:`ExportAborted`.
    """

    def __init__(self, settings: CreateSettings, config: RetryConfig | None, timeout: float | None, push: Push) -> None:
        self._config = config if config is not None and config.enabled else None
        self._timeout = timeout
        self._push = push
        self._interrupted = asyncio.Event()
        self._retries = settings.metrics.counter(
            "exporter_retries_total", "Export attempts retried after a retryable failure.", ["exporter", "signal"]
        )
        self._component_id = settings.component_id
        self._log = RateLimitedLog(settings.logger)

    def interrupt(self) -> None:
        """End every backoff wait now (and any later one) with :class:`ExportAborted`."""
        self._interrupted.set()

    async def send(self, signal: Signal, batch: Message, progress: SendProgress | None = None) -> tuple[int, int]:
        progress = progress or SendProgress()
        copies = 0  # items at risk of attempts whose outcome is unknown: each may be a copy with the backend
        rejected_before = 0  # by attempts that failed as a whole; the last failure carries the total
        if self._config is None:
            return await self._attempt(signal, batch, progress), 0
        attempts, started = 0, time.monotonic()
        config = self._config
        retries = self._retries.labels(self._component_id, signal.value)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            wait=BackoffWait(config),
            stop=stop_before_delay(config.max_elapsed_time) if config.max_elapsed_time > 0 else stop_never,
            sleep=self._sleep,
            before_sleep=lambda state: self._count_retry(retries, signal, state),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    try:
                        rejected = await self._attempt(signal, batch, progress)
                    except RetryableError as exc:
                        if exc.maybe_delivered:
                            copies += exc.at_risk if exc.at_risk is not None else items_in(signal, batch)
                            progress.maybe_delivered = True
                        exc.maybe_delivered = copies > 0  # sticky: the last failure speaks for every attempt
                        rejected_before += exc.rejected
                        exc.rejected = rejected_before
                        raise
        except ExportAborted as aborted:
            aborted.maybe_delivered = copies > 0
            raise
        except RetryableError as exc:
            exc.given_up = self._given_up(exc, attempts, time.monotonic() - started)
            raise
        return rejected + rejected_before, copies

    def _given_up(self, last: RetryableError, attempts: int, elapsed: float) -> str:
        """Why the retries ended, as the log line says it: a server asking to wait past the budget gives up at
        once, which otherwise reads as a budget spent."""
        assert self._config is not None
        budget = f"retry_on_failure.max_elapsed_time ({Duration(self._config.max_elapsed_time).render()})"
        tried = f"after {attempts} attempt{'s' if attempts != 1 else ''} in {elapsed:.1f}s"
        if last.retry_after and elapsed + last.retry_after >= self._config.max_elapsed_time:
            return f"{tried}: the backend asked to retry in {round(last.retry_after, 1):g}s, past {budget}"
        return f"{tried}: the next retry would pass {budget}"

    def _count_retry(self, retries: Any, signal: Signal, state: RetryCallState) -> None:
        """Counted, and logged now and then: a backend down or refusing must show in the log when it starts, not
        only when the first batch is given up (``max_elapsed_time`` later). Not once interrupted (a shutdown):
        the wait ends at once and no retry follows, which "retrying" would contradict."""
        if self._interrupted.is_set():
            return
        retries.inc()
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        self._log.warning(
            f"retry:{signal.value}",
            "export failed; retrying (the batch waits in the queue)",
            signal=signal.value,
            error=str(error),
            retry_in_seconds=round(wait, 3),
            attempt=state.attempt_number,
        )

    async def _attempt(self, signal: Signal, batch: Message, progress: SendProgress) -> int:
        progress.attempting, progress.at_risk = True, None
        token = _ATTEMPT.set(progress)
        try:
            rejected = await self._push_in_time(signal, batch)
        except asyncio.CancelledError:
            raise  # cut short under way: ``attempting`` stays set for whoever cancelled it
        except BaseException:
            progress.attempting = False
            raise
        finally:
            _ATTEMPT.reset(token)
        progress.attempting = False
        return rejected

    async def _push_in_time(self, signal: Signal, batch: Message) -> int:
        started = time.monotonic()
        try:
            if self._timeout:
                # A backstop a moment after the transport's own deadline, which fires first and knows more: a
                # connection never made delivered nothing, an answer that never came may have.
                async with asyncio.timeout(self._timeout * 1.1):
                    return await self._push(signal, batch) or 0
            return await self._push(signal, batch) or 0
        except TimeoutError:
            waited = time.monotonic() - started
            raise RetryableError(f"no answer within {waited:.1f}s", reason="timeout", maybe_delivered=True) from None

    async def _sleep(self, seconds: float) -> None:
        if self._interrupted.is_set():
            raise ExportAborted("shutting down")
        if await wait_event(self._interrupted, seconds):
            raise ExportAborted("shutdown interrupted a retry wait")


def items_in(signal: Signal, batch: Message) -> int:
    from agent.otlp.signals import SPECS  # not at import: the signals module's users import this one

    return SPECS[signal].count_items(batch)


# --- protocol rules --------------------------------------------------------------------------------------------------

OTLP_HTTP_RETRYABLE = frozenset({429, 502, 503, 504})
"""OTLP/HTTP: only these statuses may be retried; every other 4xx/5xx must not be."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header (delay-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max((when - datetime.datetime.now(datetime.UTC)).total_seconds(), 0.0)


def http_error(
    status: int, message: str, retry_after: str | None = None, retryable: frozenset[int] = OTLP_HTTP_RETRYABLE
) -> ExportError:
    """Classify a non-success HTTP answer."""
    text = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status in retryable:
        return RetryableError(text, reason=f"http_{status}", retry_after=parse_retry_after(retry_after))
    return PermanentExportError(text)
