"""OTLP/JSON: protobuf JSON mapping with the OTLP deviations.

OTLP JSON differs from the standard proto3 mapping in one way that matters for decoding: trace and span
ids are hex strings, not base64 (enums as integers, lowerCamelCase keys and 64-bit integers as strings or
numbers are all accepted by protobuf's own parser). Unknown fields are ignored, as the spec requires.

Before protobuf's parser sees a document, it is walked along the message's descriptor (``_prepare``): that
parser, told to ignore unknown fields, also reads a string or a list given for a message field as a list of
field names and drops them all, so ``"body": "payment failed"`` would become an empty body and ``"status":
"STATUS_CODE_ERROR"`` an unset status, silently; and it reads ``true`` as 1 for a number and drops an enum name
it does not know. The walk refuses those with their path, removes unknown fields (never looked into) and
``null`` values (the default, in proto3 JSON), and turns hex ids into the base64 the parser expects.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from agent.otlp.descriptors import is_repeated

M = TypeVar("M", bound=Message)

ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


_ID_FIELDS = frozenset({"trace_id", "span_id", "parent_span_id"})  # bytes fields written as hex in OTLP/JSON
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
# proto3 JSON: standard or URL-safe base64, padded or not. protobuf's parser drops any other character silently
# ("SGVs!!bG8=" would become "Hello"), so a value it would change is refused instead. One character class each,
# with the lengths checked apart: a pattern of 4-character groups backtracked through a 16 MiB value for seconds.
_BASE64_ALPHABETS = (re.compile(r"[A-Za-z0-9+/]*"), re.compile(r"[A-Za-z0-9_-]*"))
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a UTF-16 surrogate written as a JSON escape
_NUMBER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_DOUBLE,
        FieldDescriptor.TYPE_FLOAT,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
    }
)


class OtlpJsonError(ValueError):
    """The body is not valid OTLP/JSON; the message says where."""


def decode(body: bytes, message_type: type[M]) -> M:
    return decode_repairing(body, message_type)[0]


def decode_repairing(body: bytes, message_type: type[M], unknown_keys: list[str] | None = None) -> tuple[M, int]:
    """The message in ``body``, and how many of its strings were repaired: bytes that are not UTF-8 (UTF-16 or
    UTF-32 for a body in those) and lone UTF-16 surrogates become U+FFFD, as the protobuf receiver repairs strings
    (utf8_repair.py), instead of the whole request being refused for one string. A key is never repaired: one
    with such bytes would become an unknown field, dropped silently, so the body is refused. ``unknown_keys``, if
    given, collects the top-level keys that are no field of ``message_type`` (ignored, as OTLP wants)."""
    try:
        text, maybe_broken, text_replaced = _text_of(body)
        data = json.loads(text)
        # Read again with each broken UTF-8 sequence as one U+FFFD: the strings a repair takes (``_repaired``).
        replaced = json.loads(text_replaced) if text_replaced is not None else None
    except json.JSONDecodeError as exc:
        raise OtlpJsonError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise OtlpJsonError("body is not JSON this agent reads: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than Python's int-from-string limit
        raise OtlpJsonError(f"body is not JSON this agent reads: {exc}") from None
    if not isinstance(data, dict):
        raise OtlpJsonError("body must be a JSON object")
    if unknown_keys is not None:
        descriptor = message_type.DESCRIPTOR
        known = {*descriptor.fields_by_camelcase_name, *descriptor.fields_by_name}
        unknown_keys.extend(str(key)[:64] for key in data if key not in known)
    message = message_type()
    repaired = 0
    try:
        if maybe_broken:
            data, repaired = _repaired(data, replaced)
        _prepare(data, message_type.DESCRIPTOR, "")
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except OtlpJsonError:
        raise
    except json_format.ParseError as exc:
        raise OtlpJsonError(str(exc)) from None
    except RecursionError:
        raise OtlpJsonError("body nests objects too deeply for OTLP") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a value protobuf's parser itself trips over
        raise OtlpJsonError(f"body is not OTLP/JSON this agent reads: {exc}") from None
    return message, repaired


def _text_of(body: bytes) -> tuple[str, bool, str | None]:
    """The body as text, whether a string of it may hold a lone surrogate, and, for a UTF-8 body with bytes that
    do not decode, the body as text with each broken sequence one U+FFFD, as the protobuf receiver's
    ``decode("utf-8", "replace")`` repairs it (a character cut short is one U+FFFD, not one per byte). In the
    first text such bytes (and UTF-8-encoded surrogates, which json.loads would let through and protobuf then
    refuses) are kept as lone surrogates ("surrogateescape"), so that the repair pass finds them in their strings,
    and only there; they cannot be decoded again from it, as a JSON escape of a lone surrogate (``\\udcc3``) reads
    alike there."""
    encoding = json.detect_encoding(body)
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError:
        # UTF-8: any byte that does not decode. UTF-16 and UTF-32: a lone surrogate code unit (what else fails
        # there, an odd length, is no such body at all and refused).
        if encoding.startswith("utf-8"):
            return body.decode(encoding, "surrogateescape"), True, body.decode(encoding, "replace")
        return body.decode(encoding, "surrogatepass"), True, None
    return text, _SURROGATE_ESCAPE.search(text) is not None, None


def _repaired(node: Any, replaced: Any) -> tuple[Any, int]:
    """``node`` with each lone UTF-16 surrogate in its strings replaced by U+FFFD, and how many strings held one.
    ``replaced``: the same document read with broken UTF-8 sequences replaced (None when the body had none), whose
    string is taken where ``node``'s needs a repair.

    JSON may escape half a surrogate pair (a JavaScript SDK cutting a value to its length limit splits an emoji),
    and bytes that are not UTF-8 reach here as lone surrogates too (``_text_of``); protobuf refuses such a string,
    which would reject the whole request. The OpenTelemetry guidance for invalid Unicode is to replace it. A loop,
    not comprehensions: one frame a nesting level, as deep as json.loads itself goes.
    """
    if isinstance(node, str):
        if not _has_surrogate(node):
            return node, 0
        return _replace_surrogates(replaced if isinstance(replaced, str) else node), 1
    count = 0
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if _has_surrogate(key):
                raise OtlpJsonError(f"a key holds bytes that are not text or a lone surrogate: {ascii(key)[1:41]}")
            out[key], repaired = _repaired(value, replaced.get(key) if isinstance(replaced, dict) else None)
            count += repaired
        return out, count
    if isinstance(node, list):
        items = []
        twins = replaced if isinstance(replaced, list) and len(replaced) == len(node) else [None] * len(node)
        for item, twin in zip(node, twins, strict=True):
            fixed, repaired = _repaired(item, twin)
            items.append(fixed)
            count += repaired
        return items, count
    return node, 0


def _has_surrogate(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _replace_surrogates(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def to_dict(message: Message) -> dict[str, Any]:
    data = json_format.MessageToDict(message, use_integers_for_enums=True)
    _base64_ids_to_hex(data)
    return data


def encode(message: Message) -> bytes:
    return json.dumps(to_dict(message), separators=(",", ":")).encode()


def _prepare(node: dict[str, Any], descriptor: Descriptor, path: str) -> None:
    """Check ``node`` against ``descriptor`` and ready it for protobuf's parser (see the module's docstring)."""
    for key in list(node):
        field = descriptor.fields_by_camelcase_name.get(key) or descriptor.fields_by_name.get(key)
        value = node[key]
        if field is None or value is None:
            del node[key]  # an unknown field is ignored, whatever it holds; null is the default value
            continue
        where = f"{path}.{key}" if path else key
        if is_repeated(field):
            if not isinstance(value, list):
                raise OtlpJsonError(f"{where}: must be a list, got {_kind(value)}")
            node[key] = [_prepared(field, item, f"{where}[{index}]") for index, item in enumerate(value)]
        else:
            node[key] = _prepared(field, value, where)


def _prepared(field: FieldDescriptor, value: Any, where: str) -> Any:
    if field.message_type is not None:
        if not isinstance(value, dict):
            raise OtlpJsonError(f"{where}: must be an object, got {_kind(value)}")
        _prepare(value, field.message_type, where)
    elif field.enum_type is not None:
        _check_enum(value, field.enum_type.values_by_name, where)
    elif field.type == FieldDescriptor.TYPE_BYTES and field.name in _ID_FIELDS:
        if not isinstance(value, str) or not _HEX.fullmatch(value):
            raise OtlpJsonError(f"{where}: must be a hex string, got {json.dumps(value)[:40]}")
        return base64.b64encode(bytes.fromhex(value)).decode()
    elif field.type == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, str) or not _is_base64(value):
            raise OtlpJsonError(f"{where}: must be a base64 string, got {json.dumps(value)[:40]}")
    elif field.type in _NUMBER_TYPES and isinstance(value, bool):
        raise OtlpJsonError(f"{where}: must be a number, got {json.dumps(value)}")
    return value


def _is_base64(value: str) -> bool:
    """Standard or URL-safe base64 (one alphabet, not a mix), padded to a multiple of 4 or not padded at all."""
    data = value.rstrip("=")
    padding = len(value) - len(data)
    if padding > 2 or (padding and len(value) % 4) or len(data) % 4 == 1:
        return False
    return any(alphabet.fullmatch(data) for alphabet in _BASE64_ALPHABETS)


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _check_enum(value: Any, names: Any, where: str) -> None:
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
