"""Request body decompression for OTLP/HTTP, bounded by the decompressed size and strict about truncation.

aiohttp's own decompression accepts a gzip stream cut short (it never checks the trailer), so part of a request
would be accepted as if it were all of it; and it answers encodings it lacks a library for with advice to the
operator, outside the OTLP error format. The receiver reads the raw body and decompresses it here instead.
"""

from __future__ import annotations

import zlib

from agent.receivers.otlp.core import Failure, RequestFailed

_GZIP = 16 + zlib.MAX_WBITS
_ZLIB_OR_GZIP = 32 + zlib.MAX_WBITS  # "deflate" in HTTP is the zlib format; some senders use gzip framing
_WBITS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": _ZLIB_OR_GZIP}
SUPPORTED = ("gzip", "deflate", "identity")


def decompressed(content_encoding: str, body: bytes, limit: int) -> bytes:
    """The request as sent before compression; RequestFailed if its encoding is unknown, it is corrupt or cut
    short, or it decompresses to more than ``limit`` bytes (a gzip bomb stops at ``limit``)."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity") or not body:  # no body is an empty request, however it says it is encoded
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise RequestFailed(
            Failure.UNSUPPORTED_MEDIA_TYPE,
            f"unsupported Content-Encoding {content_encoding!r}; use {', '.join(SUPPORTED)}",
        )
    try:
        return _inflate(body, wbits, limit)
    except zlib.error as exc:
        raise RequestFailed(Failure.MALFORMED, f"corrupt {encoding} body: {exc}") from None


# Input is fed to zlib in slices: at the end of each member zlib copies the input it was given but did not need,
# so a body handed over whole costs a copy of the rest of the body per member, quadratic in their number (a 4 MB
# body of 200,000 empty members held the event loop for 7 s). Senders write one member, or a few when appending.
_SLICE_BYTES = 64 * 1024
MAX_MEMBERS = 1000


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    offset = 0
    view = memoryview(body)
    for _member in range(MAX_MEMBERS):  # a gzip body may hold several members, one after the other (RFC 1952)
        inflater = zlib.decompressobj(wbits)
        while not inflater.eof:
            if offset >= len(body):
                raise RequestFailed(Failure.MALFORMED, "compressed body is truncated: the stream ends before its end")
            given = view[offset : offset + _SLICE_BYTES]
            part = inflater.decompress(given, limit - size + 1)
            size += len(part)
            if size > limit:
                raise RequestFailed(Failure.TOO_LARGE, f"request body exceeds {limit} bytes after decompression")
            parts.append(part)
            offset += len(given) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
        if offset >= len(body):
            return b"".join(parts)
    raise RequestFailed(Failure.MALFORMED, f"compressed body holds more than {MAX_MEMBERS} members")
