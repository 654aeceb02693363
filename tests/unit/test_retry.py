"""Retry rules: backoff with jitter, server delays, permanent errors, max elapsed time, interruption."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from agent.component import Signal
from agent.exporters._helper.retry import (
    BackoffWait,
    ExportAborted,
    PermanentExportError,
    RetryableError,
    RetryConfig,
    RetryingSender,
    http_error,
    parse_retry_after,
)
from agent.exporters.otlp.transport import grpc_error
from agent.otlp.signals import count_spans
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.workload import Workload
from tests.delivery_doubles import make_settings
from tests.helpers import metric_value


def retry_state(attempt: int, error: Exception | None = None) -> Any:
    outcome = SimpleNamespace(exception=lambda: error)
    return SimpleNamespace(attempt_number=attempt, outcome=outcome)


def test_backoff_grows_by_the_multiplier_with_jitter_and_stops_growing_at_max_interval() -> None:
    config = RetryConfig(initial_interval=1.0, multiplier=2.0, randomization_factor=0.5, max_interval=8.0)
    wait = BackoffWait(config, random.Random(7))
    for attempt, interval in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (9, 8.0)]:
        samples = [wait(retry_state(attempt)) for _ in range(200)]
        assert all(interval * 0.5 <= s <= interval * 1.5 for s in samples)
        assert max(samples) - min(samples) > interval * 0.5  # really jittered


def test_backoff_never_waits_less_than_the_server_asked() -> None:
    wait = BackoffWait(RetryConfig(initial_interval=0.1, max_interval=0.2), random.Random(1))
    assert wait(retry_state(1, RetryableError("busy", reason="unavailable", retry_after=7.5))) == 7.5
    assert wait(retry_state(1, RetryableError("busy", reason="unavailable"))) < 0.2


class ScriptedPush:
    def __init__(self, *outcomes: Exception | int | None, delay: float = 0.0) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.delay = delay

    async def __call__(self, signal: Signal, batch: Message) -> int | None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


FAST = RetryConfig(initial_interval=0.01, max_interval=0.02, max_elapsed_time=5.0)


def sender(push: Any, config: RetryConfig | None = FAST, timeout: float | None = None, metrics: Any = None) -> Any:
    return RetryingSender(make_settings("otlp", metrics or SelfMetrics()), config, timeout, push)


async def test_retryable_failures_are_retried_until_success_and_counted() -> None:
    metrics = SelfMetrics()
    push = ScriptedPush(RetryableError("a", reason="unavailable"), RetryableError("b", reason="unavailable"), 3)
    rejected, maybe_delivered = await sender(push, metrics=metrics).send(Signal.TRACES, Message())
    assert (rejected, maybe_delivered, push.calls) == (3, False, 3)
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_retries_total", exporter="otlp", signal="traces") == 2


async def test_a_retried_failure_is_logged_when_it_starts_not_only_when_the_batch_is_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unreachable Jaeger logged nothing for max_elapsed_time (15m in the shipped configs): counted only."""
    push = ScriptedPush(*(RetryableError("connection refused", reason="unavailable") for _ in range(3)), None)
    with caplog.at_level(logging.WARNING, logger="otel_sidecar.otlp"):
        await sender(push).send(Signal.LOGS, Message())
    retries = [r for r in caplog.records if r.getMessage().startswith("export failed; retrying")]
    assert len(retries) == 1  # three retries within the interval: one line, the rest counted on the next
    assert (retries[0].signal, retries[0].error, retries[0].attempt) == ("logs", "connection refused", 1)  # type: ignore[attr-defined]
    assert 0.005 <= retries[0].retry_in_seconds <= 0.02  # type: ignore[attr-defined]


async def test_items_a_failed_attempt_rejected_are_reported_when_a_retry_then_succeeds() -> None:
    """A push delivering a batch in parts (loadbalancing) may have one part rejected for good and another fail
    retryably: the rejected items stay rejected whatever the retries then do."""
    push = ScriptedPush(RetryableError("a gateway is down", reason="unavailable", rejected=3), None)
    rejected, maybe_delivered = await sender(push).send(Signal.TRACES, Message())
    assert (rejected, maybe_delivered, push.calls) == (3, False, 2)


async def test_permanent_errors_are_raised_at_once() -> None:
    push = ScriptedPush(PermanentExportError("bad data"))
    with pytest.raises(PermanentExportError):
        await sender(push).send(Signal.TRACES, Message())
    assert push.calls == 1


