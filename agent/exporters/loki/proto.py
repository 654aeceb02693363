"""Loki's push messages (``logproto.PushRequest`` …), built at run time from ``proto/loki/push.proto``'s fields.

Building the descriptor here instead of committing ``protoc`` output keeps the module independent of the
protobuf runtime's generated-code version checks; a unit test compiles ``proto/loki/push.proto`` and checks
that both agree. The messages live in a private descriptor pool, so they never clash with other modules.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

_F = descriptor_pb2.FieldDescriptorProto

# (message, [(field, number, type, label, message type)]) as in Loki's pkg/push/push.proto.
MESSAGES: list[tuple[str, list[tuple[str, int, int, int, str]]]] = [
    ("PushRequest", [("streams", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".logproto.StreamAdapter")]),
    ("PushResponse", []),
    (
        "StreamAdapter",
        [
            ("labels", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
            ("entries", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".logproto.EntryAdapter"),
            ("hash", 3, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "LabelPairAdapter",
        [("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""), ("value", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, "")],
    ),
    (
        "EntryAdapter",
        [
            ("timestamp", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Timestamp"),
            ("line", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
            ("structuredMetadata", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".logproto.LabelPairAdapter"),
        ],
    ),
]


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="loki/push.proto", package="logproto", syntax="proto3", dependency=["google/protobuf/timestamp.proto"]
    )
    for name, fields in MESSAGES:
        message = proto.message_type.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=field_type, label=label)
            if type_name:
                field.type_name = type_name
    return proto


def _build() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    timestamp = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp)
    pool.Add(timestamp)
    pool.Add(file_descriptor())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"logproto.{name}")) for name, _ in MESSAGES
    }


_CLASSES = _build()
PushRequest = _CLASSES["PushRequest"]
StreamAdapter = _CLASSES["StreamAdapter"]
EntryAdapter = _CLASSES["EntryAdapter"]
LabelPairAdapter = _CLASSES["LabelPairAdapter"]
