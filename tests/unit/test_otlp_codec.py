from __future__ import annotations

import base64
import contextlib
import json
import re
import tracemalloc

import pytest
from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from agent.otlp import json_codec
from agent.otlp.signals import (
    count_data_points,
    count_spans,
    reject_invalid_data_points,
    reject_invalid_log_records,
    reject_invalid_spans,
)
from agent.otlp.utf8_repair import _lenient_class, decode_repairing_utf8
from agent.testing.workload import Workload


def test_otlp_json_uses_hex_ids_camel_case_keys_and_integer_enums() -> None:
    request, _ = next(Workload(seed=3).requests(1))
    data = json.loads(json_codec.encode(request))
    span = data["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == request.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    assert len(span["spanId"]) == 16
    assert isinstance(span["kind"], int)
    assert isinstance(span["startTimeUnixNano"], str)  # 64-bit integers are strings


def test_otlp_json_round_trips_every_field() -> None:
    for request, _ in Workload(seed=4).requests(20):
        assert json_codec.decode(json_codec.encode(request), ExportTraceServiceRequest) == request


def test_otlp_json_accepts_64_bit_integers_as_numbers_and_ignores_unknown_fields() -> None:
    body = json.dumps(
        {
            "resourceSpans": [
                {
                    "futureField": {"x": 1},
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": "5b8efff798038103d269b633813fc60c",
                                    "spanId": "eee19b7ec3c1b174",
                                    "name": "op",
                                    "kind": 2,
                                    "startTimeUnixNano": 1544712660000000000,
                                    "endTimeUnixNano": "1544712661000000000",
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    ).encode()
    request = json_codec.decode(body, ExportTraceServiceRequest)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert span.start_time_unix_nano == 1544712660000000000
    assert span.end_time_unix_nano == 1544712661000000000


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "body is not JSON"),
        (b"[1,2]", "must be a JSON object"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}', "must be a hex string"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]}', "name"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": {"a": 1}}]}]}]}', "kind"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"droppedEventsCount": ' + b"9" * 5000 + b"}]}]}]}", "digits"),
        (
            b'{"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": {"kvlistValue": '
            + b'{"values": [{"key": "x", "value": {"kvlistValue": ' * 400
            + b"{}"
            + b"}}]}" * 400
            + b"}}]}}]}",
            "too deeply",
        ),
    ],
)
def test_invalid_otlp_json_is_reported_with_where_it_went_wrong(body: bytes, fragment: str) -> None:
    with pytest.raises(json_codec.OtlpJsonError, match=fragment):
        json_codec.decode(body, ExportTraceServiceRequest)


@given(st.binary(max_size=2048))
def test_decoding_arbitrary_bytes_either_succeeds_or_raises_a_decode_error(body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        ExportTraceServiceRequest.FromString(body)
    with contextlib.suppress(json_codec.OtlpJsonError):
        json_codec.decode(body, ExportTraceServiceRequest)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)


@given(
    st.dictionaries(
        st.sampled_from(["resourceSpans", "resourceLogs", "traceId", "scopeSpans", "x"]), json_values, max_size=3
    )
)
def test_decoding_arbitrary_json_documents_never_raises_anything_but_otlp_json_error(doc: dict[str, object]) -> None:
    with contextlib.suppress(json_codec.OtlpJsonError):
        json_codec.decode(json.dumps(doc).encode(), ExportTraceServiceRequest)


def test_spans_with_wrong_id_lengths_are_removed_and_counted() -> None:
    request, _truth = next(Workload(seed=5).requests(1))
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].trace_id = b"\x01" * 15
    spans[1].span_id = b"\x02" * 9
    spans[2].trace_id = b"\x00" * 16
    before = count_spans(request)
    assert reject_invalid_spans(request) == 3
    assert count_spans(request) == before - 3
    assert all(len(s.trace_id) == 16 for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans)


def test_an_all_zero_parent_span_id_is_cleared_so_the_span_reads_as_a_root() -> None:
    request, _truth = next(Workload(seed=5).requests(1))
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].parent_span_id = bytes(8)  # as some SDKs write a root
    spans[1].parent_span_id = b"\x00" * 7 + b"\x01"  # a real parent that happens to start with zeros
    assert reject_invalid_spans(request) == 0
    assert spans[0].parent_span_id == b""
    assert spans[1].parent_span_id == b"\x00" * 7 + b"\x01"


