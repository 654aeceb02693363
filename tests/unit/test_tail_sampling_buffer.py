"""The trace buffer's building blocks: grouping a scope's spans by trace, and counting the bytes it holds."""

from __future__ import annotations

from agent.processors.tail_sampling.buffer import (
    FRAGMENT_OVERHEAD_BYTES,
    TRACE_OVERHEAD_BYTES,
    TraceBuffer,
    group_by_trace,
)
from tests.unit.test_tail_sampling_support import (
    log_record,
    logs_request,
    rig,
    span,
    spans_request,
    trace_id_with_randomness,
)

A, B = trace_id_with_randomness(1), trace_id_with_randomness(2)
NO_SAMPLING = {"policies": {"probabilistic": {"enabled": False}, "errors": {"enabled": False}}}


def test_grouping_finds_each_traces_spans_by_position_even_interleaved_with_roots_and_failures() -> None:
    request = spans_request(span(A, 1, root=True), span(B, 2), span(A, 3, error=True), span(B, 4, root=True))
    groups, roots, failed, _ = group_by_trace(request.resource_spans[0].scope_spans[0].spans)
    assert groups == {A: [0, 2], B: [1, 3]}
    assert roots == [A, B]
    assert failed == [A]


def test_buffered_bytes_are_the_exact_size_of_each_scope_held_even_when_spans_are_unusually_large() -> None:
    """Small spans first, then spans with a 20 KB prompt: the bound must see the large ones at their size."""
    r = rig(max_buffered_bytes=1 << 30, **NO_SAMPLING)
    for number in range(200):
        r.traces.consume(spans_request(span(trace_id_with_randomness(number + 1), number)))
    big = spans_request(
        *(span(trace_id_with_randomness(10_000 + n), n, attributes={"gen_ai.prompt": "x" * 20_000}) for n in range(50))
    )
    before = r.sampler.buffer.bytes
    r.traces.consume(big)
    held = r.sampler.buffer.bytes - before
    exact = big.resource_spans[0].scope_spans[0].ByteSize()
    assert exact <= held <= exact + 50 * (TRACE_OVERHEAD_BYTES + FRAGMENT_OVERHEAD_BYTES)


def test_a_request_kept_alive_by_a_buffered_trace_counts_whole_until_that_trace_leaves() -> None:
    """Late spans of a dropped trace beside one span of a new trace: holding that span keeps the request."""
    r = rig(max_buffered_bytes=1 << 30, **NO_SAMPLING)
    dropped = trace_id_with_randomness(1)
    r.traces.consume(spans_request(span(dropped, 1)))
    r.tick_after(11)  # decided (dropped: no policy keeps it)
    assert r.sampler.buffer.bytes == 0
    new = trace_id_with_randomness(2)
    late = [span(dropped, 100 + n, attributes={"payload": "y" * 2000}) for n in range(100)]
    pinning = spans_request(*late, span(new, 2))
    r.traces.consume(pinning)
    whole = pinning.resource_spans[0].scope_spans[0].ByteSize()
    assert whole <= r.sampler.buffer.bytes <= whole + TRACE_OVERHEAD_BYTES + FRAGMENT_OVERHEAD_BYTES
    assert r.metric("otel_sidecar_sampling_late_spans_total", decision="drop") == 100
    r.tick_after(11)
    assert r.sampler.buffer.bytes == 0


def test_pinned_requests_count_against_the_byte_bound_and_force_decisions() -> None:
    r = rig(max_buffered_bytes=1 << 20, **NO_SAMPLING)  # 1 MiB; each request below pins about 200 KB
    dropped = trace_id_with_randomness(1)
    r.traces.consume(spans_request(span(dropped, 1)))
    r.tick_after(11)
    for number in range(20):
        late = [span(dropped, 1000 * number + n, attributes={"payload": "y" * 2000}) for n in range(100)]
        r.traces.consume(spans_request(*late, span(trace_id_with_randomness(number + 2), number + 2)))
        assert r.sampler.buffer.bytes <= 1 << 20
    assert r.metric("otel_sidecar_sampling_forced_decisions_total", reason="max_buffered_bytes") > 0


def test_a_request_counts_whole_until_the_last_trace_holding_part_of_it_is_decided() -> None:
    """99 spans of traces with a local root (decided after 2 s) and one of a trace entering from elsewhere (no
    root: it waits the full 10 s). The request stays in memory while that one span is held, so it must stay
    counted: the byte bound is about memory, not about spans still buffered."""
    r = rig(max_buffered_bytes=1 << 30, **NO_SAMPLING)
    quick = [span(trace_id_with_randomness(n + 1), n, root=True, attributes={"p": "q" * 2000}) for n in range(99)]
    slow = span(trace_id_with_randomness(500), 500)
    request = spans_request(*quick, slow)
    r.traces.consume(request)
    whole = request.ByteSize()
    assert whole <= r.sampler.buffer.bytes <= whole + 100 * (TRACE_OVERHEAD_BYTES + FRAGMENT_OVERHEAD_BYTES)
    r.tick_after(3)  # the 99 rooted traces are decided; the slow one still holds the request
    assert len(r.sampler.buffer) == 1
    assert whole <= r.sampler.buffer.bytes
    r.tick_after(8)
    assert r.sampler.buffer.bytes == 0


def test_a_log_request_kept_alive_by_a_held_record_counts_whole_until_its_trace_leaves() -> None:
    r = rig(max_buffered_bytes=1 << 30, **NO_SAMPLING)
    waiting = trace_id_with_randomness(2)
    r.traces.consume(spans_request(span(waiting, 1)))
    spans_only = r.sampler.buffer.bytes
    passing = [log_record(body="z" * 2000) for _ in range(100)]  # no trace: classified and passed at once
    logs = logs_request(*passing, log_record(trace_id=waiting))
    r.logs.consume(logs)
    whole = logs.resource_logs[0].scope_logs[0].ByteSize()
    assert whole <= r.sampler.buffer.bytes - spans_only <= whole + FRAGMENT_OVERHEAD_BYTES
    r.tick_after(11)
    assert r.sampler.buffer.bytes == 0


def test_given_the_requests_size_the_sampler_counts_it_instead_of_measuring() -> None:
    r = rig(max_buffered_bytes=1 << 30, **NO_SAMPLING)
    batch = spans_request(*(span(trace_id_with_randomness(n + 1), n) for n in range(10)))
    r.traces.consume_sized(batch, 100_000)  # a wire size far from the scope's own: it is the one counted
    overheads = 10 * (TRACE_OVERHEAD_BYTES + FRAGMENT_OVERHEAD_BYTES)
    assert 100_000 - 10 <= r.sampler.buffer.bytes - overheads <= 100_000


def test_the_oldest_traces_count_a_log_only_trace_once() -> None:
    buffer = TraceBuffer(decision_wait=10.0, after_root=2.0)
    logs_first = buffer.create_for_logs(b"\x01" * 16, now=0.0)
    with_spans = buffer.create(b"\x02" * 16, now=1.0)
    with_spans.span_count = 1
    assert buffer.oldest(3) == [logs_first, with_spans]


def test_a_slice_of_due_traces_stops_once_it_holds_max_spans() -> None:
    buffer = TraceBuffer(decision_wait=1.0, after_root=1.0)
    traces = [buffer.create(bytes([n]) * 16, now=0.0) for n in (1, 2, 3)]
    for trace in traces:
        trace.span_count = 1
    assert buffer.due(5.0, max_spans=2) == (traces[:2], True)
    assert buffer.due(5.0) == (traces, False)
