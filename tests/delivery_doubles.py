"""Test backends for the delivery tests: an OTLP capture server (gRPC and HTTP) and a Loki push API double.

Both run in background threads so they serve the agent whether it runs in the test's event loop or as a
subprocess, can be taken down and brought back on the same port (outage drills), and can be told to answer
the next requests with a failure.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import json
import logging
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import cramjam
import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from agent.component import CreateSettings, Kind, Signal
from agent.config.schema import ConfigError, build
from agent.config.service import ServiceConfig
from agent.otlp.signals import SPECS
from agent.telemetry.selfmetrics import SelfMetrics
from tests.helpers import free_port


def make_settings(
    component_id: str, metrics: SelfMetrics | None = None, service: ServiceConfig | None = None
) -> CreateSettings:
    """Create settings for a component under test, with its own metrics registry unless one is given."""
    return CreateSettings(
        component_id,
        Kind.EXPORTER,
        logging.getLogger(f"otel_sidecar.{component_id}"),
        metrics or SelfMetrics(),
        service or ServiceConfig(),
        {},
    )


def build_config(config_class: type[T], raw: dict[str, Any], path: str = "component") -> T:
    """A component config built from raw YAML data as the loader does; fails the test on any error."""
    errors: list[ConfigError] = []
    config = build(config_class, raw, path, errors)
    assert not errors, errors
    assert config is not None
    return config


T = TypeVar("T")


@dataclass
class PlannedFailure:
    """One answer to give instead of success: a gRPC code or an HTTP status, a message, a retry delay."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    http_status: int = 503
    message: str = "planned failure"
    retry_after: float | None = None


