"""OTEP 235 tracestate fields: what is read as a threshold or a randomness, and what is ignored."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.otlp.probability import (
    MAX_THRESHOLD,
    adjusted_count,
    decode_threshold,
    encode_threshold,
    explicit_randomness,
    stamp,
    threshold_for,
    threshold_from_tracestate,
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
        # A th that would take the ot value past 256 characters is not written, nor a lower one from upstream.
        ("ot=x:" + "a" * 247 + ",v=1", TEN, None, "ot=x:" + "a" * 247 + ",v=1"),
        ("ot=th:8;x:" + "a" * 240, TEN, None, "ot=x:" + "a" * 240),
        # An ot value past 256 characters already is invalid: read as absent, so replaced by ours alone.
        ("ot=th:8;x:" + "a" * 260 + ",v=1", TEN, None, "ot=th:e6666666666666,v=1"),
        # Our own threshold on a span without rv whose trace id does not reach it (decided on another span's rv).
        ("v=1", TEN, 1, "v=1"),
    ],
    ids=[
        "added", "duplicate-rv", "duplicate-th", "rv-below-upstream", "id-below-upstream", "own-rv-below-ours",
        "uppercase-th", "long-th", "33-members", "ot-over-256", "th-over-256", "ot-was-over-256", "id-below-ours",
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
_OT_MEMBER = st.sampled_from(["ot=rv:ffffffffffffff", "ot=th:8", "ot=x:1", "ot=", "ot=th:zz;rv:00000000000001"])


@given(
    st.lists(_MEMBER, max_size=40, unique_by=lambda m: m.partition("=")[0]),
    st.lists(st.tuples(st.integers(0, 40), _OT_MEMBER), max_size=3),
    st.sampled_from([0, TEN]),
)
def test_a_stamped_tracestate_has_one_ot_member_first_and_at_most_32(
    members: list[str], ots: list[tuple[int, str]], threshold: int
) -> None:
    """Pass 131: duplicate ot members and one past position 32 are in the input too."""
    for position, member in ots:
        members.insert(min(position, len(members)), member)
    out = with_threshold(",".join(members), threshold).split(",")
    others = [m for m in members if not m.startswith("ot=")]
    assert len(out) <= 32 and not any(m.startswith("ot=") for m in out[1:])
    assert out[1 if out[0].startswith("ot=") else 0 :] == others[: len(out) - out[0].startswith("ot=")]
    first_ot = next((m for m in members if m.startswith("ot=")), "")
    if "th:zz" not in first_ot:  # a malformed th erases ours too
        assert out[0].startswith("ot=th:")


@pytest.mark.parametrize(
    "tracestate", ["ot=rv:ffffffffffffff,ot=th:fd70a4", "ot=,ot=th:fd70a4", "ot=x:1,v=1,ot=th:fd70a4;rv:ffffffffffffff"]
)
def test_only_the_first_ot_member_is_read(tracestate: str) -> None:
    """Pass 131: the readers went on to a later ot member when the first lacked the field, while the writer keeps
    the first only: span metrics counted 100 for a th the export then dropped."""
    assert threshold_from_tracestate("ot=th:fd70a4,ot=th:8") == decode_threshold("fd70a4")
    assert threshold_from_tracestate(tracestate) is None
    assert adjusted_count(tracestate) == (1.0, 0)
    assert explicit_randomness(tracestate) == (0xFFFFFFFFFFFFFF if tracestate.startswith("ot=rv") else None)


def test_an_ot_value_past_256_characters_is_read_as_absent_as_it_is_left_out_when_stamped() -> None:
    """Pass 132: stamp() left such a member out, while span metrics counted its th and the sampler decided on its
    rv, which the export then dropped."""
    tracestate = "ot=th:8;rv:ffffffffffffff;x:" + "a" * 240
    assert threshold_from_tracestate(tracestate) is None and explicit_randomness(tracestate) is None
    assert adjusted_count(tracestate) == (1.0, 0)
    assert with_threshold(tracestate, TEN) == "ot=th:e6666666666666"


def test_a_trace_id_shorter_than_7_bytes_is_zero_padded_as_randomness_reads_it() -> None:
    """Pass 132: the 7-byte compare took b"\\x90\\0\\0\\0" as reaching th:8, randomness() as 0x90000000."""
    short = b"\x90\x00\x00\x00"
    assert stamp("ot=th:8", 0).for_trace_id(short) == ""
    assert stamp("ot=th:8", 0).for_trace_id(b"\x00" * 9 + b"\x90" + b"\x00" * 6) == "ot=th:8"


def test_the_threshold_that_keeps_nothing_is_never_written() -> None:
    """Pass 140: 2**56 has no 14-digit encoding (it came out as th:1, a 1/16 probability); such a span was kept
    by no sampler, so no th is stated, and the one upstream is erased with the rest of the decision."""
    assert stamp("ot=th:8;rv:ffffffffffffff,v=1", MAX_THRESHOLD).kept == "ot=rv:ffffffffffffff,v=1"
    assert with_threshold("", MAX_THRESHOLD) == ""
    assert with_threshold("ot=th:8,v=1", MAX_THRESHOLD) == "v=1"


@pytest.mark.parametrize(
    ("probability", "threshold"),
    [(0.9, "1999999999999a"), (0.5, "8"), (0.25, "c"), (0.1, "e6666666666666"), (0.01, "fd70a3d70a3d71")],
)
def test_thresholds_are_one_minus_p_times_2_to_56_rounded_to_the_nearest(probability: float, threshold: str) -> None:
    """The definition, T = round((1 - p) * 2**56), written out: other samplers compute the same T for the same p,
    and a T rounded down instead (…99 for 90%, …70 for 1%) would disagree with them on the boundary ids."""
    assert encode_threshold(threshold_for(probability)) == threshold


def test_a_randomness_equal_to_the_threshold_is_kept_and_counts_1_over_p() -> None:
    """A span is kept when its randomness is at least the threshold (R >= T)."""
    assert adjusted_count("ot=th:8;rv:80000000000000") == (2.0, 0)
    assert adjusted_count("ot=th:8;rv:7fffffffffffff") == (1.0, 0)