async def test_the_last_error_is_raised_when_the_next_wait_would_pass_max_elapsed_time() -> None:
    # Margins of 0.2 s either way, so that a loaded machine's late wake-ups do not change the count.
    config = RetryConfig(initial_interval=0.4, max_interval=0.4, randomization_factor=0, max_elapsed_time=1.0)
    push = ScriptedPush(*[RetryableError(f"try {i}", reason="unavailable") for i in range(10)])
    with pytest.raises(RetryableError, match="try 2"):
        await sender(push, config).send(Signal.TRACES, Message())
    assert push.calls == 3  # at 0, 0.4 and 0.8 s; a retry at 1.2 s would pass the 1.0 s budget


async def test_a_batch_given_up_says_how_often_it_was_tried_and_why_no_more() -> None:
    """A server asking to wait past the budget (Retry-After: 60 against max_elapsed_time 30s) gives the batch up
    at once, which read as retries run out (pass 152): the line says what the server asked."""
    config = RetryConfig(initial_interval=0.01, max_interval=0.01, randomization_factor=0, max_elapsed_time=30.0)
    push = ScriptedPush(RetryableError("HTTP 503: busy", reason="http_503", retry_after=60.0))
    with pytest.raises(RetryableError) as raised:
        await sender(push, config).send(Signal.TRACES, Message())
    assert raised.value.given_up == (
        "after 1 attempt in 0.0s: the backend asked to retry in 60s, past retry_on_failure.max_elapsed_time (30s)"
    )
    short = RetryConfig(initial_interval=0.4, max_interval=0.4, randomization_factor=0, max_elapsed_time=1.0)
    push = ScriptedPush(*[RetryableError("down", reason="unavailable") for _ in range(10)])
    with pytest.raises(RetryableError) as raised:
        await sender(push, short).send(Signal.TRACES, Message())
    assert re.fullmatch(
        r"after 3 attempts in 0\.[89]s: the next retry would pass retry_on_failure\.max_elapsed_time \(1s\)",
        raised.value.given_up,
    ), raised.value.given_up


async def test_a_short_retry_after_does_not_read_as_the_reason_the_retries_ended() -> None:
    """A server's Retry-After well within the budget is not why the batch was given up: the budget was spent."""
    short = RetryConfig(initial_interval=0.4, max_interval=0.4, randomization_factor=0, max_elapsed_time=1.0)
    errors = [RetryableError("busy", reason="http_503", retry_after=0.001) for _ in range(10)]
    with pytest.raises(RetryableError) as raised:
        await sender(ScriptedPush(*errors), short).send(Signal.TRACES, Message())
    assert "asked to retry" not in raised.value.given_up
    assert raised.value.given_up.endswith(": the next retry would pass retry_on_failure.max_elapsed_time (1s)")


async def test_a_disabled_retry_makes_one_attempt() -> None:
    push = ScriptedPush(RetryableError("down", reason="unavailable"))
    with pytest.raises(RetryableError):
        await sender(push, RetryConfig(enabled=False)).send(Signal.TRACES, Message())
    assert push.calls == 1


async def test_an_attempt_that_times_out_is_retried_and_reported_as_maybe_delivered() -> None:
    push = ScriptedPush(None, None, delay=0.0)
    slow_then_fast = ScriptedPush()

    async def first_slow(signal: Signal, batch: Message) -> int | None:
        if slow_then_fast.calls == 0:
            slow_then_fast.calls += 1
            await asyncio.sleep(1)
        return await push(signal, batch)

    batch = next(iter(Workload(seed=2).requests(1)))[0]
    rejected, copies = await sender(first_slow, timeout=0.05).send(Signal.TRACES, batch)
    assert (rejected, copies, push.calls) == (0, count_spans(batch), 1)


async def test_each_attempt_that_may_have_delivered_the_batch_is_one_more_copy() -> None:
    """A backend storing each request and then closing the connection unanswered held 9 copies of each item, and
    exporter_duplicates_total said 1 (pass 90): the count was per batch, not per attempt."""
    unknown = [RetryableError("connection closed", reason="connection", maybe_delivered=True) for _ in range(8)]
    refused = RetryableError("connection refused", reason="unavailable")  # never reached the backend
    batch = next(iter(Workload(seed=2).requests(1)))[0]
    spans = count_spans(batch)
    rejected, copies = await sender(ScriptedPush(*unknown[:4], refused, *unknown[4:])).send(Signal.TRACES, batch)
    assert (rejected, copies) == (0, 8 * spans)
    # A push in parts says which of its items the failed part held: only those are at risk.
    in_parts = RetryableError("the second push's connection closed", reason="connection", maybe_delivered=True)
    in_parts.at_risk = 3
    rejected, copies = await sender(ScriptedPush(in_parts, in_parts)).send(Signal.TRACES, batch)
    assert (rejected, copies) == (0, 6)


