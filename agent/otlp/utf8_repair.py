"""Decode an OTLP/protobuf request whose strings are not all valid UTF-8, instead of refusing it whole.

protobuf refuses a proto3 ``string`` field that is not UTF-8, so one bad byte in one attribute of one span would
turn a sender's whole batch into a 400 (``INVALID_ARGUMENT``), never retried: all its spans lost. Such strings do
occur (a C library's error text, a value cut by an SDK in the middle of a character), and the Collector passes
them on. Here the request is read again with the same messages whose ``string`` fields are declared ``bytes``
(the wire format of the two is the same), each string that is not UTF-8 has its bad bytes replaced by U+FFFD, as
the JSON receiver does with a lone surrogate, and the repaired request is decoded as usual.

This runs only after the normal decoding failed, so a well-formed request costs nothing more.
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import DecodeError, Message

from agent.otlp.descriptors import is_repeated

_STRING = FieldDescriptor.TYPE_STRING
_BYTES = FieldDescriptor.TYPE_BYTES
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def decode_repairing_utf8(request_type: type[Message], body: bytes) -> tuple[Message, int] | None:
    """The request with every string that is not UTF-8 repaired, and how many were; None when the body does not
    decode for another reason too (then the original error stands)."""
    lenient = _lenient_class(request_type)  # type: ignore[arg-type]  # a class is hashable; its instances are not
    try:
        message = lenient.FromString(body)
    except DecodeError:
        return None
    repaired = _repair(message)
    return request_type.FromString(message.SerializeToString()), repaired


@functools.cache
def _lenient_class(request_type: type[Message]) -> type[Message]:
    """``request_type`` built again in a pool of its own, with each ``string`` field declared ``bytes``."""
    pool = descriptor_pool.DescriptorPool()
    for file in _files_in_dependency_order(request_type.DESCRIPTOR.file):
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        for message in proto.message_type:
            _strings_as_bytes(message)
        pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(request_type.DESCRIPTOR.full_name))


def _files_in_dependency_order(file: FileDescriptor) -> list[FileDescriptor]:
    ordered: list[FileDescriptor] = []

    def visit(current: FileDescriptor) -> None:
        if current in ordered:
            return
        for dependency in current.dependencies:
            visit(dependency)
        ordered.append(current)

    visit(file)
    return ordered


def _strings_as_bytes(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        if field.type == _STRING:
            field.type = _BYTES
    for nested in message.nested_type:
        _strings_as_bytes(nested)


def _repair(message: Message) -> int:
    """Replace the bytes that are not UTF-8 in ``message``'s former string fields, in place; return how many
    strings changed. Only the fields present are visited."""
    repaired = 0
    strings = _former_strings(message.DESCRIPTOR)
    for field, value in message.ListFields():
        if field.type == _MESSAGE:
            for child in value if is_repeated(field) else (value,):
                repaired += _repair(child)
        elif field.name in strings:
            if is_repeated(field):
                fixed = [_as_utf8(item) for item in value]
                changed = sum(new is not old for new, old in zip(fixed, value, strict=True))
                if changed:
                    del value[:]
                    value.extend(fixed)
                    repaired += changed
            else:
                fixed_value = _as_utf8(value)
                if fixed_value is not value:
                    setattr(message, field.name, fixed_value)
                    repaired += 1
    return repaired


@functools.cache
def _former_strings(lenient: Descriptor) -> frozenset[str]:
    """Names of the fields of a lenient message type that are ``string`` in the real one."""
    real = descriptor_pool.Default().FindMessageTypeByName(lenient.full_name)
    return frozenset(field.name for field in real.fields if field.type == _STRING)


def _as_utf8(value: bytes) -> bytes:
    """``value`` itself when it is UTF-8, else a copy with each bad sequence replaced by U+FFFD."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace").encode("utf-8")
    return value
