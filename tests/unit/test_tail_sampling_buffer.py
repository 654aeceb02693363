"""The trace buffer's building blocks: grouping a scope's spans by trace, and estimating their protobuf size."""

from __future__ import annotations

from agent.processors.tail_sampling.buffer import SpanSizes, group_by_trace
from agent.testing.workload import Workload
from tests.unit.test_tail_sampling_support import span, spans_request, trace_id_with_randomness

A, B = trace_id_with_randomness(1), trace_id_with_randomness(2)


def test_grouping_finds_each_traces_spans_by_position_even_interleaved_with_roots_and_failures() -> None:
    request = spans_request(span(A, 1, root=True), span(B, 2), span(A, 3, error=True), span(B, 4, root=True))
    groups, roots, failed = group_by_trace(request.resource_spans[0].scope_spans[0].spans)
    assert groups == {A: [0, 2], B: [1, 3]}
    assert roots == [A, B]
    assert failed == [A]


def test_the_span_size_estimate_stays_close_to_the_exact_protobuf_size_of_everything_buffered() -> None:
    sizes = SpanSizes()
    estimated = exact = 0.0
    for request, _ in Workload(seed=5).requests(2000):
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                estimated += sizes.per_span(ss, len(ss.spans)) * len(ss.spans)
                exact += ss.ByteSize()
    assert abs(estimated - exact) < 0.05 * exact, (estimated, exact)


def test_the_first_scope_is_measured_exactly() -> None:
    scope = spans_request(span(A, 1), span(A, 2)).resource_spans[0].scope_spans[0]
    assert SpanSizes().per_span(scope, 2) == scope.ByteSize() / 2
