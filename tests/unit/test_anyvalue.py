"""One spelling of an OTLP AnyValue as text, for Loki lines, structured metadata and Prometheus labels."""

from __future__ import annotations

import json

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from agent.otlp.anyvalue import any_value_text


def _map(**values: AnyValue) -> AnyValue:
    return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in values.items()]))


def _array(*values: AnyValue) -> AnyValue:
    return AnyValue(array_value=ArrayValue(values=list(values)))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (AnyValue(string_value="naïve"), "naïve"),
        (AnyValue(bool_value=True), "true"),
        (AnyValue(int_value=-(2**63)), "-9223372036854775808"),
        (AnyValue(double_value=0.25), "0.25"),
        (AnyValue(double_value=-0.0), "-0.0"),
        (AnyValue(double_value=float("nan")), "NaN"),
        (AnyValue(double_value=float("inf")), "Infinity"),
        (AnyValue(double_value=float("-inf")), "-Infinity"),
        (AnyValue(bytes_value=b"hello"), "aGVsbG8="),
        (AnyValue(), ""),
        (_array(AnyValue(int_value=7), AnyValue(string_value="ü"), AnyValue(bool_value=False)), '[7,"ü",false]'),
        (
            _map(
                msg=AnyValue(string_value='say "hi" in café'),
                ratio=AnyValue(double_value=float("nan")),
                raw=AnyValue(bytes_value=b"hello"),
                none=AnyValue(),
                deep=_array(_map(x=AnyValue(double_value=float("-inf")))),
            ),
            '{"msg":"say \\"hi\\" in café","ratio":"NaN","raw":"aGVsbG8=","none":null,"deep":[{"x":"-Infinity"}]}',
        ),
    ],
    ids=["string", "bool", "int", "double", "minus-zero", "nan", "inf", "minus-inf", "bytes", "empty", "array", "map"],
)
def test_each_kind_of_value_has_one_spelling_and_arrays_and_maps_are_json(value: AnyValue, text: str) -> None:
    """Pass 126: a map body was ``{"msg": "na\\u00efve", "ratio": NaN}``, not JSON to LogQL's ``| json`` and not
    found by ``|= "naïve"``; scalars read ``nan``/``inf`` (pass 128: quotes stay escaped, as JSON needs)."""
    assert any_value_text(value) == text
    if value.HasField("array_value") or value.HasField("kvlist_value"):
        json.loads(text)  # strict JSON: no NaN or Infinity literals