@dataclass
class Capture:
    """What a backend received, thread-safe."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: dict[Signal, list[Message]] = field(default_factory=lambda: {s: [] for s in Signal})
    headers: list[dict[str, str]] = field(default_factory=list)
    failures: list[PlannedFailure] = field(default_factory=list)
    partial_rejections: list[int] = field(default_factory=list)
    # Collector-based servers (Jaeger v2) send an empty partial_success with every full success.
    empty_partial_success: bool = False
    attempts: int = 0

    def record(self, signal: Signal, request: Message, headers: dict[str, str]) -> PlannedFailure | None:
        with self.lock:
            self.attempts += 1
            self.headers.append(headers)
            if self.failures:
                return self.failures.pop(0)
            self.requests[signal].append(request)
            return None

    def response(self, signal: Signal) -> Message:
        """Full success, or a partial success rejecting the planned number of items."""
        with self.lock:
            rejected = self.partial_rejections.pop(0) if self.partial_rejections else 0
        response = SPECS[signal].response(rejected, f"{rejected} rejected by the test backend" if rejected else "")
        if self.empty_partial_success:
            response.partial_success.SetInParent()
        return response

    def spans(self) -> list[Any]:
        with self.lock:
            requests = list(self.requests[Signal.TRACES])
        return [span for r in requests for rs in r.resource_spans for ss in rs.scope_spans for span in ss.spans]

    def log_records(self) -> list[Any]:
        with self.lock:
            requests = list(self.requests[Signal.LOGS])
        return [rec for r in requests for rl in r.resource_logs for sl in rl.scope_logs for rec in sl.log_records]

    def resource_spans(self) -> Iterator[Any]:
        with self.lock:
            requests = list(self.requests[Signal.TRACES])
        for request in requests:
            yield from request.resource_spans


class OtlpCapture:
    """An OTLP backend (gRPC and OTLP/HTTP protobuf) that records every export request it accepts."""

    def __init__(self, tls: tuple[Path, Path] | None = None, client_ca: Path | None = None) -> None:
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.capture = Capture()
        self._tls = tls  # (certificate, key) PEM files: serve TLS on both ports
        self._client_ca = client_ca  # with tls: require a client certificate issued by this CA (mutual TLS)
        self._grpc: grpc.Server | None = None
        self._http: _Server | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> OtlpCapture:
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        for signal, spec in SPECS.items():
            handler = grpc.unary_unary_rpc_method_handler(
                self._grpc_handler(signal),
                request_deserializer=spec.request_type.FromString,
                response_serializer=lambda message: message.SerializeToString(),
            )
            self._grpc.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(spec.grpc_service, {"Export": handler}),)
            )
        if self._tls is None:
            self._grpc.add_insecure_port(self.grpc_endpoint)
        else:
            cert, key = (path.read_bytes() for path in self._tls)
            client_ca = self._client_ca.read_bytes() if self._client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
            )
            self._grpc.add_secure_port(self.grpc_endpoint, credentials)
        self._grpc.start()
        self._http = _serve_http(self.http_port, self._http_handler_class(), self._tls, self._client_ca)
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(0).wait()
            self._grpc = None
        if self._http is not None:
            self._http.take_down()
            self._http = None

    def __enter__(self) -> OtlpCapture:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _grpc_handler(self, signal: Signal) -> Any:
        def export(request: Message, context: grpc.ServicerContext) -> Message:
            headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
            failure = self.capture.record(signal, request, headers)
            if failure is not None:
                _abort_grpc(context, failure)
            return self.capture.response(signal)

        return export

    def _http_handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        capture = self.capture
        paths = {spec.http_path: signal for signal, spec in SPECS.items()}

        class Handler(_QuietHandler):
            def do_POST(self) -> None:
                signal = paths.get(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if signal is None or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.reply(404 if signal is None else 415, b"", "text/plain")
                    return
                request = SPECS[signal].request_type.FromString(body)
                failure = capture.record(signal, request, dict(self.headers))
                if failure is None:
                    self.reply(200, capture.response(signal).SerializeToString(), "application/x-protobuf")
                    return
                status = status_pb2.Status(code=failure.grpc_code.value[0], message=failure.message)
                extra = {"Retry-After": str(int(failure.retry_after))} if failure.retry_after is not None else {}
                self.reply(failure.http_status, status.SerializeToString(), "application/x-protobuf", extra)

        return Handler


def _abort_grpc(context: grpc.ServicerContext, failure: PlannedFailure) -> None:
    status = status_pb2.Status(code=failure.grpc_code.value[0], message=failure.message)
    if failure.retry_after is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(failure.retry_after * 1e9))
        status.details.add().Pack(info)
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
    context.abort(failure.grpc_code, failure.message)


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def reply(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    """Remembers its open connections so that stopping it really takes the backend down (keep-alive
    connections would otherwise go on being served by their handler threads)."""

    daemon_threads = True

    def __init__(self, port: int, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def take_down(self) -> None:
        self.shutdown()
        self.server_close()
        with self.connections_lock:
            for connection in list(self.connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


def _serve_http(
    port: int,
    handler: type[http.server.BaseHTTPRequestHandler],
    tls: tuple[Path, Path] | None = None,
    client_ca: Path | None = None,
) -> _Server:
    server = _Server(port, handler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(str(client_ca))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --- Loki -----------------------------------------------------------------------------------------------------------


@dataclass
class LokiEntry:
    timestamp_ns: int
    line: str
    metadata: dict[str, str]


@dataclass
class LokiPush:
    encoding: str
    tenant: str | None
    streams: list[tuple[dict[str, str], list[LokiEntry]]]


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LABEL_PAIR = re.compile(r'\s*([^=\s,{}]+)="((?:[^"\\]|\\.)*)"\s*(,|$)')


_LOKI_MAX_SAMPLE_AGE_NS = 7 * 86400 * 10**9  # reject_old_samples_max_age: 168h
_LOKI_CREATION_GRACE_NS = 600 * 10**9  # creation_grace_period: 10m
_LOKI_MAX_CHUNK_AGE_NS = 2 * 3600 * 10**9  # ingester max_chunk_age: 2h; entries half of it behind are refused
_LOKI_MAX_RETURNED_STREAM_ERRORS = 10  # ingester max_returned_stream_errors


class LokiDouble:
    """A DOUBLE of Loki's push API, not Loki: Loki (a Go service) cannot be installed on this machine, so the
    tests run against this implementation of its documented contract (``POST /loki/api/v1/push``):

    - ``Content-Type: application/x-protobuf`` (or none): a snappy block-compressed ``logproto.PushRequest``,
      decoded here with a hand-written wire reader from the documented field numbers, not with the agent's
      own message classes, so a wrong field number in the agent fails the tests;
    - ``application/json``: ``{"streams": [{"stream": {..}, "values": [["<ns>", "<line>", {metadata}]]}]}``,
      optionally with ``Content-Encoding: gzip``;
    - 204 on success; 400 with a plain-text reason for invalid label names, more than 15 labels, duplicate
      labels, or lines over ``max_line_size``; 429 / 503 (with ``Retry-After``) when told to fail;
    - with ``check_timestamps``: entries older than ``reject_old_samples_max_age`` (1 week) or newer than
      ``creation_grace_period`` (10 minutes) are discarded one by one; as Loki's distributor does, the push's
      valid entries are stored and the push is answered 400 naming the discarded ones. Off by default: most
      tests send reproducible data with fixed timestamps, years old;
    - with ``check_order``: as Loki's ingester does with unordered writes (the default), an entry more than half
      of ``max_chunk_age`` (1 hour) older than the newest its stream has taken is refused, the stream's other
      entries are stored, and the push is answered 400 in the ingester's words, counting the refused entries
      (see ``too_far_behind_answer``). Like a single-binary Loki (one ingester), the answer is the last
      stream's: each stream's outcome replaces the one before, and an ingester's refusal replaces the
      distributor's.
    """

    def __init__(
        self, max_line_size: int = 256 * 1024, check_timestamps: bool = False, check_order: bool = False
    ) -> None:
        self.port = free_port()
        self.max_line_size = max_line_size
        self.check_timestamps = check_timestamps
        self.check_order = check_order
        self.newest: dict[tuple[str, str], int] = {}  # (tenant, stream) → newest timestamp taken, for check_order
        self.lock = threading.Lock()
        self.pushes: list[LokiPush] = []
        self.failures: list[PlannedFailure] = []
        self.attempts = 0
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/loki/api/v1/push"

    def start(self) -> LokiDouble:
        self._server = _serve_http(self.port, self._handler_class())
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.take_down()
            self._server = None

    def __enter__(self) -> LokiDouble:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def entries(self) -> list[tuple[dict[str, str], LokiEntry]]:
        with self.lock:
            pushes = list(self.pushes)
        return [(labels, entry) for push in pushes for labels, entries in push.streams for entry in entries]

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        double = self

        class Handler(_QuietHandler):
            def do_POST(self) -> None:
                if self.path != "/loki/api/v1/push":
                    self.reply(404, b"404 page not found\n", "text/plain")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, reason, extra = double.handle(
                    self.headers.get("Content-Type"),
                    self.headers.get("Content-Encoding"),
                    body,
                    self.headers.get("X-Scope-OrgID"),
                )
                if status == 204:
                    self.send_response(204)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.reply(status, reason.encode() + b"\n", "text/plain; charset=utf-8", extra)

        return Handler

    def handle(
        self, content_type: str | None, encoding: str | None, body: bytes, tenant: str | None
    ) -> tuple[int, str, dict[str, str]]:
        with self.lock:
            self.attempts += 1
            if self.failures:
                failure = self.failures.pop(0)
                extra = {"Retry-After": str(int(failure.retry_after))} if failure.retry_after is not None else {}
                return failure.http_status, failure.message, extra
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in (None, "", "snappy"):
                return 415, f"unsupported content encoding {encoding}", {}
            if content_type is None or content_type.startswith("application/x-protobuf"):
                push = LokiPush("protobuf", tenant, _decode_protobuf(bytes(cramjam.snappy.decompress_raw(body))))
            elif content_type.startswith("application/json"):
                push = LokiPush("json", tenant, _decode_json(json.loads(body)))
            else:
                return 415, f"unsupported content type {content_type}", {}
        except (ValueError, KeyError, TypeError, cramjam.DecompressionError) as exc:
            return 400, f"error parsing push request: {exc}", {}
        problem = self._validate(push)
        if problem:
            return 400, problem, {}
        discarded = self._discard_out_of_range(push) if self.check_timestamps else []
        with self.lock:
            refusal = self._ingest(push) if self.check_order else None
            self.pushes.append(push)
        if refusal:
            return 400, refusal, {}
        if discarded:
            return 400, "; ".join(discarded[:3]), {}
        return 204, "", {}

    def _ingest(self, push: LokiPush) -> str | None:
        """Take out of ``push`` the entries Loki's ingester refuses as too far behind their stream's newest; the
        answer to give, as Loki's ``instance.Push`` does: ``_, appendErr = s.Push(...)`` for each stream in turn,
        so the last stream's outcome is the push's (a later stream taken whole hides an earlier refusal)."""
        tenant = push.tenant or "fake"  # Loki's tenant when auth_enabled is false
        answer: str | None = None
        for index, (labels, entries) in enumerate(push.streams):
            stream = _go_labels(labels)
            newest = self.newest.get((tenant, stream))
            kept: list[LokiEntry] = []
            ignored: list[tuple[LokiEntry, int]] = []  # with the cutoff it was refused at
            for entry in entries:
                # pkg/ingester/stream.go, validateEntries: cutoff := highestTs.Add(-s.cfg.MaxChunkAge / 2)
                if newest is not None and entry.timestamp_ns < newest - _LOKI_MAX_CHUNK_AGE_NS // 2:
                    ignored.append((entry, newest - _LOKI_MAX_CHUNK_AGE_NS // 2))
                    continue
                kept.append(entry)
                newest = entry.timestamp_ns if newest is None else max(newest, entry.timestamp_ns)
            if newest is not None:
                self.newest[(tenant, stream)] = newest
            push.streams[index] = (labels, kept)
            answer = too_far_behind_answer(tenant, stream, ignored, len(entries)) if ignored else None
        return answer

    @staticmethod
    def _discard_out_of_range(push: LokiPush) -> list[str]:
        """Take out of ``push`` the entries Loki discards for their timestamp; say why for each."""
        now = time.time_ns()
        reasons = []
        for index, (labels, entries) in enumerate(push.streams):
            kept = []
            for entry in entries:
                if entry.timestamp_ns < now - _LOKI_MAX_SAMPLE_AGE_NS:
                    reasons.append(f"entry for stream '{labels}' has timestamp too old: {entry.timestamp_ns}")
                elif entry.timestamp_ns > now + _LOKI_CREATION_GRACE_NS:
                    reasons.append(f"entry for stream '{labels}' has timestamp too new: {entry.timestamp_ns}")
                else:
                    kept.append(entry)
            push.streams[index] = (labels, kept)
        return reasons

    def _validate(self, push: LokiPush) -> str | None:
        for labels, entries in push.streams:
            if len(labels) > 15:
                return f"stream '{labels}' has {len(labels)} label names; limit 15 (max_label_names_per_series)"
            for name in labels:
                if not _LABEL_NAME.match(name) or name.startswith("__"):
                    return f"invalid_labels: label name {name!r} is not valid"
            for entry in entries:
                if len(entry.line.encode()) > self.max_line_size:
                    return f"line_too_long: max size is {self.max_line_size} bytes for stream {labels}"
        return None


def too_far_behind_answer(tenant: str, stream: str, ignored: list[tuple[LokiEntry, int]], total: int) -> str:
    """The body of Loki's 400 for entries of a stream its ingester refused as too far behind, in Loki's words.

    grafana/loki pkg/ingester/stream.go (commit 0e76b9d3), errorForFailedEntries, about line 263-269::

        for _, entryWithError := range limitedFailedEntries {
            fmt.Fprintf(&buf,
                "entry with timestamp %s ignored, reason: '%s',\n",
                entryWithError.entry.Timestamp.String(), entryWithError.e.Error())
        }
        fmt.Fprintf(&buf, "user '%s', total ignored: %d out of %d for stream: %s", s.tenant,
            len(failedEntriesWithError), totalEntries, streamName)

    with the reason from pkg/chunkenc (errTooFarBehind.Error)::

        "entry too far behind, entry timestamp is: %s, oldest acceptable timestamp is: %s"  (both RFC 3339)

    The distributor passes it on as the body (``http.Error(w, body, int(resp.Code))``, which adds a newline).
    """
    lines = [
        f"entry with timestamp {_go_time(entry.timestamp_ns)} ignored, reason: 'entry too far behind, entry "
        f"timestamp is: {_rfc3339(entry.timestamp_ns)}, oldest acceptable timestamp is: {_rfc3339(cutoff)}',\n"
        for entry, cutoff in ignored[:_LOKI_MAX_RETURNED_STREAM_ERRORS]
    ]
    return "".join(lines) + f"user '{tenant}', total ignored: {len(ignored)} out of {total} for stream: {stream}"


def _go_labels(labels: dict[str, str]) -> str:
    """Prometheus ``labels.Labels.String()``: sorted by name, values quoted (Go's strconv.Quote)."""
    return "{" + ", ".join(f"{name}={json.dumps(labels[name], ensure_ascii=False)}" for name in sorted(labels)) + "}"


def _go_time(timestamp_ns: int) -> str:
    """Go's ``time.Time.String()`` of a UTC time: ``2023-11-14 22:13:20.000000003 +0000 UTC``, zeros trimmed."""
    seconds, nanos = divmod(timestamp_ns, 10**9)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + " +0000 UTC"


def _rfc3339(timestamp_ns: int) -> str:
    return datetime.fromtimestamp(timestamp_ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_labels(text: str) -> dict[str, str]:
    """``{a="b", c="d"}`` → ``{"a": "b", "c": "d"}``; raises ValueError on a malformed or duplicate label."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError(f"labels must be enclosed in braces: {text!r}")
    inner = text[1:-1].strip()
    labels: dict[str, str] = {}
    position = 0
    while position < len(inner):
        match = _LABEL_PAIR.match(inner, position)
        if match is None:
            raise ValueError(f"cannot parse labels {text!r} at {position}")
        name = match.group(1)
        if name in labels:
            raise ValueError(f"duplicate label name {name!r}")
        if "\ufffd" in match.group(2):  # the PromQL lexer Loki parses with cannot tell it from invalid UTF-8
            raise ValueError(f"parse error: invalid UTF-8 rune in label {name!r}")
        labels[name] = json.loads('"' + match.group(2) + '"')
        position = match.end()
    return labels


def _decode_json(body: dict[str, Any]) -> list[tuple[dict[str, str], list[LokiEntry]]]:
    streams = []
    for stream in body["streams"]:
        entries = []
        for value in stream["values"]:
            metadata = value[2] if len(value) > 2 else {}
            if not all(isinstance(v, str) for v in metadata.values()):
                raise ValueError("structured metadata values must be strings")
            entries.append(LokiEntry(int(value[0]), value[1], dict(metadata)))
        labels = dict(stream["stream"])
        for name, label in labels.items():
            # Loki renders the labels as a selector (Go's strconv.Quote keeps U+FFFD) and parses that back.
            if "\ufffd" in label:
                raise ValueError(f"parse error: invalid UTF-8 rune in label {name!r}")
        streams.append((labels, entries))
    return streams


# --- a minimal protobuf wire reader (independent of the agent's message classes) ------------------------------------


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            yield number, value
        elif wire_type == 2:
            length, position = _varint(data, position)
            yield number, data[position : position + length]
            position += length
        else:
            raise ValueError(f"unexpected wire type {wire_type}")


def _decode_protobuf(data: bytes) -> list[tuple[dict[str, str], list[LokiEntry]]]:
    streams = []
    for number, stream in _fields(data):  # PushRequest.streams = 1
        if number != 1:
            continue
        labels: dict[str, str] = {}
        entries = []
        for field_number, value in _fields(stream):  # type: ignore[arg-type]
            if field_number == 1:  # StreamAdapter.labels
                labels = parse_labels(bytes(value).decode())  # type: ignore[arg-type]
            elif field_number == 2:  # StreamAdapter.entries
                entries.append(_decode_entry(value))  # type: ignore[arg-type]
        streams.append((labels, entries))
    return streams


def _decode_entry(data: bytes) -> LokiEntry:
    timestamp, line, metadata = 0, "", {}
    for number, value in _fields(data):
        if number == 1:  # EntryAdapter.timestamp: google.protobuf.Timestamp{seconds=1, nanos=2}
            parts = dict(_fields(value))  # type: ignore[arg-type]
            timestamp = int(parts.get(1, 0)) * 1_000_000_000 + int(parts.get(2, 0))  # type: ignore[arg-type]
        elif number == 2:  # EntryAdapter.line
            line = bytes(value).decode()  # type: ignore[arg-type]
        elif number == 3:  # EntryAdapter.structuredMetadata: LabelPairAdapter{name=1, value=2}
            pair = {n: bytes(v).decode() for n, v in _fields(value)}  # type: ignore[arg-type]
            metadata[pair.get(1, "")] = pair.get(2, "")
    return LokiEntry(timestamp, line, metadata)