def test_data_points_with_an_exemplar_of_wrong_id_lengths_are_removed_and_counted() -> None:
    good = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "asDouble": 1}
    no_context = {"asDouble": 2}
    short_trace = {"traceId": "010203", "asDouble": 3}
    long_span = {"spanId": "eee19b7ec3c1b17401", "asDouble": 4}
    request = json_codec.decode(
        json.dumps(
            {
                "resourceMetrics": [
                    {
                        "scopeMetrics": [
                            {
                                "metrics": [
                                    {
                                        "name": "a",
                                        "sum": {
                                            "dataPoints": [
                                                {"asInt": "1", "exemplars": [good, no_context]},
                                                {"asInt": "2", "exemplars": [good, short_trace]},
                                            ]
                                        },
                                    },
                                    {
                                        "name": "b",
                                        "histogram": {
                                            "dataPoints": [{"count": "1", "exemplars": [long_span]}, {"count": "2"}]
                                        },
                                    },
                                    {"name": "c", "summary": {"dataPoints": [{"count": "3"}]}},
                                ]
                            }
                        ]
                    }
                ]
            }
        ).encode(),
        ExportMetricsServiceRequest,
    )
    assert count_data_points(request) == 5
    assert reject_invalid_data_points(request) == 2
    metrics = request.resource_metrics[0].scope_metrics[0].metrics
    assert [p.as_int for p in metrics[0].sum.data_points] == [1]
    assert [p.count for p in metrics[1].histogram.data_points] == [2]
    assert [p.count for p in metrics[2].summary.data_points] == [3]


def test_log_records_without_trace_context_are_valid_but_wrong_lengths_are_not() -> None:
    request = json_codec.decode(
        json.dumps(
            {
                "resourceLogs": [
                    {
                        "scopeLogs": [
                            {
                                "logRecords": [
                                    {"body": {"stringValue": "no trace"}},
                                    {"traceId": "00ff", "body": {"stringValue": "short trace id"}},
                                    {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174"},
                                ]
                            }
                        ]
                    }
                ]
            }
        ).encode(),
        ExportLogsServiceRequest,
    )
    assert reject_invalid_log_records(request) == 1
    bodies = [r.body.string_value for r in request.resource_logs[0].scope_logs[0].log_records]
    assert bodies == ["no trace", ""]


def _span_json(**span: object) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            _span_json(status={"code": "STATUS_CODE_EROR"}),
            r"spans\[0\]\.status\.code: unknown enum value 'STATUS_CODE_EROR'",
        ),
        (_span_json(kind="SPAN_KIND_BOGUS"), "kind: unknown enum value"),
        (_span_json(kind=1.5), "kind: an enum value must be an integer, got 1.5"),
        (_span_json(kind=True), "kind: an enum value must be an integer, got true"),
        (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":1e400}]}]}]}', "must be an integer, got Infinity"),
        (_span_json(kind=2**40), "out of range"),
    ],
)
def test_a_bad_enum_value_is_an_error_not_silently_unset(body: bytes, fragment: str) -> None:
    with pytest.raises(json_codec.OtlpJsonError, match=fragment):
        json_codec.decode(body, ExportTraceServiceRequest)


def test_log_and_metric_enums_are_checked_too() -> None:
    with pytest.raises(json_codec.OtlpJsonError, match="severityNumber: unknown enum value 'LOUD'"):
        json_codec.decode(
            b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityNumber":"LOUD"}]}]}]}', ExportLogsServiceRequest
        )
    with pytest.raises(json_codec.OtlpJsonError, match="aggregationTemporality"):
        json_codec.decode(
            b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"sum":{"aggregationTemporality":1e400}}]}]}]}',
            ExportMetricsServiceRequest,
        )


def test_enum_names_and_integers_are_read_and_an_unknown_integer_is_kept_for_newer_senders() -> None:
    request = json_codec.decode(_span_json(kind="SPAN_KIND_SERVER", status={"code": 2}), ExportTraceServiceRequest)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert (span.kind, span.status.code) == (2, 2)
    newer = json_codec.decode(_span_json(kind=9), ExportTraceServiceRequest)
    assert newer.resource_spans[0].scope_spans[0].spans[0].kind == 9
    lowest = json_codec.decode(_span_json(kind=-(2**31)), ExportTraceServiceRequest)  # an enum is an int32
    assert lowest.resource_spans[0].scope_spans[0].spans[0].kind == -(2**31)


