"""The loadbalancing exporter's push against gateway doubles: routing around dead ones, waiting for full ones."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import types
from pathlib import Path

import pytest
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from agent.component import CreateSettings, Kind, Signal
from agent.config.schema import Duration
from agent.config.service import ServiceConfig
from agent.exporters._helper.retry import RetryableError, RetryConfig
from agent.exporters._helper.tls import TlsClientConfig
from agent.exporters.loadbalancing import exporter as exporter_module
from agent.exporters.loadbalancing.config import (
    BackendProtocolConfig,
    LoadBalancingExporterConfig,
    ResolverConfig,
    StaticResolverConfig,
)
from agent.exporters.loadbalancing.exporter import LoadBalancingExporter
from agent.exporters.loadbalancing.ring import HashRing
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.workload import Workload
from tests.helpers import FakeClock, metric_value, self_signed_certificate

GATEWAYS = ["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"]


class Gateway:
    """A transport double: records what it receives, or fails the way a dead or a full gateway does."""

    def __init__(self, failure: Exception | None = None, reject: int = 0, failures: int | None = None) -> None:
        self.failure = failure
        self.failures = failures  # fail only this many times (None: every time)
        self.reject = reject  # spans refused for good in a partial-success answer
        self.received: list[bytes] = []

    async def export(self, signal: Signal, request: Message, timeout: float) -> Message:
        if self.failure is not None and self.failures != 0:
            if self.failures is not None:
                self.failures -= 1
            raise self.failure
        self.received.extend(s.trace_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans)
        if self.reject:
            return ExportTraceServiceResponse(partial_success=ExportTracePartialSuccess(rejected_spans=self.reject))
        return ExportTraceServiceResponse()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The exporter's ``time.monotonic``: cooldowns, eject_after and max_throttled pass when a test says so."""
    fake = FakeClock()
    monkeypatch.setattr(exporter_module, "time", types.SimpleNamespace(monotonic=fake))
    return fake


def exporter_with(
    gateways: dict[str, Gateway],
    eject_after: float = 0.0,
    retry: RetryConfig | None = None,
    max_throttled: float | None = None,
) -> tuple[LoadBalancingExporter, SelfMetrics]:
    """``eject_after`` 0 by default: most tests here are about what happens once a gateway has left the ring."""
    metrics = SelfMetrics()
    settings = CreateSettings("loadbalancing", Kind.EXPORTER, logging.getLogger("t"), metrics, ServiceConfig(), {})
    throttled = {} if max_throttled is None else {"max_throttled": Duration(max_throttled)}
    config = LoadBalancingExporterConfig(
        resolver=ResolverConfig(static=StaticResolverConfig(hostnames=GATEWAYS)),
        eject_after=Duration(eject_after),
        retry_on_failure=retry or RetryConfig(),
        **throttled,
    )
    exporter = LoadBalancingExporter(config, settings)
    exporter._transports = dict(gateways)  # type: ignore[assignment]
    exporter.expose_gauges()  # as start() does
    return exporter, metrics


def batch_of(traces: int) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for part, _ in Workload(seed=traces).requests(traces):
        request.resource_spans.extend(part.resource_spans)
    return request


