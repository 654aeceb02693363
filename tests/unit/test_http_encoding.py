"""Properties of the OTLP/HTTP body decompression: whole bodies come back exactly, cut ones never partly."""

from __future__ import annotations

import gzip
import itertools
import random
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.receivers.otlp.core import Failure, RequestFailed
from agent.receivers.otlp.encoding import MAX_MEMBERS, decompressed

LIMIT = 1 << 16


@given(st.binary(max_size=LIMIT), st.sampled_from(["gzip", "deflate"]))
def test_a_whole_body_decompresses_to_exactly_what_was_sent(payload: bytes, encoding: str) -> None:
    body = gzip.compress(payload) if encoding == "gzip" else zlib.compress(payload)
    assert decompressed(encoding, body, LIMIT) == payload


@given(st.binary(max_size=4096), st.data())
def test_a_gzip_body_cut_anywhere_is_an_error_never_a_shorter_request(payload: bytes, data: st.DataObject) -> None:
    body = gzip.compress(payload)
    cut = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    if cut == 0:
        assert decompressed("gzip", b"", LIMIT) == b""  # no body at all is an empty request, not a cut one
        return
    with pytest.raises(RequestFailed) as failed:
        decompressed("gzip", body[:cut], LIMIT)
    assert failed.value.failure is Failure.MALFORMED


@given(st.binary(min_size=1, max_size=64))
def test_bytes_that_are_not_gzip_are_malformed(junk: bytes) -> None:
    try:
        result = decompressed("gzip", b"\x1f\x8b\x08\x00" + junk, LIMIT)
    except RequestFailed as failed:
        assert failed.failure in (Failure.MALFORMED, Failure.TOO_LARGE)
    else:
        pytest.fail(f"junk decompressed to {result!r}")


def test_the_limit_counts_decompressed_bytes_across_members() -> None:
    member = gzip.compress(b"x" * (LIMIT // 2 + 1))
    assert decompressed("gzip", member, LIMIT) == b"x" * (LIMIT // 2 + 1)
    with pytest.raises(RequestFailed) as failed:
        decompressed("gzip", member + member, LIMIT)
    assert failed.value.failure is Failure.TOO_LARGE


@given(st.binary(max_size=4096), st.lists(st.integers(min_value=0, max_value=4096), max_size=4))
def test_a_body_of_several_members_decompresses_to_all_of_them_in_order(payload: bytes, cuts: list[int]) -> None:
    bounds = [0, *sorted(min(cut, len(payload)) for cut in cuts), len(payload)]
    body = b"".join(gzip.compress(payload[a:b]) for a, b in itertools.pairwise(bounds))
    assert decompressed("gzip", body, LIMIT) == payload


@pytest.mark.parametrize("cuts", [[], [1], [70_000], [10, 65_536, 65_537, 140_000]])
def test_members_longer_than_the_slices_zlib_is_fed_come_back_whole(cuts: list[int]) -> None:
    payload = random.Random(7).randbytes(200_000)  # random bytes barely compress: members cross 64 KiB slices
    bounds = [0, *cuts, len(payload)]
    body = b"".join(gzip.compress(payload[a:b]) for a, b in itertools.pairwise(bounds))
    assert len(body) > 3 * 65_536
    assert decompressed("gzip", body, len(payload)) == payload
    with pytest.raises(RequestFailed) as failed:
        decompressed("gzip", body[:-1], len(payload))
    assert failed.value.failure is Failure.MALFORMED


def test_a_body_of_a_thousand_members_is_read_and_one_of_more_is_refused() -> None:
    # Each member costs a new decompressor: 200,000 empty ones in 4 MB held the event loop for seconds.
    empty = gzip.compress(b"", mtime=0)
    assert decompressed("gzip", gzip.compress(b"otlp") + empty * (MAX_MEMBERS - 1), LIMIT) == b"otlp"
    with pytest.raises(RequestFailed) as failed:
        decompressed("gzip", empty * 200_000, LIMIT)
    assert failed.value.failure is Failure.MALFORMED
    assert "more than 1000 members" in failed.value.message


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_of_exactly_the_limit_passes_and_one_byte_more_is_too_large(encoding: str) -> None:
    compress = gzip.compress if encoding == "gzip" else zlib.compress
    assert len(decompressed(encoding, compress(b"x" * LIMIT), LIMIT)) == LIMIT
    with pytest.raises(RequestFailed) as failed:
        decompressed(encoding, compress(b"x" * (LIMIT + 1)), LIMIT)
    assert failed.value.failure is Failure.TOO_LARGE