@given(json_values, json_values)
def test_any_value_in_an_enum_field_decodes_or_raises_otlp_json_error(kind: object, code: object) -> None:
    with contextlib.suppress(json_codec.OtlpJsonError):
        json_codec.decode(_span_json(kind=kind, status={"code": code}), ExportTraceServiceRequest)


def _log(body: object) -> bytes:
    record = {"severityText": "ERROR", "body": body}
    return json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]}).encode()


def _span(**fields: object) -> bytes:
    span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "s", **fields}
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


@pytest.mark.parametrize(
    ("body", "request_type", "fragment"),
    [
        (_log("payment failed for order 42"), ExportLogsServiceRequest, "logRecords[0].body: must be an object"),
        (_span(status="STATUS_CODE_ERROR"), ExportTraceServiceRequest, "spans[0].status: must be an object"),
        (_span(attributes=[{"key": "service.name", "value": "checkout"}]), ExportTraceServiceRequest, "value: must"),
        (_span(attributes=[{"key": "k", "value": {"doubleValue": True}}]), ExportTraceServiceRequest, "a number"),
        (_span(events="exception"), ExportTraceServiceRequest, "spans[0].events: must be a list"),
        (_span(parentSpanId="eee19b7e c3c1b174"), ExportTraceServiceRequest, "must be a hex string"),
    ],
)
def test_a_value_of_the_wrong_json_type_is_refused_not_turned_into_empty_data(
    body: bytes, request_type: type, fragment: str
) -> None:
    """protobuf's parser, ignoring unknown fields, would read a string given for a message as a list of unknown
    field names and keep an empty message: the log line lost, the error status unset, silently."""
    with pytest.raises(json_codec.OtlpJsonError, match=re.escape(fragment)):
        json_codec.decode(body, request_type)


def test_unknown_fields_are_ignored_whatever_they_hold_and_null_is_the_default() -> None:
    body = _span(kind=None, status={"code": None, "message": None}, meta={"kind": "batch", "traceId": "zz"})
    request = json_codec.decode(body, ExportTraceServiceRequest)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert (span.name, span.kind, span.status.code) == ("s", 0, 0)


