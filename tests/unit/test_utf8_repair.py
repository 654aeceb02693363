"""Repairing strings that are not UTF-8 in an OTLP/protobuf request (property tests: any bytes at all)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.otlp.utf8_repair import _lenient_class, decode_repairing_utf8


def _trace_body(name: bytes, key: bytes, values: list[bytes]) -> bytes:
    """A request as a sender that does not check its strings would write it."""
    request = _lenient_class(ExportTraceServiceRequest)()
    span = request.resource_spans.add().scope_spans.add().spans.add(name=name, trace_id=b"\xff" * 16)
    attribute = span.attributes.add(key=key)
    for value in values:
        attribute.value.array_value.values.add(string_value=value)
    return request.SerializeToString()


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@given(st.binary(max_size=20), st.binary(max_size=20), st.lists(st.binary(max_size=12), max_size=4))
def test_any_bytes_become_their_replacement_decoding(name: bytes, key: bytes, values: list[bytes]) -> None:
    repaired = decode_repairing_utf8(ExportTraceServiceRequest, _trace_body(name, key, values))
    assert repaired is not None
    request, count = repaired
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert span.name == name.decode("utf-8", "replace")
    assert span.attributes[0].key == key.decode("utf-8", "replace")
    assert [v.string_value for v in span.attributes[0].value.array_value.values] == [
        value.decode("utf-8", "replace") for value in values
    ]
    assert span.trace_id == b"\xff" * 16  # bytes fields are left as they are
    assert count == sum(not _is_utf8(text) for text in [name, key, *values])


def test_log_bodies_and_event_names_are_repaired_too() -> None:
    lenient = _lenient_class(ExportLogsServiceRequest)()
    record = lenient.resource_logs.add().scope_logs.add().log_records.add(event_name=b"ev\xff")
    record.body.string_value = b"\xc0\xafbody"
    request, count = decode_repairing_utf8(ExportLogsServiceRequest, lenient.SerializeToString()) or (None, 0)
    assert request is not None
    record = request.resource_logs[0].scope_logs[0].log_records[0]
    assert (record.event_name, record.body.string_value, count) == ("ev\ufffd", "\ufffd\ufffdbody", 2)


@given(st.binary(max_size=64))
def test_bytes_that_are_no_request_at_all_are_not_made_into_one(body: bytes) -> None:
    try:
        ExportTraceServiceRequest.FromString(body)
    except Exception:
        pass
    else:
        return  # a valid request: the receiver never asks for a repair
    repaired = decode_repairing_utf8(ExportTraceServiceRequest, body)
    if repaired is not None:
        # The strict and the lenient messages differ only in checking UTF-8: a repair must have changed a string.
        assert repaired[1] >= 1


def test_no_stage_reads_is_repeated_of_a_descriptor_itself() -> None:
    """``FieldDescriptor.is_repeated`` came with protobuf 6.31; the floor in pyproject.toml is older (it has only
    ``label``), so every stage asks agent.otlp.descriptors.is_repeated instead."""
    import ast
    from pathlib import Path

    import agent

    root = Path(agent.__file__).parent
    offenders = [
        f"{path.relative_to(root.parent)}:{node.lineno}"
        for path in root.rglob("*.py")
        if path.name != "descriptors.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "is_repeated"
    ]
    assert offenders == []
