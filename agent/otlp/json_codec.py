"""OTLP/JSON: protobuf JSON mapping with the OTLP deviations.

OTLP JSON differs from the standard proto3 mapping in one way that matters for decoding: trace and span
ids are hex strings, not base64 (enums as integers, lowerCamelCase keys and 64-bit integers as strings or
numbers are all accepted by protobuf's own parser). Unknown fields are ignored, as the spec requires.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

M = TypeVar("M", bound=Message)

ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


def _enum_names(enum: EnumDescriptor) -> frozenset[str]:
    return frozenset(enum.values_by_name)


# Every enum field of the OTLP messages, by its JSON keys (no other OTLP message has a field of these names;
# attribute keys are values, never JSON keys). protobuf's parser, told to ignore unknown fields as OTLP requires,
# also drops an enum name it does not know and reads 1.5 or true as 1: a misspelt STATUS_CODE_ERROR would turn an
# error span into an unset one, silently.
_ENUM_FIELDS: dict[str, frozenset[str]] = {
    "kind": _enum_names(Span.SpanKind.DESCRIPTOR),
    "code": _enum_names(Status.StatusCode.DESCRIPTOR),
    "severityNumber": _enum_names(SeverityNumber.DESCRIPTOR),
    "severity_number": _enum_names(SeverityNumber.DESCRIPTOR),
    "aggregationTemporality": _enum_names(AggregationTemporality.DESCRIPTOR),
    "aggregation_temporality": _enum_names(AggregationTemporality.DESCRIPTOR),
}


class OtlpJsonError(ValueError):
    """The body is not valid OTLP/JSON; the message says where."""


def decode(body: bytes, message_type: type[M]) -> M:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OtlpJsonError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise OtlpJsonError("body is not JSON this agent reads: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than Python's int-from-string limit
        raise OtlpJsonError(f"body is not JSON this agent reads: {exc}") from None
    if not isinstance(data, dict):
        raise OtlpJsonError("body must be a JSON object")
    message = message_type()
    try:
        _prepare(data, "")
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OtlpJsonError(str(exc)) from None
    except RecursionError:
        raise OtlpJsonError("body nests objects too deeply for OTLP") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a value protobuf's parser itself trips over
        raise OtlpJsonError(f"body is not OTLP/JSON this agent reads: {exc}") from None
    return message


def to_dict(message: Message) -> dict[str, Any]:
    data = json_format.MessageToDict(message, use_integers_for_enums=True)
    _base64_ids_to_hex(data)
    return data


def encode(message: Message) -> bytes:
    return json.dumps(to_dict(message), separators=(",", ":")).encode()


def _prepare(node: Any, path: str) -> None:
    """Hex ids to the base64 protobuf's parser expects; enum values checked (see ``_ENUM_FIELDS``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else key
            if key in ID_KEYS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise OtlpJsonError(f"{where}: must be a hex string, got {value[:40]!r}") from None
            elif key in _ENUM_FIELDS:
                _check_enum(value, _ENUM_FIELDS[key], where)
            else:
                _prepare(value, where)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _prepare(item, f"{path}[{index}]")


def _check_enum(value: Any, names: frozenset[str], where: str) -> None:
    """An integer (an unknown one is kept: a newer sender's value) or the name of a known value."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(2**31) <= value < 2**31:
            raise OtlpJsonError(f"{where}: enum value {value} is out of range")
        return
    if isinstance(value, str):
        if value not in names:
            raise OtlpJsonError(f"{where}: unknown enum value {value[:40]!r}; one of {', '.join(sorted(names))}")
        return
    raise OtlpJsonError(f"{where}: an enum value must be an integer, got {json.dumps(value)[:40]}")


def _base64_ids_to_hex(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ID_KEYS and isinstance(value, str):
                with contextlib.suppress(binascii.Error):
                    node[key] = base64.b64decode(value).hex()
            else:
                _base64_ids_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            _base64_ids_to_hex(item)
