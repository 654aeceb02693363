"""Properties of the OTLP/HTTP body decompression: whole bodies come back exactly, cut ones never partly."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.receivers.otlp.core import Failure, RequestFailed
from agent.receivers.otlp.encoding import decompressed

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
