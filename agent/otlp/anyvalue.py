"""An OTLP ``AnyValue`` as text, the one spelling every exporter uses for a Loki line, structured metadata or a
Prometheus label, so that one attribute reads alike in both backends.

Strings are as they are; other scalars as OTLP/JSON writes them, unquoted (``true``, ``42``, ``0.25``, ``NaN``,
``Infinity``); bytes as base64 (the Collector's ``AsString``); arrays and maps as compact JSON with each element
in its own type and non-ASCII text unescaped, as Go's ``json.Marshal`` writes them, so that LogQL's ``| json``
parses a line and ``|= "naïve"`` finds its text. JSON has no NaN or infinities: inside JSON they are the strings
``"NaN"``, ``"Infinity"``, ``"-Infinity"``, bytes are base64 strings and an empty value is ``null``.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # proto3 JSON's spelling


def any_value_text(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return _double_text(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind in ("array_value", "kvlist_value"):
        return json.dumps(_json_of(value), ensure_ascii=False, separators=(",", ":"))
    return ""


def _double_text(number: float) -> str:
    return repr(number) if math.isfinite(number) else _NON_FINITE[repr(number)]


def _json_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_json_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _json_of(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind == "double_value":
        number = value.double_value
        return number if math.isfinite(number) else _NON_FINITE[repr(number)]
    return getattr(value, kind) if kind is not None else None