def test_a_lone_surrogate_in_json_becomes_a_replacement_character_not_a_rejected_request() -> None:
    # A JavaScript SDK cutting a value to its length limit can split an emoji's surrogate pair.
    body = (
        b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"cut \\ud83d","attributes":[{"key":"prompt",'
        b'"value":{"stringValue":"whole \\ud83d\\ude00, lone \\uDE00"}}]}]}]}]}'
    )
    span = json_codec.decode(body, ExportTraceServiceRequest).resource_spans[0].scope_spans[0].spans[0]
    assert span.name == "cut \ufffd"
    assert span.attributes[0].value.string_value == "whole \U0001f600, lone \ufffd"


def test_a_deeply_nested_document_with_a_lone_surrogate_is_repaired_or_refused_never_a_crash() -> None:
    """The lone-surrogate pass walks the whole document after json.loads: its own recursion must not escape as a
    RecursionError (the receiver answered 500 and counted a bug). 600 levels: json.loads takes them and the pass
    (once two frames a level) now does too; 990: either may give up, as an OtlpJsonError."""
    spans = b'"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"\\ud83d"}]}]}]'

    def nested(depth: int) -> bytes:
        return b'{"meta":' + b"[" * depth + b"]" * depth + b"," + spans + b"}"

    request, repaired = json_codec.decode_repairing(nested(600), ExportTraceServiceRequest)
    assert request.resource_spans[0].scope_spans[0].spans[0].name == "\ufffd" and repaired == 1
    with contextlib.suppress(json_codec.OtlpJsonError):
        json_codec.decode(nested(990), ExportTraceServiceRequest)


def test_a_null_item_of_a_list_of_objects_is_named_null_in_the_error() -> None:
    body = b'{"resourceSpans":[null]}'
    with pytest.raises(json_codec.OtlpJsonError, match=r"resourceSpans\[0\]: must be an object, got null"):
        json_codec.decode(body, ExportTraceServiceRequest)


def _json_spans(*names: bytes, extra: bytes = b"") -> bytes:
    spans = b",".join(
        b'{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"' + n + b'"}' for n in names
    )
    return b'{"resourceSpans":[{"scopeSpans":[{"spans":[' + spans + b"]}]}]" + extra + b"}"


def test_json_repairs_count_only_strings_that_had_bad_bytes_not_literal_replacement_characters() -> None:
    """A valid U+FFFD a sender wrote is not a repair, also when another string of the body had a bad byte."""
    body = _json_spans(b"cut \xff", "sent \ufffd".encode(), "also \ufffd".encode())
    _, repaired = json_codec.decode_repairing(body, ExportTraceServiceRequest)
    assert repaired == 1


@pytest.mark.parametrize(
    "body",
    [
        _json_spans(b"x").replace(b'"resourceSpans"', b'"resourceSpans\xff"'),
        _json_spans(b"checkout").replace(b'"name"', b'"na\xffme"'),
    ],
    ids=["top-level-key", "span-field-key"],
)
def test_a_json_key_that_is_not_utf8_is_refused_not_dropped_silently(body: bytes) -> None:
    """Replacing a key's bad byte makes it an unknown field, dropped without a count or a warning: the sender is told
    full success for a batch (or a span's name) the agent threw away. Before the repair this was a 400."""
    with pytest.raises(json_codec.OtlpJsonError):
        json_codec.decode_repairing(body, ExportTraceServiceRequest)


def test_a_json_string_holding_a_utf8_encoded_surrogate_is_repaired_as_in_protobuf() -> None:
    """ED A0 80 (a surrogate encoded as UTF-8, 'WTF-8') is not UTF-8: the protobuf receiver repairs it, and so must
    JSON; json.loads reads it with surrogatepass and protobuf then refuses the whole request."""
    message, repaired = json_codec.decode_repairing(_json_spans(b"x\xed\xa0\x80y"), ExportTraceServiceRequest)
    assert "\ufffd" in message.resource_spans[0].scope_spans[0].spans[0].name and repaired == 1


# Bytes a JSON string may hold as they are (no quote, backslash or control character), most of them not UTF-8.
_STRING_BYTES = st.binary(max_size=24).map(lambda raw: bytes(b if b > 0x5C else 0x61 for b in raw))


@given(_STRING_BYTES)
def test_a_string_that_is_not_utf8_is_repaired_alike_over_json_and_protobuf(raw: bytes) -> None:
    """Pass 126: JSON gave one U+FFFD per bad byte, protobuf one per broken sequence (a character cut short), so one
    span name became two span-metric series by the transport it came over."""
    span = Span(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="x")
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(span)
    lenient = _lenient_class(ExportTraceServiceRequest)
    body = lenient.FromString(request.SerializeToString())
    body.resource_spans[0].scope_spans[0].spans[0].name = raw
    over_protobuf = decode_repairing_utf8(ExportTraceServiceRequest, body.SerializeToString())
    over_json = json_codec.decode(_json_spans(raw), ExportTraceServiceRequest)
    name = over_json.resource_spans[0].scope_spans[0].spans[0].name
    assert name == raw.decode("utf-8", "replace")
    if over_protobuf is not None:  # None: the bytes are UTF-8, and protobuf decodes them as they are
        assert over_protobuf[0].resource_spans[0].scope_spans[0].spans[0].name == name


# JSON escapes of surrogates, lone or in pairs (\ud83d\ude00), among the raw bytes.
_ESCAPES = st.sampled_from([b"\\udcc3", b"\\udca9", b"\\udc80", b"\\ud83d", b"\\ude00", b"\\udbff", b"\\udcff"])


@given(st.lists(st.one_of(_STRING_BYTES, _ESCAPES), max_size=8), _STRING_BYTES)
@example([b"\\udcc3", b"\\udca9"], b"")  # the UTF-8 bytes of an é, as escapes
def test_a_strings_repair_does_not_depend_on_bad_bytes_in_another_string(pieces: list[bytes], other: bytes) -> None:
    """Pass 128: with a raw bad byte anywhere in the body, escaped lone surrogates (\\udcc3\\udca9) were decoded as
    the bytes they look like (an é), and a raw E2 82 before an escaped \\udcac became a euro sign."""
    name = b"".join(pieces)
    alone = json_codec.decode(_json_spans(name), ExportTraceServiceRequest).resource_spans[0].scope_spans[0].spans
    beside = json_codec.decode(_json_spans(name, other + b"\xff"), ExportTraceServiceRequest)
    assert beside.resource_spans[0].scope_spans[0].spans[0].name == alone[0].name
    assert b"\\" in name or alone[0].name == name.decode("utf-8", "replace")


def test_a_cut_character_before_an_escaped_lone_surrogate_is_two_replacements_not_one_character() -> None:
    request = json_codec.decode(_json_spans(b"\xe2\x82\\udcac"), ExportTraceServiceRequest)
    assert request.resource_spans[0].scope_spans[0].spans[0].name == "\ufffd\ufffd"


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-16", "utf-32-le", "utf-32"])
def test_a_json_string_holding_a_lone_surrogate_in_a_utf16_or_utf32_body_is_repaired(encoding: str) -> None:
    """Review pass 68: decode_repairing says bytes that are not UTF-16/UTF-32 (for a body in those) become U+FFFD, but
    _text_of's fallback uses "surrogateescape", which cannot escape bytes below 0x80: a lone high surrogate (00 D8 in
    UTF-16-LE, 00 D8 00 00 in UTF-32-LE) raises UnicodeDecodeError there, and the whole body is refused (400)."""
    text = '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10",'
    text += '"spanId":"0102030405060708","name":"cut \ud83d"}]}]}]}'
    body = text.encode(encoding, "surrogatepass")
    message, repaired = json_codec.decode_repairing(body, ExportTraceServiceRequest)
    assert message.resource_spans[0].scope_spans[0].spans[0].name == "cut \ufffd" and repaired == 1


def _log_with_bytes_body(value: object) -> bytes:
    body = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"bytesValue": value}}]}]}]}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "value", ["!!!", "SGVs!!bG8=", "SGVsbG8=x", "S", "SGVsbG8===", "SGVsbA=", "ab+_", "SGVs-G8+", 5, ["SGVsbG8="]]
)
def test_a_bytes_value_that_is_not_base64_is_refused_not_changed_silently(value: object) -> None:
    # protobuf's parser drops characters outside the alphabet: "!!!" became b"" and "SGVs!!bG8=" b"Hello".
    with pytest.raises(json_codec.OtlpJsonError, match=r"body\.bytesValue: must be a base64 string"):
        json_codec.decode(_log_with_bytes_body(value), ExportLogsServiceRequest)