async def test_giving_up_after_an_attempt_timed_out_says_the_batch_may_have_been_delivered() -> None:
    timed_out = RetryableError("no answer", reason="timeout", maybe_delivered=True)
    push = ScriptedPush(timed_out, RetryableError("refused", reason="unavailable"))
    # A retry at 0.2 s, none at 0.4 s: 0.1 s of margin either way for a loaded machine's late wake-ups.
    config = RetryConfig(initial_interval=0.2, max_interval=0.2, randomization_factor=0, max_elapsed_time=0.3)
    with pytest.raises(RetryableError, match="refused") as raised:
        await sender(push, config).send(Signal.TRACES, next(iter(Workload(seed=2).requests(1)))[0])
    assert push.calls == 2 and raised.value.maybe_delivered


async def test_interrupting_ends_a_backoff_wait_at_once() -> None:
    config = RetryConfig(initial_interval=30.0, max_interval=30.0, max_elapsed_time=0)
    retrying = sender(ScriptedPush(*[RetryableError("down", reason="unavailable")] * 3), config)
    task = asyncio.create_task(retrying.send(Signal.TRACES, Message()))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    retrying.interrupt()
    with pytest.raises(ExportAborted):
        await task
    assert time.monotonic() - started < 1.0


async def test_a_failure_after_the_interrupt_is_neither_logged_nor_counted_as_a_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At shutdown a persistent queue's sender stops at the first failure, leaving the batch on disk: the log
    said "export failed; retrying ... retry_in_seconds=4.8" and, a millisecond later, that the data was left in
    the queue (pass 152)."""
    metrics = SelfMetrics()
    retrying = sender(ScriptedPush(RetryableError("down", reason="unavailable")), metrics=metrics)
    retrying.interrupt()
    with caplog.at_level(logging.WARNING), pytest.raises(ExportAborted):
        await retrying.send(Signal.TRACES, Message())
    assert "retrying" not in caplog.text
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_retries_total", exporter="otlp", signal="traces") in (None, 0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), ("0", 0.0), (None, None), ("soon", None), ("", None)],
)
def test_retry_after_in_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_retry_after_as_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 < (parse_retry_after(when) or 0) <= 120
    assert parse_retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (429, True),
        (502, True),
        (503, True),
        (504, True),
        (400, False),
        (401, False),
        (404, False),
        (413, False),
        (500, False),
    ],
)
def test_otlp_http_statuses_follow_the_specification(status: int, retryable: bool) -> None:
    error = http_error(status, "why", "2")
    assert isinstance(error, RetryableError if retryable else PermanentExportError)
    if retryable:
        assert isinstance(error, RetryableError) and error.retry_after == 2.0


def status_trailer(delay: float | None) -> tuple[tuple[str, bytes], ...]:
    status = status_pb2.Status(code=8, message="quota")
    if delay is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(delay * 1e9))
        status.details.add().Pack(info)
    return (("grpc-status-details-bin", status.SerializeToString()),)


@pytest.mark.parametrize(
    ("code", "delay", "retryable"),
    [
        (grpc.StatusCode.UNAVAILABLE, None, True),
        (grpc.StatusCode.CANCELLED, None, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, True),
        (grpc.StatusCode.ABORTED, None, True),
        (grpc.StatusCode.OUT_OF_RANGE, None, True),
        (grpc.StatusCode.DATA_LOSS, None, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 1.5, True),
        (grpc.StatusCode.INVALID_ARGUMENT, None, False),
        (grpc.StatusCode.UNAUTHENTICATED, None, False),
        (grpc.StatusCode.UNIMPLEMENTED, None, False),
        (grpc.StatusCode.INTERNAL, None, False),
    ],
)
def test_grpc_codes_follow_the_specification(code: grpc.StatusCode, delay: float | None, retryable: bool) -> None:
    error = grpc_error(code, "details", status_trailer(delay))
    assert isinstance(error, RetryableError if retryable else PermanentExportError)
    if isinstance(error, RetryableError):
        assert error.retry_after == delay
        assert error.maybe_delivered == (code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED))
