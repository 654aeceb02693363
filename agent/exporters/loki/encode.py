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


def encode_json(streams: Streams, compress: bool) -> bytes:
    """``{"streams": [{"stream": {...}, "values": [["<ns>", "<line>", {metadata}]]}]}``."""
    body = {
        "streams": [
            {
                "stream": dict(labels),
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
