"""Loki push bodies: snappy-compressed protobuf (the default, what Loki's clients send) or JSON."""

from __future__ import annotations

import gzip
import json

import cramjam

from agent.exporters.loki.convert import Streams
from agent.exporters.loki.labels import render_labels
from agent.exporters.loki.proto import PushRequest

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# Loki's distributor rate-limits a push by its line plus structured-metadata bytes (util.EntryTotalSize), and a
# push above the tenant's burst (`ingestion_burst_size_mb`, default 6 MiB) is refused with 429 however long one
# waits. The resource's attributes are repeated in every entry's metadata, so a small OTLP batch can exceed it:
# pushes are cut to stay well under the default burst.
MAX_PUSH_BYTES = 4 * 1024 * 1024


def entry_size(line: str, metadata: list[tuple[str, str]]) -> int:
    """What Loki counts for an entry against its rate limits: line and metadata names and values, in bytes."""
    return len(line.encode()) + sum(len(name.encode()) + len(value.encode()) for name, value in metadata)


def split_streams(streams: Streams, max_bytes: int = MAX_PUSH_BYTES) -> list[Streams]:
    """``streams`` cut into pushes of at most ``max_bytes`` as Loki counts them (one entry over it goes alone);
    entries keep their order, so a stream cut in two is still sent in time order."""
    characters = sum(
        len(line) + sum(len(n) + len(v) for n, v in metadata)
        for entries in streams.values()
        for _, line, metadata in entries
    )
    if characters * 4 <= max_bytes:  # cannot be over: skip encoding
        return [streams] if streams else []
    pushes: list[Streams] = []
    current: Streams = {}
    size = 0
    for labels, entries in streams.items():
        for entry in entries:
            weight = entry_size(entry[1], entry[2])
            if current and size + weight > max_bytes:
                pushes.append(current)
                current, size = {}, 0
            current.setdefault(labels, []).append(entry)
            size += weight
    if current:
        pushes.append(current)
    return pushes


def encode_protobuf(streams: Streams) -> bytes:
    """A ``logproto.PushRequest``, snappy block-compressed (Loki's protobuf push format)."""
    request = PushRequest()
    for labels, entries in streams.items():
        stream = request.streams.add(labels=render_labels(labels))
        for timestamp, line, metadata in entries:
            entry = stream.entries.add(line=line)
            entry.timestamp.seconds, entry.timestamp.nanos = divmod(timestamp, 1_000_000_000)
            for name, value in metadata:
                entry.structuredMetadata.add(name=name, value=value)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def json_label_value(value: str) -> str:
    """A label value Loki takes over JSON: it re-renders a JSON push's labels as a selector with Go's
    strconv.Quote, which leaves U+FFFD as it is, and its selector parser then refuses the stream (invalid UTF-8);
    the value keeps ``\\ufffd`` as text instead."""
    return value.replace("\ufffd", "\\ufffd") if "\ufffd" in value else value


def encode_json(streams: Streams, compress: bool) -> bytes:
    """``{"streams": [{"stream": {...}, "values": [["<ns>", "<line>", {metadata}]]}]}``."""
    body = {
        "streams": [
            {
                "stream": {name: json_label_value(value) for name, value in labels},
                "values": [
                    [str(timestamp), line, dict(metadata)] if metadata else [str(timestamp), line]
                    for timestamp, line, metadata in entries
                ],
            }
            for labels, entries in streams.items()
        ]
    }
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return gzip.compress(raw, compresslevel=5) if compress else raw
