"""OTEP 235 tracestate fields: what is read as a threshold or a randomness, and what is ignored."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.otlp.probability import MAX_THRESHOLD, decode_threshold, encode_threshold, explicit_randomness


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
