"""The Loki push messages the agent builds at run time agree with ``proto/loki/push.proto``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from agent.exporters.loki import proto
from tests.helpers import REPO


def compiled_push_proto(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "push.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'proto'}",
            f"--descriptor_set_out={out}",
            str(REPO / "proto" / "loki" / "push.proto"),
        ],
        check=True,
        capture_output=True,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    (push,) = [f for f in files if f.name == "loki/push.proto"]
    return push


def shape(file: descriptor_pb2.FileDescriptorProto) -> dict[str, list[tuple[str, int, int, int, str]]]:
    return {
        message.name: [(f.name, f.number, f.type, f.label, f.type_name) for f in message.field]
        for message in file.message_type
    }


def test_the_runtime_messages_match_the_proto_file(tmp_path: Path) -> None:
    compiled = compiled_push_proto(tmp_path)
    assert compiled.package == proto.file_descriptor().package == "logproto"
    assert shape(compiled) == shape(proto.file_descriptor())


def test_the_field_numbers_are_the_ones_loki_documents() -> None:
    fields = {(m, f.name): f.number for m, f in _fields()}
    assert fields == {
        ("PushRequest", "streams"): 1,
        ("StreamAdapter", "labels"): 1,
        ("StreamAdapter", "entries"): 2,
        ("StreamAdapter", "hash"): 3,
        ("EntryAdapter", "timestamp"): 1,
        ("EntryAdapter", "line"): 2,
        ("EntryAdapter", "structuredMetadata"): 3,
        ("LabelPairAdapter", "name"): 1,
        ("LabelPairAdapter", "value"): 2,
    }


def _fields() -> list[tuple[str, descriptor_pb2.FieldDescriptorProto]]:
    return [(m.name, f) for m in proto.file_descriptor().message_type for f in m.field]
