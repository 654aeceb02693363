"""Building released requests: stamped resources and tracestates remembered across releases, within a bound."""

from __future__ import annotations

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from agent.processors.tail_sampling.output import StampMemo
from tests.unit.test_tail_sampling_support import resource, resource_attrs


def test_a_stamped_resource_carries_class_and_policy_and_leaves_the_original_untouched() -> None:
    original = resource("orchestrator", **{"retention.class": "forever"})
    stamped = Resource.FromString(StampMemo().stamped_resource((b"k", "error", "errors"), original))
    assert resource_attrs(stamped) == {
        "service.name": "orchestrator",
        "retention.class": "error",
        "sampling.policy": "errors",
    }
    assert resource_attrs(original)["retention.class"] == "forever"


def test_the_memo_reuses_what_it_stamped_and_forgets_everything_past_its_limit() -> None:
    memo = StampMemo(limit=3)
    first = memo.stamped_resource((b"a", "standard", "probabilistic"), resource("a"))
    assert memo.stamped_resource((b"a", "standard", "probabilistic"), resource("ignored")) is first
    for name in (b"b", b"c", b"d"):
        memo.stamped_resource((name, "standard", "probabilistic"), resource(name.decode()))
    assert len(memo.resources) <= 3
    assert memo.tracestate("vendor=x", 0).kept == "ot=th:0,vendor=x"
    assert len(memo.tracestates) == 1


def test_the_memo_keeps_a_tracestate_per_threshold() -> None:
    memo = StampMemo()
    assert memo.tracestate("", 1 << 55).kept == "ot=th:8"
    assert memo.tracestate("", 1 << 54).kept == "ot=th:4"  # the same tracestate at another threshold


def test_built_spans_keep_their_resource_and_scope_schema_urls_and_resources_of_two_schemas_stay_apart() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from agent.component import Signal
    from agent.processors.tail_sampling.output import OutputBuilder

    request = ExportTraceServiceRequest()
    for version in ("1.20.0", "1.26.0"):
        rs = request.resource_spans.add(schema_url=f"https://opentelemetry.io/schemas/{version}")
        rs.resource.CopyFrom(resource("orchestrator"))
        ss = rs.scope_spans.add(schema_url="https://opentelemetry.io/schemas/1.21.0")
        ss.spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    builder = OutputBuilder(Signal.TRACES)
    for rs in request.resource_spans:
        builder.add_spans(rs, rs.scope_spans[0], [0], "standard", "probabilistic", 0)
    out = builder.build()
    assert [rs.schema_url for rs in out.resource_spans] == [rs.schema_url for rs in request.resource_spans]
    assert [rs.scope_spans[0].schema_url for rs in out.resource_spans] == [
        "https://opentelemetry.io/schemas/1.21.0"
    ] * 2