def spans_trace_ids(request: ExportTraceServiceRequest) -> list[bytes]:
    """The trace id of every span."""
    return [s.trace_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def trace_ids(request: ExportTraceServiceRequest) -> set[bytes]:
    return set(spans_trace_ids(request))


async def test_every_trace_goes_whole_to_the_gateway_that_owns_it() -> None:
    gateways = {g: Gateway() for g in GATEWAYS}
    exporter, _ = exporter_with(gateways)
    batch = batch_of(60)
    assert await exporter._push(Signal.TRACES, batch) == 0
    ring = HashRing(GATEWAYS)
    for endpoint, gateway in gateways.items():
        assert gateway.received and all(ring.owner(t) == endpoint for t in gateway.received)


async def test_a_dead_gateways_traces_go_to_the_next_owner_at_once() -> None:
    dead = Gateway(RetryableError("connection refused", reason="unavailable"))
    gateways = {GATEWAYS[0]: dead, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways)
    batch = batch_of(60)
    expected = trace_ids(batch)
    assert await exporter._push(Signal.TRACES, batch) == 0
    survivors = HashRing(GATEWAYS[1:])
    delivered = set(gateways[GATEWAYS[1]].received) | set(gateways[GATEWAYS[2]].received)
    assert delivered == expected
    for endpoint in GATEWAYS[1:]:
        assert all(survivors.owner(t) == endpoint for t in gateways[endpoint].received)
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_loadbalancer_backend_ejections_total", backend=GATEWAYS[0]) == 1
    assert metric_value(text, "otel_sidecar_loadbalancer_rerouted_items_total") > 0
    # Refused: the gateway never had them, so sending them to another one is no possible duplicate.
    assert metric_value(text, "otel_sidecar_exporter_duplicates_total") == 0


async def test_a_gateway_failing_for_a_moment_keeps_its_traces_so_sidecars_do_not_split_them() -> None:
    """A stall one sidecar saw (a GC pause, a reset connection) must not move traces on that sidecar alone: the
    others still send them to the gateway. Its part waits for the queue's retry; only a gateway failing for
    eject_after leaves the ring."""
    stalled = Gateway(RetryableError("deadline exceeded", reason="deadline_exceeded", maybe_delivered=True))
    gateways = {GATEWAYS[0]: stalled, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways, eject_after=5.0)
    batch = batch_of(60)
    owners = HashRing(GATEWAYS)
    stalled_traces = {t for t in trace_ids(batch) if owners.owner(t) == GATEWAYS[0]}
    with pytest.raises(RetryableError):
        await exporter._push(Signal.TRACES, batch)
    assert trace_ids(batch) == stalled_traces  # what is left for the retry: the stalled gateway's part only
    stalled.failure = None
    assert await exporter._push(Signal.TRACES, batch) == 0
    assert set(stalled.received) == stalled_traces  # delivered to their own gateway
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_loadbalancer_backend_ejections_total") == 0
    assert metric_value(text, "otel_sidecar_loadbalancer_rerouted_items_total") == 0


@pytest.mark.parametrize("no_retry", ["shutting_down", "retries_off"])
@pytest.mark.parametrize(
    "failure",
    [
        RetryableError("connection refused", reason="unavailable"),
        RetryableError("busy", reason="resource_exhausted", retry_after=1.0),  # alive but full: RetryInfo
    ],
    ids=["failing", "busy"],
)
async def test_with_no_retry_to_come_a_failing_or_busy_gateways_traces_go_to_the_next_owner_at_once(
    no_retry: str, failure: RetryableError
) -> None:
    """Retries off, or the queue shutting down: waiting for a retry that never comes would lose the part, though
    other gateways could take it. A busy gateway's part too: keeping a trace on its gateway is worth a wait, not
    a loss."""
    gateways = {GATEWAYS[0]: Gateway(failure), GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, _ = exporter_with(gateways, eject_after=5.0, retry=RetryConfig(enabled=no_retry != "retries_off"))
    if no_retry == "shutting_down":
        exporter._queue._closed = True
    batch = batch_of(60)
    expected = trace_ids(batch)
    assert await exporter._push(Signal.TRACES, batch) == 0
    assert set(gateways[GATEWAYS[1]].received) | set(gateways[GATEWAYS[2]].received) == expected


async def test_a_gateway_that_left_and_came_back_starts_its_failures_afresh_and_is_not_still_ejected(
    clock: FakeClock,
) -> None:
    flaky = Gateway(RetryableError("connection refused", reason="unavailable"))
    gateways = {GATEWAYS[0]: flaky, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways, eject_after=5.0)
    exporter._make_transport = gateways.__getitem__  # type: ignore[assignment,method-assign]
    with pytest.raises(RetryableError):
        await exporter._push(Signal.TRACES, batch_of(60))
    assert GATEWAYS[0] in exporter._failing_since
    await exporter._set_backends(GATEWAYS[1:])
    assert GATEWAYS[0] not in exporter._failing_since
    await exporter._set_backends(GATEWAYS)  # back, still failing
    clock.advance(5.0)
    with pytest.raises(RetryableError):  # its first failure since it came back: its part waits for it
        await exporter._push(Signal.TRACES, batch_of(60))
    assert metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_backend_ejections_total") == 0
    clock.advance(5.0)
    assert await exporter._push(Signal.TRACES, batch_of(60)) == 0  # failing for eject_after: out of the ring
    assert metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_backend_ejections_total") == 1
    await exporter._set_backends(GATEWAYS[1:])  # gone while ejected, back before its cooldown ended, healthy
    await exporter._set_backends(GATEWAYS)
    flaky.failure = None
    batch = batch_of(60)
    owned_by_flaky = {t for t in trace_ids(batch) if HashRing(GATEWAYS).owner(t) == GATEWAYS[0]}
    assert await exporter._push(Signal.TRACES, batch) == 0
    assert owned_by_flaky and set(flaky.received) == owned_by_flaky


@pytest.mark.parametrize(
    ("failure", "eject_after", "half"),
    [
        # Failing for eject_after (5 s) ejects a gateway; busy for max_throttled (10 s, the default) does too.
        (RetryableError("connection refused", reason="unavailable"), 5.0, 3.0),
        (RetryableError("busy", reason="resource_exhausted", retry_after=1.0), 0.0, 6.0),
    ],
    ids=["failing", "busy"],
)
async def test_a_gateway_that_took_data_between_two_bad_spells_starts_the_second_afresh(
    clock: FakeClock, failure: RetryableError, eject_after: float, half: float
) -> None:
    """Failing (or busy), then taking data, then failing again past the limit counted from the first spell: a new
    spell, not one lasting the limit, so its part waits for it rather than leave the ring."""
    flaky = Gateway(failure)
    gateways = {GATEWAYS[0]: flaky, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways, eject_after=eject_after)
    with pytest.raises(RetryableError):
        await exporter._push(Signal.TRACES, batch_of(60))
    clock.advance(half)
    flaky.failure = None
    assert await exporter._push(Signal.TRACES, batch_of(60)) == 0
    assert flaky.received
    clock.advance(half)
    flaky.failure = failure
    batch = batch_of(60)
    owned_by_flaky = {t for t in trace_ids(batch) if HashRing(GATEWAYS).owner(t) == GATEWAYS[0]}
    with pytest.raises(RetryableError):
        await exporter._push(Signal.TRACES, batch)
    assert trace_ids(batch) == owned_by_flaky  # waiting for it, not rerouted
    assert metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_backend_ejections_total") == 0


async def test_an_ejected_gateway_takes_its_traces_again_once_its_cooldown_is_over(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """And says so, as its ejection was said: only the healthy_backends gauge showed it (pass 91)."""
    caplog.set_level(logging.INFO)
    back = Gateway(RetryableError("connection refused", reason="unavailable"), failures=1)
    gateways = {GATEWAYS[0]: back, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways)  # backend_cooldown: 5 s
    assert await exporter._push(Signal.TRACES, batch_of(60)) == 0  # out of the ring
    assert metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_backend_ejections_total") == 1
    clock.advance(4.9)
    assert await exporter._push(Signal.TRACES, batch_of(60)) == 0
    assert not back.received  # still cooling down, though it would answer now
    clock.advance(0.1)
    batch = batch_of(60)
    owned_by_back = {t for t in trace_ids(batch) if HashRing(GATEWAYS).owner(t) == GATEWAYS[0]}
    assert not [r for r in caplog.records if "answers again" in r.getMessage()]
    assert await exporter._push(Signal.TRACES, batch) == 0
    assert owned_by_back and set(back.received) == owned_by_back
    assert [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()] == [
        f"gateway {GATEWAYS[0]} answers again; its traces go to it"
    ]


async def test_an_answer_from_a_send_begun_before_the_ejection_does_not_end_the_cooldown(clock: FakeClock) -> None:
    """Another batch's send, in flight when the gateway was ejected, succeeded a moment later: that put the failed
    gateway straight back in the ring (pass 94)."""
    failing = Gateway(RetryableError("connection refused", reason="unavailable"), failures=1)
    gateways = {GATEWAYS[0]: failing, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, _ = exporter_with(gateways)  # backend_cooldown: 5 s
    assert await exporter._push(Signal.TRACES, batch_of(60)) == 0  # out of the ring
    clock.advance(0.5)
    late = exporter._settle(exporter_module._Push(Signal.TRACES), GATEWAYS[0], batch_of(1), 0, False, clock() - 1)
    assert late  # the late answer: taken
    assert exporter._count_healthy() == 2


async def test_a_gateway_failing_for_eject_after_leaves_the_ring() -> None:
    dead = Gateway(RetryableError("connection refused", reason="unavailable"))
    gateways = {GATEWAYS[0]: dead, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways, eject_after=0.05)
    batch = batch_of(60)
    expected = trace_ids(batch)
    with pytest.raises(RetryableError):
        await exporter._push(Signal.TRACES, batch)
    await asyncio.sleep(0.06)
    assert await exporter._push(Signal.TRACES, batch) == 0
    assert set(gateways[GATEWAYS[1]].received) | set(gateways[GATEWAYS[2]].received) == expected
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_loadbalancer_backend_ejections_total", backend=GATEWAYS[0]) == 1


@pytest.mark.parametrize("failure", [TimeoutError(), RuntimeError("transport bug")])
async def test_an_unclassified_failure_of_one_gateway_reroutes_its_part_and_keeps_the_others_delivered(
    failure: Exception,
) -> None:
    hung = Gateway(failure)
    gateways = {GATEWAYS[0]: hung, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways)
    batch = batch_of(60)
    expected = sorted(trace_ids(batch))
    assert await exporter._push(Signal.TRACES, batch) == 0
    delivered = gateways[GATEWAYS[1]].received + gateways[GATEWAYS[2]].received
    assert sorted(set(delivered)) == expected
    assert len(delivered) == sum(len(ss.spans) for rs in batch_of(60).resource_spans for ss in rs.scope_spans)
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_loadbalancer_backend_ejections_total", backend=GATEWAYS[0]) == 1


async def test_a_full_gateway_keeps_its_traces_which_wait_in_the_batch_for_the_retry() -> None:
    full = Gateway(RetryableError("buffer full", reason="unavailable", retry_after=2.0))
    gateways = {GATEWAYS[0]: full, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways)
    batch = batch_of(60)
    ring = HashRing(GATEWAYS)
    owned_by_full = {t for t in trace_ids(batch) if ring.owner(t) == GATEWAYS[0]}
    with pytest.raises(RetryableError) as raised:
        await exporter._push(Signal.TRACES, batch)
    assert raised.value.retry_after == 2.0
    assert trace_ids(batch) == owned_by_full  # only the waiting part is left for the queue's retry
    assert not set(gateways[GATEWAYS[1]].received) & owned_by_full
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_loadbalancer_backend_ejections_total") == 0
    full.failure = None
    assert await exporter._push(Signal.TRACES, batch) == 0
    assert set(full.received) == owned_by_full


async def test_the_retry_waits_as_long_as_the_most_throttled_gateway_asked_even_when_another_died_after() -> None:
    gateways = {
        GATEWAYS[0]: Gateway(RetryableError("full", reason="unavailable", retry_after=8.0)),
        GATEWAYS[1]: Gateway(RetryableError("full", reason="unavailable", retry_after=2.0)),
        GATEWAYS[2]: Gateway(RetryableError("connection refused", reason="unavailable")),
    }
    exporter, _ = exporter_with(gateways)
    with pytest.raises(RetryableError) as raised:
        await exporter._push(Signal.TRACES, batch_of(60))
    assert raised.value.retry_after == pytest.approx(8.0, abs=0.5)


async def test_a_gateway_asking_for_a_longer_delay_than_max_throttled_is_waited_for_max_throttled_only() -> None:
    """A proxy answering 429 with Retry-After: 60 held every batch behind it for a minute: max_throttled (10 s by
    default) was checked only at the next attempt."""
    gateways = {
        gateway: Gateway(RetryableError("full", reason="unavailable", retry_after=60.0)) for gateway in GATEWAYS
    }
    exporter, _ = exporter_with(gateways)
    with pytest.raises(RetryableError) as raised:
        await exporter._push(Signal.TRACES, batch_of(60))
    assert raised.value.retry_after is not None and 9.0 < raised.value.retry_after <= 10.0


@pytest.mark.parametrize("rejected_by_a_delivered_part", [0, 2])
async def test_when_retries_run_out_only_the_undelivered_part_is_counted_as_failed(
    rejected_by_a_delivered_part: int,
) -> None:
    """And what a delivered part's partial success rejected is counted as rejected, not sent, though the rest of
    its batch was retried."""
    import time

    from agent.config.schema import Duration
    from agent.exporters._helper.retry import RetryConfig

    dead = Gateway(RetryableError("full", reason="unavailable", retry_after=0.01))
    gateways = {GATEWAYS[0]: dead, GATEWAYS[1]: Gateway(reject=rejected_by_a_delivered_part), GATEWAYS[2]: Gateway()}
    retry = RetryConfig(initial_interval=Duration(0.01), max_interval=Duration(0.01), max_elapsed_time=Duration(0.1))
    exporter, metrics = exporter_with(gateways, retry=retry)
    await exporter._queue.start()
    batch = batch_of(60)
    total = sum(len(ss.spans) for rs in batch.resource_spans for ss in rs.scope_spans)
    owned_by_full = sum(
        1
        for rs in batch.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
        if HashRing(GATEWAYS).owner(s.trace_id) == GATEWAYS[0]
    )
    exporter.consumer_for(Signal.TRACES).consume(batch)
    # Retries run out before the shutdown: a shutdown would send the waiting part to another gateway.
    await asyncio.wait_for(exporter._queue._idle.wait(), 5)
    await exporter._queue.shutdown(time.monotonic() + 5)
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total") == owned_by_full
    rejected = metric_value(text, "otel_sidecar_exporter_rejected_items_total") if rejected_by_a_delivered_part else 0
    assert rejected == rejected_by_a_delivered_part
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total") == total - owned_by_full - rejected


async def send_60_traces_through(gateways: dict[str, Gateway]) -> tuple[str, int, int]:
    """Send 60 traces through an exporter on ``gateways`` and stop it: its metrics text, the spans sent, and how
    many of them the first gateway owns."""
    import time

    exporter, metrics = exporter_with(gateways)
    await exporter._queue.start()
    batch = batch_of(60)
    spans = [s for rs in batch.resource_spans for ss in rs.scope_spans for s in ss.spans]
    owned_by_first = sum(1 for s in spans if HashRing(GATEWAYS).owner(s.trace_id) == GATEWAYS[0])
    exporter.consumer_for(Signal.TRACES).consume(batch)
    await exporter._queue.shutdown(time.monotonic() + 5)
    return metrics.render().decode(), len(spans), owned_by_first


async def test_a_gateway_rejecting_its_part_for_good_is_counted_as_the_otlp_exporter_counts_it() -> None:
    """send_failed{reason="rejected"} and rejected_items, as for a 400 to the otlp exporter; the rest is sent."""

    from agent.exporters._helper.retry import PermanentExportError

    gateways = {
        GATEWAYS[0]: Gateway(PermanentExportError("HTTP 400: bad data")),
        GATEWAYS[1]: Gateway(),
        GATEWAYS[2]: Gateway(),
    }
    text, total, owned_by_rejecting = await send_60_traces_through(gateways)
    assert 0 < owned_by_rejecting < total
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="rejected") == owned_by_rejecting
    assert metric_value(text, "otel_sidecar_exporter_rejected_items_total") == owned_by_rejecting
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total") == total - owned_by_rejecting


async def test_a_part_rerouted_after_a_timeout_counts_as_a_possible_duplicate() -> None:
    """The first gateway may have stored it before its answer was late: both may now hold it."""
    late = Gateway(RetryableError("no answer within 5s", reason="timeout", maybe_delivered=True))
    gateways = {GATEWAYS[0]: late, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    text, _, owned_by_late = await send_60_traces_through(gateways)
    assert owned_by_late > 0
    assert metric_value(text, "otel_sidecar_exporter_duplicates_total") == owned_by_late
    assert metric_value(text, "otel_sidecar_loadbalancer_rerouted_items_total") == owned_by_late


async def test_a_part_resent_to_its_gateway_after_a_timeout_counts_as_a_possible_duplicate() -> None:
    """With eject_after, a gateway that timed out once keeps its part for the retry: it may have stored it before
    its answer was late, so the retry may deliver it twice, as a retry of the otlp exporter may."""
    import time

    late = Gateway(RetryableError("no answer within 5s", reason="timeout", maybe_delivered=True), failures=1)
    gateways = {GATEWAYS[0]: late, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    fast = RetryConfig(initial_interval=Duration(0.01), max_interval=Duration(0.01))
    exporter, metrics = exporter_with(gateways, eject_after=5.0, retry=fast)
    await exporter._queue.start()
    batch = batch_of(60)
    owned_by_late = len([t for t in spans_trace_ids(batch) if HashRing(GATEWAYS).owner(t) == GATEWAYS[0]])
    exporter.consumer_for(Signal.TRACES).consume(batch)
    await asyncio.wait_for(exporter._queue._idle.wait(), 5)
    await exporter._queue.shutdown(time.monotonic() + 5)
    assert 0 < len(late.received) == owned_by_late  # resent to the same gateway, not rerouted
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_duplicates_total") == owned_by_late
    assert metric_value(text, "otel_sidecar_loadbalancer_rerouted_items_total") == 0


async def test_parts_with_no_gateway_left_to_take_them_are_not_counted_as_rerouted_or_duplicated() -> None:
    late = RetryableError("no answer within 5s", reason="timeout", maybe_delivered=True)
    exporter, metrics = exporter_with({gateway: Gateway(late) for gateway in GATEWAYS})
    with pytest.raises(RetryableError) as raised:
        await exporter._push(Signal.TRACES, batch_of(30))
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_loadbalancer_rerouted_items_total") == 0
    assert metric_value(text, "otel_sidecar_exporter_duplicates_total") == 0
    assert raised.value.maybe_delivered  # every part may sit on a gateway: a later delivery may duplicate it


class Silent(Gateway):
    """A gateway that takes the connection and never answers."""

    async def export(self, signal: Signal, request: Message, timeout: float) -> Message:
        await asyncio.Event().wait()  # until cancelled
        raise AssertionError("unreachable")


@pytest.mark.parametrize("first", ["throttled", "silent"])
async def test_what_a_cut_short_push_delivered_is_counted_as_sent_at_shutdown_not_as_lost(first: str) -> None:
    """The shutdown deadline comes while the first gateway's part waits: in the retry's backoff (a throttled
    gateway), or in the push itself (a silent one, which cancels the push: the other gateways' parts were
    counted as lost, the batch being cut down only once every gateway had answered)."""
    import time

    throttled = Gateway(RetryableError("full", reason="resource_exhausted", retry_after=30.0))
    gateways = {
        GATEWAYS[0]: throttled if first == "throttled" else Silent(),
        GATEWAYS[1]: Gateway(),
        GATEWAYS[2]: Gateway(),
    }
    exporter, metrics = exporter_with(gateways)
    await exporter._queue.start()
    batch = batch_of(60)
    total = sum(len(ss.spans) for rs in batch.resource_spans for ss in rs.scope_spans)
    owned_by_first = len([t for t in spans_trace_ids(batch) if HashRing(GATEWAYS).owner(t) == GATEWAYS[0]])
    exporter.consumer_for(Signal.TRACES).consume(batch)
    while len(gateways[GATEWAYS[1]].received) + len(gateways[GATEWAYS[2]].received) < total - owned_by_first or (
        first == "throttled" and not metric_value(metrics.render().decode(), "otel_sidecar_exporter_retries_total")
    ):
        await asyncio.sleep(0.01)
    await exporter._queue.shutdown(time.monotonic() + 0.2)
    text = metrics.render().decode()
    assert 0 < owned_by_first < total
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total") == total - owned_by_first
    # A throttled gateway's part waits in the backoff: not delivered. A silent gateway took its part and never
    # answered: it may hold it.
    reason = "shutdown" if first == "throttled" else "unconfirmed"
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason=reason) == owned_by_first
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total") == owned_by_first


class NeverConnected(Gateway):
    """A gateway whose connection never came up: its transport says, when cut short, that nothing was sent."""

    async def export(self, signal: Signal, request: Message, timeout: float) -> Message:
        from agent.exporters._helper.retry import report_cut_short

        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            report_cut_short(0)
            raise
        raise AssertionError("unreachable")


@pytest.mark.parametrize("first", ["throttled", "never_connected"])
async def test_at_the_deadline_only_the_parts_gateways_had_not_answered_for_are_unconfirmed(first: str) -> None:
    """A part refused with a retry delay is not stored: it waits, undelivered; nor is one whose gateway never
    connected (its transport's word is its part's own: the parts are sent in tasks of their own, which share the
    attempt's context). A silent gateway may hold its part."""
    import time

    throttled = Gateway(RetryableError("full", reason="resource_exhausted", retry_after=30.0))
    gateways = {
        GATEWAYS[0]: throttled if first == "throttled" else NeverConnected(),
        GATEWAYS[1]: Silent(),
        GATEWAYS[2]: Gateway(),
    }
    exporter, metrics = exporter_with(gateways)
    await exporter._queue.start()
    batch = batch_of(60)
    owners = [HashRing(GATEWAYS).owner(t) for t in spans_trace_ids(batch)]
    not_sent, silent, taken = (owners.count(g) for g in GATEWAYS)
    exporter.consumer_for(Signal.TRACES).consume(batch)
    while len(gateways[GATEWAYS[2]].received) < taken:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # a throttled gateway answered at once: its part now waits for its retry
    await exporter._queue.shutdown(time.monotonic() + 0.2)
    text = metrics.render().decode()
    assert not_sent and silent and taken
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="unconfirmed") == silent
    assert metric_value(text, "otel_sidecar_exporter_send_failed_items_total", reason="shutdown") == not_sent
    assert metric_value(text, "otel_sidecar_exporter_sent_items_total") == taken


async def test_a_gateways_refusals_during_the_shutdown_flush_are_in_its_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import time

    from agent.exporters._helper.retry import PermanentExportError

    exporter, metrics = exporter_with({g: Gateway(PermanentExportError("refused")) for g in GATEWAYS})
    await exporter._queue.start()
    with caplog.at_level(logging.WARNING):
        for i in range(5):
            exporter.consumer_for(Signal.TRACES).consume(batch_of(10 + i))
        await exporter._queue.shutdown(time.monotonic() + 5)
    failed = metric_value(metrics.render().decode(), "otel_sidecar_exporter_send_failed_items_total")
    summaries = [r.dropped_items for r in caplog.records if hasattr(r, "dropped_items")]
    assert failed > 0 and summaries == [{"traces": {"rejected": failed}}]


async def test_a_gateway_busy_for_longer_than_max_throttled_leaves_the_ring_so_the_others_keep_flowing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each ejection is logged, and a busy gateway's as busy, not failed (pass 158: the line read like a dead
    gateway's, and the second ejection, at the trial after the cooldown, was rate-limited away)."""
    caplog.set_level(logging.WARNING)
    busy = Gateway(RetryableError("busy", reason="resource_exhausted", retry_after=0.01))
    gateways = {GATEWAYS[0]: busy, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways, max_throttled=0.2)
    batch = batch_of(60)
    owned_by_busy = {t for t in trace_ids(batch) if HashRing(GATEWAYS).owner(t) == GATEWAYS[0]}
    with pytest.raises(RetryableError):  # busy for less than max_throttled: its traces wait for it
        await exporter._push(Signal.TRACES, batch)
    assert trace_ids(batch) == owned_by_busy
    await asyncio.sleep(0.25)
    assert await exporter._push(Signal.TRACES, batch) == 0  # busy for too long: out of the ring, traces moved on
    delivered = set(gateways[GATEWAYS[1]].received) | set(gateways[GATEWAYS[2]].received)
    assert owned_by_busy <= delivered and not busy.received
    assert metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_backend_ejections_total") == 1
    exporter._ejected_until.clear()  # its cooldown is over: back in the ring, and still busy
    assert await exporter._push(Signal.TRACES, batch_of(60)) == 0  # out again at once, nothing waits for it
    assert metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_backend_ejections_total") == 2
    ejections = [r.getMessage() for r in caplog.records if "its traces go to the next gateway" in r.getMessage()]
    assert (
        ejections
        == [
            f"gateway {GATEWAYS[0]} is still busy after max_throttled (200ms) (busy); its traces go to the next "
            "gateway for 5s"
        ]
        * 2
    )


async def test_with_max_throttled_0_a_busy_gateway_is_waited_for_however_long_it_stays_busy(clock: FakeClock) -> None:
    """0 means never: its traces keep waiting for it (pass 143: nothing showed it was not taken out at once)."""
    busy = Gateway(RetryableError("busy", reason="resource_exhausted", retry_after=60.0))
    gateways = {GATEWAYS[0]: busy, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways, max_throttled=0.0)
    batch = batch_of(60)
    owned_by_busy = {t for t in trace_ids(batch) if HashRing(GATEWAYS).owner(t) == GATEWAYS[0]}
    for _ in range(5):
        with pytest.raises(RetryableError):
            await exporter._push(Signal.TRACES, batch)
        clock.advance(60.0)
    assert trace_ids(batch) == owned_by_busy  # still waiting for it, not moved on
    assert not (set(gateways[GATEWAYS[1]].received) | set(gateways[GATEWAYS[2]].received)) & owned_by_busy
    assert metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_backend_ejections_total") == 0


async def test_the_healthy_gauge_follows_membership_and_cooldowns_even_when_no_data_flows() -> None:
    """`loadbalancer_healthy_backends` ("gateways currently in the ring") must not keep the value of the last push:
    a gateway the resolver dropped, or one whose cooldown ended, shows at the next scrape."""
    dead = Gateway(RetryableError("connection refused", reason="unavailable"))
    gateways = {GATEWAYS[0]: dead, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways)
    exporter._config = dataclasses.replace(exporter._config, backend_cooldown=Duration(0.2))

    def healthy() -> float:
        return metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_healthy_backends")

    def known() -> float:
        return metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_backends")

    assert await exporter._push(Signal.TRACES, batch_of(30)) == 0  # the dead one leaves the ring
    assert healthy() == 2
    await asyncio.sleep(0.25)  # its cooldown is over, no data since
    assert healthy() == 3
    await exporter._set_backends(GATEWAYS[1:])  # DNS no longer lists the first gateway; no data since
    assert known() == 2
    assert healthy() == 2


async def test_a_gateway_gone_from_the_resolver_takes_its_series_along() -> None:
    """Pod IPs change at every rollout: the per-gateway series of every address ever seen stayed for good."""
    gateways = {gateway: Gateway() for gateway in GATEWAYS}
    exporter, metrics = exporter_with(gateways)
    exporter._transports = dict(gateways)  # type: ignore[assignment]

    def routed() -> list[str]:
        lines = metrics.render().decode().splitlines()
        return [line for line in lines if line.startswith("otel_sidecar_loadbalancer_routed")]

    def ejections() -> list[str]:
        lines = metrics.render().decode().splitlines()
        return [line for line in lines if line.startswith("otel_sidecar_loadbalancer_backend_ejections")]

    assert await exporter._push(Signal.TRACES, batch_of(30)) == 0
    assert any(GATEWAYS[0] in line for line in routed())
    gateways[GATEWAYS[0]].failure = RetryableError("connection refused", reason="unavailable")
    gateways[GATEWAYS[1]].failure = RetryableError("connection refused", reason="unavailable")
    assert await exporter._push(Signal.TRACES, batch_of(30)) == 0  # both out of the ring
    assert any(GATEWAYS[0] in line for line in ejections())
    await exporter._set_backends(GATEWAYS[1:])
    assert routed() and not any(GATEWAYS[0] in line for line in routed())
    assert ejections() and not any(GATEWAYS[0] in line for line in ejections())


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ("mismatched", r"^exporters\.loadbalancing\.protocol\.tls: TLS file\(s\) not usable .*client\.pem"),
        ("missing", r"^exporters\.loadbalancing\.protocol\.tls: TLS file\(s\) not found: .*absent\.pem"),
    ],
)
def test_client_tls_files_that_could_never_make_a_handshake_are_refused_when_the_exporter_is_built(
    tmp_path: Path, files: str, expected: str
) -> None:
    """As the otlp exporter refuses to start: grpcio took a key that does not match its certificate, the agent
    reported ready, and every export failed "Failed to create security handshaker" until each batch was given up."""
    ca, _ = self_signed_certificate(tmp_path, "gateway")
    client_cert, _ = self_signed_certificate(tmp_path, "client")
    _, other_key = self_signed_certificate(tmp_path, "other")
    cert = client_cert if files == "mismatched" else tmp_path / "absent.pem"
    tls = TlsClientConfig(ca_file=str(ca), cert_file=str(cert), key_file=str(other_key))
    metrics = SelfMetrics()
    settings = CreateSettings("loadbalancing", Kind.EXPORTER, logging.getLogger("t"), metrics, ServiceConfig(), {})
    config = LoadBalancingExporterConfig(
        protocol=BackendProtocolConfig(tls=tls),
        resolver=ResolverConfig(static=StaticResolverConfig(hostnames=GATEWAYS)),
    )
    with pytest.raises(RuntimeError, match=expected):
        LoadBalancingExporter(config, settings)


async def test_a_gateways_partial_rejection_is_logged_with_its_reason_as_well_as_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rejected count alone would leave an operator the alert (OtelSidecarBackendRejectingItems) and no why."""
    partial = Gateway(reject=3)
    gateways = {GATEWAYS[0]: partial, GATEWAYS[1]: partial, GATEWAYS[2]: partial}
    exporter, _ = exporter_with(gateways)
    with caplog.at_level(logging.WARNING, logger="t"):
        assert await exporter._push(Signal.TRACES, batch_of(30)) == 9  # three parts, one per gateway
    told = [r for r in caplog.records if "accepted the batch partly" in r.getMessage()]
    assert told and told[0].getMessage().startswith("gateway 10.0.0."), [r.getMessage() for r in caplog.records]
    assert "3 spans rejected" in told[0].getMessage()
    assert getattr(told[0], "exporter", None) == "loadbalancing"


@pytest.mark.parametrize("claimed", [-3, 1000])
async def test_a_gateways_partial_rejection_counts_no_less_than_none_and_no_more_than_its_part(claimed: int) -> None:
    """The parts' rejections are added up: a gateway answering -3 (partial_success is an int64) would take refusals
    off the other gateways' count, or make the sending queue's counter refuse a negative increment; one claiming more
    than it was sent would count spans other gateways took as refused."""
    gateways = {GATEWAYS[0]: Gateway(reject=claimed), GATEWAYS[1]: Gateway(reject=2), GATEWAYS[2]: Gateway()}
    exporter, _ = exporter_with(gateways)
    rejected = await exporter._push(Signal.TRACES, batch_of(30))
    first_part = len(gateways[GATEWAYS[0]].received)
    assert rejected == (2 if claimed < 0 else first_part + 2)


async def test_the_items_held_during_a_retry_are_the_part_no_gateway_took_yet() -> None:
    """What a second SIGTERM reports lost: two gateways took their parts, the third's waits for its retry."""
    busy = Gateway(RetryableError("full", reason="unavailable", retry_after=5.0))
    retry = RetryConfig(initial_interval=Duration(5), max_interval=Duration(5), max_elapsed_time=Duration(60))
    exporter, _ = exporter_with({GATEWAYS[0]: busy, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}, retry=retry)
    batch = batch_of(60)
    ring = HashRing(GATEWAYS)
    waiting = sum(1 for trace_id in spans_trace_ids(batch) if ring.owner(trace_id) == GATEWAYS[0])
    assert 0 < waiting < len(spans_trace_ids(batch))
    await exporter._queue.start()
    try:
        exporter.consumer_for(Signal.TRACES).consume(batch)
        await asyncio.sleep(0.2)  # the first attempt is done; the retry waits 5 s
        assert exporter.held_items() == waiting
    finally:
        await exporter._queue.shutdown(time.monotonic() + 0.1)


class BusyForTraces(Gateway):
    """A gateway whose traces queue is full while its logs queue takes data: its queues refuse signals apart."""

    def __init__(self) -> None:
        super().__init__()
        self.logs_received = 0

    async def export(self, signal: Signal, request: Message, timeout: float) -> Message:
        if signal is Signal.TRACES:
            raise RetryableError("traces queue full", reason="unavailable", retry_after=0.01)
        self.logs_received += 1
        return ExportLogsServiceResponse()


def logs_of(trace_ids: set[bytes]) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for trace_id in sorted(trace_ids):
        records.add(trace_id=trace_id, body=AnyValue(string_value="step done"))
    return request


async def test_logs_a_busy_gateway_takes_do_not_end_the_busy_spell_of_its_traces(clock: FakeClock) -> None:
    """Any answer of a gateway ended its busy spell: one refusing traces but taking logs was waited for again
    after every cooldown, stalling the sidecar's whole queue about half the time (pass 110)."""
    busy = BusyForTraces()
    gateways = {GATEWAYS[0]: busy, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways, max_throttled=10.0)
    batch = batch_of(60)
    owned_by_busy = {t for t in trace_ids(batch) if HashRing(GATEWAYS).owner(t) == GATEWAYS[0]}
    with pytest.raises(RetryableError):  # busy for less than max_throttled: its traces wait for it
        await exporter._push(Signal.TRACES, batch)
    clock.advance(11.0)
    assert await exporter._push(Signal.LOGS, logs_of(owned_by_busy)) == 0
    assert busy.logs_received == 1  # the logs went to it: it takes them
    assert await exporter._push(Signal.TRACES, batch) == 0  # its traces are busy since 11 s: out, not waited for
    delivered = set(gateways[GATEWAYS[1]].received) | set(gateways[GATEWAYS[2]].received)
    assert owned_by_busy <= delivered
    assert metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_backend_ejections_total") == 1


class Hung(Gateway):
    """A gateway that holds every request until the attempt times out."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def export(self, signal: Signal, request: Message, timeout: float) -> Message:
        self.calls += 1
        await asyncio.sleep(0.05)
        raise RetryableError("deadline exceeded", reason="timeout", maybe_delivered=True)


async def test_a_gateway_every_consumer_was_waiting_on_is_ejected_once() -> None:
    """Each part failing at a hung gateway counted an ejection and restarted its cooldown: one ejection counted as
    many as the queue's consumers (pass 110)."""
    gateways = {GATEWAYS[0]: Hung(), GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways)
    pushes = [exporter._push(Signal.TRACES, batch_of(60 + n)) for n in range(5)]  # five consumers at once
    assert await asyncio.gather(*pushes) == [0] * 5  # every part went on to the next owner
    assert metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_backend_ejections_total") == 1


async def test_a_gateway_back_from_its_cooldown_is_tried_with_one_batch_while_the_others_go_round_it(
    clock: FakeClock,
) -> None:
    """At the end of each cooldown every consumer's part went to a hung gateway and waited for protocol.timeout:
    the sidecar's queue stalled about half the time while the gateway stayed in DNS (pass 110). One batch tries it;
    the others go round it until that one is answered."""
    hung = Hung()
    gateways = {GATEWAYS[0]: hung, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, metrics = exporter_with(gateways)
    assert await exporter._push(Signal.TRACES, batch_of(60)) == 0
    assert hung.calls == 1
    clock.advance(60.0)  # the cooldown is over
    pushes = [exporter._push(Signal.TRACES, batch_of(60 + n)) for n in range(5)]
    assert await asyncio.gather(*pushes) == [0] * 5
    assert hung.calls == 2  # one trial, not one part per consumer
    assert metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_backend_ejections_total") == 2
    healthy = Gateway()
    exporter._transports[GATEWAYS[0]] = healthy  # type: ignore[assignment]  # it recovers
    clock.advance(60.0)
    for n in range(3):
        assert await exporter._push(Signal.TRACES, batch_of(70 + n)) == 0
    assert healthy.received  # tried, answered, taken back
    assert GATEWAYS[0] not in exporter._ejected_until and not exporter._on_trial


async def test_with_every_gateway_back_from_its_cooldown_no_batch_is_left_without_a_gateway(clock: FakeClock) -> None:
    """Trials took every cooled-down gateway: a one-gateway tier (or a tier a network blip emptied) left the other
    batches no gateway at all, and with retries off they were dropped (pass 112)."""
    only = Gateway()
    exporter, _ = exporter_with({GATEWAYS[0]: only}, retry=RetryConfig(enabled=False))
    exporter._ejected_until[GATEWAYS[0]] = clock() - 1.0  # ejected, its cooldown over
    pushes = [exporter._push(Signal.TRACES, batch_of(60 + n)) for n in range(5)]
    assert await asyncio.gather(*pushes) == [0] * 5
    assert len(only.received) == sum(len(spans_trace_ids(batch_of(60 + n))) for n in range(5))


async def test_a_gateway_back_from_its_cooldown_busy_keeps_its_traces_waiting_for_it(clock: FakeClock) -> None:
    """A busy answer to the trial left it on probation: every later batch was a new trial, one at a time, and
    the batches between went round it, splitting its traces (pass 112). A busy gateway is there: it is back."""
    busy = Gateway(RetryableError("busy", reason="unavailable", retry_after=0.01))
    others = {GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}
    exporter, _ = exporter_with({GATEWAYS[0]: busy, **others})
    exporter._ejected_until[GATEWAYS[0]] = clock() - 1.0
    batches = [batch_of(60 + n) for n in range(3)]
    owned = {t for b in batches for t in trace_ids(b) if HashRing(GATEWAYS).owner(t) == GATEWAYS[0]}
    with pytest.raises(RetryableError):
        await exporter._push(Signal.TRACES, batches[0])  # the trial: busy, its part waits
    outcomes = await asyncio.gather(*(exporter._push(Signal.TRACES, b) for b in batches[1:]), return_exceptions=True)
    assert all(isinstance(o, RetryableError) for o in outcomes)  # their parts for it wait for it too
    assert not owned & {t for g in others.values() for t in g.received}


async def test_a_gateway_removed_while_its_part_was_out_leaves_no_ejection_behind() -> None:
    """Its failure, coming after the resolver dropped it, recreated its cooldown and its ejections series, which then
    stayed for good (pass 112)."""
    hung = Hung()
    exporter, metrics = exporter_with({GATEWAYS[0]: hung, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()})
    push = asyncio.ensure_future(exporter._push(Signal.TRACES, batch_of(60)))
    await asyncio.sleep(0.01)  # its part is out at the hung gateway
    await exporter._set_backends(GATEWAYS[1:])
    assert await push == 0  # its part went on to the next owner
    assert GATEWAYS[0] not in exporter._ejected_until
    lines = metrics.render().decode().splitlines()
    assert not [line for line in lines if "backend_ejections" in line and GATEWAYS[0] in line]


class Manual(Gateway):
    """Each export waits until the test answers it: ``calls[i].set_result(None or an error)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[asyncio.Future[BaseException | None]] = []

    async def export(self, signal: Signal, request: Message, timeout: float) -> Message:
        answer = asyncio.get_running_loop().create_future()
        self.calls.append(answer)
        error = await answer
        if error is not None:
            raise error
        self.received.extend(spans_trace_ids(request))  # type: ignore[arg-type]
        return ExportTraceServiceResponse()


def refused() -> RetryableError:
    return RetryableError("connection refused", reason="unavailable")


async def test_a_part_sent_before_the_ejection_failing_after_the_cooldown_neither_ejects_again_nor_ends_the_trial(
    clock: FakeClock,
) -> None:
    """A part out at the gateway before it left, failing once a trial was under way, ejected it again (two
    ejections for one outage, and the trial's success undone) and ended the trial, so that another batch tried it
    at the same time (pass 113)."""
    manual = Manual()
    exporter, metrics = exporter_with({GATEWAYS[0]: manual, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()})
    early = asyncio.ensure_future(exporter._push(Signal.TRACES, batch_of(60)))  # its part stays out
    failing = asyncio.ensure_future(exporter._push(Signal.TRACES, batch_of(61)))
    await asyncio.sleep(0.01)
    clock.advance(0.1)
    manual.calls[1].set_result(refused())
    assert await failing == 0  # the gateway left the ring; its part went on
    clock.advance(5.0)  # the cooldown is over
    trial = asyncio.ensure_future(exporter._push(Signal.TRACES, batch_of(62)))
    await asyncio.sleep(0.01)
    assert len(manual.calls) == 3 and exporter._on_trial == {GATEWAYS[0]}
    manual.calls[0].set_result(refused())  # the early part fails only now
    assert await early == 0
    assert exporter._on_trial == {GATEWAYS[0]}  # still the one trial
    other = asyncio.ensure_future(exporter._push(Signal.TRACES, batch_of(63)))
    await asyncio.sleep(0.01)
    assert len(manual.calls) == 3  # goes round it while the trial is out
    manual.calls[2].set_result(None)
    assert await trial == 0 and await other == 0
    assert GATEWAYS[0] not in exporter._ejected_until  # back
    assert metric_value(metrics.render().decode(), "otel_sidecar_loadbalancer_backend_ejections_total") == 1


@pytest.mark.parametrize("answer", ["taken", "failed", "busy"])
async def test_a_late_answer_from_a_gateway_the_resolver_dropped_leaves_no_state_or_series(answer: str) -> None:
    """db8aed1 stopped its ejection; its routed series, failing and busy spells came back too, and a failure of
    the old connection ejected the gateway re-added under the same address (pass 113)."""
    manual = Manual()
    exporter, metrics = exporter_with(
        {GATEWAYS[0]: manual, GATEWAYS[1]: Gateway(), GATEWAYS[2]: Gateway()}, eject_after=5.0
    )
    readded = Gateway()
    exporter._make_transport = lambda endpoint: readded  # type: ignore[method-assign,assignment,return-value]
    push = asyncio.ensure_future(exporter._push(Signal.TRACES, batch_of(60)))
    await asyncio.sleep(0.01)
    await exporter._set_backends(GATEWAYS[1:])
    await exporter._set_backends(GATEWAYS)  # back under the same address, a new connection
    error = {"taken": None, "failed": refused(), "busy": RetryableError("busy", reason="unavailable", retry_after=1)}
    manual.calls[0].set_result(error[answer])
    assert await push == 0  # taken, or gone on to the owners the ring has now
    assert not exporter._ejected_until and not exporter._failing_since and not exporter._throttled_since
    lines = metrics.render().decode().splitlines()
    assert not [line for line in lines if "backend_ejections" in line and GATEWAYS[0] in line and "#" not in line]
    if answer == "taken":  # by the old connection: not the new one's delivery, and that one took nothing
        assert not [line for line in lines if "routed_items" in line and GATEWAYS[0] in line and "#" not in line]


async def test_the_first_membership_is_logged_as_resolved_and_later_ones_as_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a reload the exporter is new, and its first membership read as every gateway added (pass 158)."""
    caplog.set_level(logging.INFO)
    exporter, _ = exporter_with({})
    await exporter._set_backends(GATEWAYS)
    await exporter._set_backends(GATEWAYS[1:])
    lines = [(r.getMessage(), getattr(r, "added", None), getattr(r, "removed", None)) for r in caplog.records]
    assert [line for line in lines if "gateway" in line[0]] == [
        ("gateways resolved", None, None),
        ("gateway membership changed", [], [GATEWAYS[0]]),
    ]
    await asyncio.gather(*(transport.close() for transport in exporter._transports.values()))


async def test_a_failing_gateway_is_logged_as_failed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    gateways = {
        GATEWAYS[0]: Gateway(RetryableError("connection refused", reason="unavailable")),
        GATEWAYS[1]: Gateway(),
    }
    exporter, _ = exporter_with({**gateways, GATEWAYS[2]: Gateway()})
    assert await exporter._push(Signal.TRACES, batch_of(60)) == 0
    assert [r.getMessage() for r in caplog.records if "next gateway" in r.getMessage()] == [
        f"gateway {GATEWAYS[0]} failed (connection refused); its traces go to the next gateway for 5s"
    ]
