"""OTEP 235 tracestate fields: what is read as a threshold or a randomness, and what is ignored."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.otlp.probability import (
    MAX_THRESHOLD,
    decode_threshold,
    encode_threshold,
    explicit_randomness,
    threshold_for,
    with_threshold,
)


@pytest.mark.parametrize("value", ["0x1234567890ab", "1_234567890abc", " 1234567890abc", "1234567890ABCD", "123"])
def test_an_rv_that_is_not_14_lowercase_hex_digits_is_ignored(value: str) -> None:
    """Python's int() takes 0x…, underscores, spaces: an SDK would fall back to the trace id where the agent did
    not, and the two would disagree on the same trace."""
    assert explicit_randomness(f"ot=rv:{value}") is None


def test_a_valid_rv_is_read() -> None:
    assert explicit_randomness("ot=th:c;rv:ffffffffffff00,vendor=x") == 0xFFFFFFFFFFFF00


@pytest.mark.parametrize("value", ["0x", " e", "e_1", "E", "", "123456789abcdef"])
def test_a_malformed_th_is_ignored(value: str) -> None:
    assert decode_threshold(value) is None


@given(st.integers(min_value=0, max_value=MAX_THRESHOLD - 1))
def test_every_threshold_survives_its_encoding(threshold: int) -> None:
    assert decode_threshold(encode_threshold(threshold)) == threshold


TEN = threshold_for(0.1)  # e6666666666666
ONE = encode_threshold(threshold_for(0.01))  # fd70a3d70a3d71
KEYS = [f"k{i}=v" for i in range(32)]


@pytest.mark.parametrize(
    ("tracestate", "threshold", "trace_randomness", "expected"),
    [
        ("vendor=x", TEN, None, "ot=th:e6666666666666,vendor=x"),
        # Duplicate ot members (W3C allows a key once): the first is read, and the only one written.
        ("ot=rv:ffffffffffffff,v=x,ot=rv:00000000000000", TEN, None, "ot=th:e6666666666666;rv:ffffffffffffff,v=x"),
        (f"ot=th:{ONE},vendor=x,ot=th:8", TEN, MAX_THRESHOLD - 1, f"ot=th:{ONE},vendor=x"),
        # An upstream threshold the randomness does not reach: an inconsistent sampler, erased.
        (f"ot=th:{ONE};rv:00000000000010", 0, None, "ot=rv:00000000000010"),
        (f"ot=th:{ONE}", TEN, 1, ""),
        # A span whose own rv is below the threshold the trace was kept at (its trace decided by another rv).
        ("ot=rv:00000000000001;x:y,v=1", TEN, None, "ot=rv:00000000000001;x:y,v=1"),
        # A malformed upstream threshold: the probability is unknown, so none is written.
        ("ot=th:FD70A4;x:1", TEN, None, "ot=x:1"),
        ("ot=th:123456789abcdef", 0, None, ""),
        # At most 32 members: the right-most other member gives way to ot.
        (",".join(KEYS[:32]), TEN, None, ",".join(["ot=th:e6666666666666", *KEYS[:31]])),
        # An ot value over 256 characters is not written: the tracestate stays as it came.
        ("ot=x:" + "a" * 247 + ",v=1", TEN, None, "ot=x:" + "a" * 247 + ",v=1"),
    ],
    ids=[
        "added", "duplicate-rv", "duplicate-th", "rv-below-upstream", "id-below-upstream", "own-rv-below-ours",
        "uppercase-th", "long-th", "33-members", "ot-over-256",
    ],
)  # fmt: skip
def test_a_kept_spans_tracestate_follows_the_w3c_and_opentelemetry_rules(
    tracestate: str, threshold: int, trace_randomness: int | None, expected: str
) -> None:
    """Pass 130, against the W3C Trace Context and OpenTelemetry tracestate specifications."""
    assert with_threshold(tracestate, threshold, trace_randomness) == expected


_MEMBER = st.from_regex(r"[a-z][a-z0-9_\-*/]{0,8}=[!-+\--<>-~]{1,8}", fullmatch=True).filter(
    lambda m: not m.startswith("ot=")
)


@given(st.lists(_MEMBER, max_size=40, unique_by=lambda m: m.partition("=")[0]), st.sampled_from([0, TEN]))
def test_a_stamped_tracestate_has_one_ot_member_first_and_at_most_32(members: list[str], threshold: int) -> None:
    stamped = with_threshold(",".join(members), threshold)
    out = stamped.split(",")
    assert out[0].startswith("ot=th:") and len(out) <= 32
    assert out[1:] == members[: len(out) - 1]
