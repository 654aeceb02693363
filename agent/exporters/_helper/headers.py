"""Checks of configured request headers, made at load: a header the request library refuses is refused on every
attempt, so every batch would be dropped while the config looked valid."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

# RFC 9110 5.5: a field value holds no control character other than a horizontal tab (CR, LF, NUL never).
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# gRPC over HTTP/2: ASCII-Value -> 1*( %x20-%x7E ) for metadata keys not ending in -bin.
_GRPC_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")


def header_problems(headers: Mapping[str, str], grpc: bool) -> Iterator[tuple[str, str]]:
    """``(path, message)`` for each header name or value that cannot be sent; never the value itself (a secret)."""
    for name, value in headers.items():
        path = f"headers.{name}"
        if not name or name != name.strip() or any(c in name for c in ":\r\n "):
            yield path, "is not a valid header name"
        elif grpc and name.lower().endswith("-bin"):
            yield path, "gRPC sends a -bin key as binary metadata; give a text header"
        # A value read from a secret file through ${env:…} often ends in a newline.
        elif _HEADER_CONTROL.search(value):
            yield path, "the value contains a control character (a trailing newline?)"
        elif grpc and not _GRPC_METADATA_VALUE.fullmatch(value):
            yield path, "a gRPC metadata value must be printable ASCII"


def credential_problems(endpoint: str, headers: Mapping[str, str], grpc: bool) -> Iterator[tuple[str, str]]:
    """Credentials in the endpoint (``user:password@``) that could never be sent: over gRPC they would be read as
    part of the host name; over HTTP the client refuses them beside an ``authorization`` header, on every attempt."""
    if "://" not in endpoint or "@" not in urlsplit(endpoint).netloc:
        return
    if grpc:
        yield "endpoint", "a gRPC endpoint takes no user:password@; give the credentials as headers.authorization"
    elif any(name.lower() == "authorization" for name in headers):
        yield "endpoint", "has user:password@ and headers.authorization gives credentials too; give them once"
