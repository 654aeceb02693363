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
