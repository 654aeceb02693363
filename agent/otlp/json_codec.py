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
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


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
        _hex_ids_to_base64(data, "")
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OtlpJsonError(str(exc)) from None
    except RecursionError:
        raise OtlpJsonError("body nests objects too deeply for OTLP") from None
    return message


def to_dict(message: Message) -> dict[str, Any]:
    data = json_format.MessageToDict(message, use_integers_for_enums=True)
    _base64_ids_to_hex(data)
    return data


def encode(message: Message) -> bytes:
    return json.dumps(to_dict(message), separators=(",", ":")).encode()


def _hex_ids_to_base64(node: Any, path: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else key
            if key in ID_KEYS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise OtlpJsonError(f"{where}: must be a hex string, got {value[:40]!r}") from None
            else:
                _hex_ids_to_base64(value, where)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _hex_ids_to_base64(item, f"{path}[{index}]")


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