def test_checking_a_large_bytes_value_costs_about_what_decoding_it_does() -> None:
    """A regex of 4-character groups took 0.3 s and 284 MiB on 8 MiB of base64, holding the GIL throughout."""
    value = base64.b64encode(bytes(6 * 1024 * 1024)).decode()
    tracemalloc.start()
    try:
        request = json_codec.decode(_log_with_bytes_body(value), ExportLogsServiceRequest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(request.resource_logs[0].scope_logs[0].log_records[0].body.bytes_value) == 6 * 1024 * 1024
    assert peak < 100 * 1024 * 1024  # the body, its text and the decoded bytes: about 40 MiB


@given(st.binary(max_size=64), st.booleans(), st.booleans())
def test_a_bytes_value_in_standard_or_url_safe_base64_padded_or_not_decodes_to_its_bytes(
    data: bytes, url_safe: bool, padded: bool
) -> None:
    text = (base64.urlsafe_b64encode(data) if url_safe else base64.b64encode(data)).decode()
    if not padded:
        text = text.rstrip("=")
    request = json_codec.decode(_log_with_bytes_body(text), ExportLogsServiceRequest)
    assert request.resource_logs[0].scope_logs[0].log_records[0].body.bytes_value == data


def test_hex_ids_are_read_in_either_case() -> None:
    """Lowercase is what OTLP/JSON writes; an id in capitals (some hand-written senders) is the same id."""
    body = json.dumps(
        {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {"spans": [{"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174"}]}
                    ]
                }
            ]
        }
    ).encode()
    span = json_codec.decode(body, ExportTraceServiceRequest).resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert span.span_id.hex() == "eee19b7ec3c1b174"


@pytest.mark.parametrize(
    ("span", "path"),
    [
        ({"startTimeUnixNano": True}, "startTimeUnixNano"),
        ({"kind": 2147483648}, "kind"),
        ({"traceId": "abc"}, "traceId"),
    ],
)
def test_a_bad_field_is_refused_with_its_path(span: dict[str, object], path: str) -> None:
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    with pytest.raises(json_codec.OtlpJsonError) as refused:
        json_codec.decode(body, ExportTraceServiceRequest)
    assert f"resourceSpans[0].scopeSpans[0].spans[0].{path}" in str(refused.value)
