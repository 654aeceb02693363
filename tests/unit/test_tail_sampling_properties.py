"""Properties of the tail sampler over random interleavings, and the statistics of its probabilistic share."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.otlp.probability import is_sampled
from tests.unit.test_tail_sampling_support import (
    TEN_PERCENT_THRESHOLD,
    Rig,
    exported_spans,
    rig,
    span,
    spans_request,
)


@dataclass
class TraceSpec:
    trace_id: bytes
    spans: int
    error_span: int | None  # index of the failing span, if any


@dataclass
class Scenario:
    traces: list[TraceSpec]
    order: list[tuple[int, int]]  # (trace index, span index) in arrival order
    cuts: list[int]  # batch boundaries in ``order``
    advances: list[float]  # clock advance after each batch
    max_traces: int
    max_spans_per_trace: int
    refuse_steps: set[int] = field(default_factory=set)


@st.composite
def scenarios(draw: Any, with_refusals: bool = False) -> Scenario:
    count = draw(st.integers(1, 8))
    traces = []
    for index in range(count):
        randomness = draw(st.integers(0, (1 << 56) - 1))
        trace_id = index.to_bytes(9, "big") + randomness.to_bytes(7, "big")
        spans = draw(st.integers(1, 6))
        error = draw(st.one_of(st.none(), st.integers(0, spans - 1)))
        traces.append(TraceSpec(trace_id, spans, error))
    order = [(t, s) for t, spec in enumerate(traces) for s in range(spec.spans)]
    order = draw(st.permutations(order))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=len(order))))
    batches = len(cuts) + 1
    advances = draw(st.lists(st.sampled_from([0.0, 0.3, 1.0, 2.0, 2.5, 6.0, 11.0]), min_size=batches, max_size=batches))
    max_traces = draw(st.integers(2, 10))
    max_spans = draw(st.integers(3, 10))
    refuse = draw(st.sets(st.integers(0, 2 * batches), max_size=batches)) if with_refusals else set()
    return Scenario(traces, list(order), cuts, advances, max_traces, max_spans, refuse)


@dataclass
class Run:
    rig: Rig
    sent_at: dict[tuple[bytes, bytes], int]  # span → step it was sent at
    emitted_at: list[int]  # sink batch index → step it was emitted at


def run(scenario: Scenario) -> Run:
    r = rig(max_traces=scenario.max_traces, max_spans_per_trace=scenario.max_spans_per_trace)
    sent_at: dict[tuple[bytes, bytes], int] = {}
    emitted_at: list[int] = []
    step = 0

    def note_emissions() -> None:
        emitted_at.extend([step] * (len(r.trace_sink.batches) - len(emitted_at)))

    bounds = [0, *scenario.cuts, len(scenario.order)]
    for batch_index in range(len(bounds) - 1):
        spans = []
        for t, s in scenario.order[bounds[batch_index] : bounds[batch_index + 1]]:
            spec = scenario.traces[t]
            spans.append(span(spec.trace_id, s, root=s == 0, error=s == spec.error_span))
            sent_at[(spec.trace_id, s.to_bytes(8, "big"))] = step
        r.trace_sink.refusing = step in scenario.refuse_steps
        r.traces.consume(spans_request(*spans))  # never refused: the bytes bound is far away
        note_emissions()
        step += 1
        r.trace_sink.refusing = step in scenario.refuse_steps
        r.tick_after(scenario.advances[batch_index])
        note_emissions()
        step += 1
    r.trace_sink.refusing = False
    for _ in range(3):
        r.tick_after(11)
        note_emissions()
    return Run(r, sent_at, emitted_at)


def check_exactly_once_and_complete(scenario: Scenario, result: Run) -> dict[bytes, list[Any]]:
    out = exported_spans(result.rig.trace_sink)
    keys = [(o.trace_id, o.span_id) for o in out]
    assert len(keys) == len(set(keys)), "a span was exported twice"
    by_trace: dict[bytes, list[Any]] = {}
    for o in out:
        by_trace.setdefault(o.trace_id, []).append(o)
    for spec in scenario.traces:
        exported = by_trace.get(spec.trace_id, [])
        classes = {(o.retention_class, o.policy) for o in exported}
        if len(classes) > 1:
            # Kept by the 10% and failed after the decision: raised to the errors policy's class from the failing
            # span's request on (policies.errors.keep_late_failures), the spans sent before keep theirs.
            assert spec.error_span is not None, "spans of one trace carry different decisions"
            assert classes == {("standard", "probabilistic"), ("error", "errors")}, classes
            since = result.sent_at[(spec.trace_id, spec.error_span.to_bytes(8, "big"))]
            for o in exported:
                raised = result.sent_at[(o.trace_id, o.span_id)] >= since
                assert (o.retention_class == "error") == raised, (spec, exported)
            classes = {("error", "errors")}
        # Kept: every span, late ones included, comes out; dropped: none does. Nothing is left behind. Except a
        # trace dropped before its failure came: from the failing span's request on, everything is kept.
        if 0 < len(exported) < spec.spans:
            assert spec.error_span is not None, (spec, exported)
            since = result.sent_at[(spec.trace_id, spec.error_span.to_bytes(8, "big"))]
            expected = {
                span_id for (tid, span_id), at in result.sent_at.items() if tid == spec.trace_id and at >= since
            }
            assert {o.span_id for o in exported} == expected, (spec, exported)
            assert classes == {("error", "errors")}
        if spec.error_span is not None:
            assert spec.error_span.to_bytes(8, "big") in {o.span_id for o in exported}, "a failed span was dropped"
        elif not is_sampled(spec.trace_id, TEN_PERCENT_THRESHOLD):
            assert exported == [], "a trace no policy keeps was exported"
        if is_sampled(spec.trace_id, TEN_PERCENT_THRESHOLD):
            assert len(exported) == spec.spans, "a trace the probabilistic policy keeps was not exported"
    assert len(result.rig.sampler.buffer) == 0
    return by_trace


@given(scenarios())
@settings(max_examples=150)
def test_every_kept_trace_comes_out_exactly_once_and_together_and_late_spans_follow_the_decision(
    scenario: Scenario,
) -> None:
    result = run(scenario)
    by_trace = check_exactly_once_and_complete(scenario, result)
    for trace_id, exported in by_trace.items():
        first = min(o.batch for o in exported)
        decided_at = result.emitted_at[first]
        for o in exported:
            if result.sent_at[(trace_id, o.span_id)] <= decided_at:
                # Everything that had arrived when the trace was decided leaves in one request.
                assert o.batch == first, "spans buffered together were released separately"
            else:
                assert o.batch > first  # a late span, forwarded by the cached decision


@given(scenarios(with_refusals=True))
@settings(max_examples=100)
def test_refusals_downstream_delay_but_never_duplicate_or_lose_a_kept_span(scenario: Scenario) -> None:
    result = run(scenario)
    check_exactly_once_and_complete(scenario, result)
    assert result.rig.sampler.pending_bytes == 0


def normal_traces(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(count)]


def kept_ids(r: Rig) -> set[bytes]:
    return {o.trace_id for o in exported_spans(r.trace_sink)}


def test_the_kept_fraction_of_normal_traces_stays_within_binomial_bounds_of_ten_percent() -> None:
    n, p = 20_000, 0.1
    r = rig(max_traces=n)
    ids = normal_traces(n, seed=2024)
    for start in range(0, n, 500):
        r.traces.consume(spans_request(*(span(tid, 1, root=True) for tid in ids[start : start + 500])))
    r.tick_after(11)
    kept = len(kept_ids(r))
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * p) <= 5 * sigma, (kept, n * p, sigma)
    assert r.metric("otel_sidecar_sampling_decisions_total", policy="probabilistic", decision="keep") == kept


def test_two_instances_given_disjoint_halves_of_the_same_traces_keep_exactly_the_same_trace_ids() -> None:
    ids = normal_traces(3000, seed=7)
    first, second = rig(max_traces=5000), rig(max_traces=5000)
    for tid in ids:
        # The orchestrator half of every trace goes to one sidecar, the llm-gateway half to the other.
        first.traces.consume(spans_request(span(tid, 0, root=True), span(tid, 1), service="orchestrator"))
        second.traces.consume(spans_request(span(tid, 2), span(tid, 3), service="llm-gateway"))
    first.tick_after(11)
    second.tick_after(11)
    assert kept_ids(first) == kept_ids(second) == {t for t in ids if is_sampled(t, TEN_PERCENT_THRESHOLD)}
    assert 200 < len(kept_ids(first)) < 400
