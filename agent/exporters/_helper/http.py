"""What the HTTP exporters (OTLP/HTTP, Loki) share about sending with aiohttp and failing to reach a backend."""

from __future__ import annotations

import io

import aiohttp

from agent.config.schema import without_credentials
from agent.exporters._helper.retry import PermanentExportError, RetryableError

# Failures before a byte of the request left: connecting, a connect timeout, a pinned certificate, a bad URL.
_BEFORE_SENDING = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerFingerprintMismatch,
    aiohttp.InvalidURL,
)


def request_body(body: bytes) -> io.BytesIO:
    """``body`` as aiohttp sends a large body without holding the event loop: a ``BytesIO`` is written in 64 KiB
    chunks with the loop free between them. Raw bytes are written at once, and over 1 MiB (a Loki push may be 6)
    aiohttp warns that they may block the loop (a ``ResourceWarning``, shown under ``-X dev``)."""
    return io.BytesIO(body)


def attempt_timeout(seconds: float) -> aiohttp.ClientTimeout:
    """One attempt's bound, with getting a connection (TCP, TLS, a pool slot) bounded a little sooner: aiohttp
    then says ``ConnectionTimeoutError`` for a backend never reached, where the total timeout alone says only
    ``TimeoutError`` and a batch never sent would be counted as possibly delivered (``unreachable``)."""
    return aiohttp.ClientTimeout(total=seconds, connect=seconds * 0.9)


def unreachable(exc: aiohttp.ClientError | TimeoutError, url: str, timeout: float) -> RetryableError:
    """A failure to get an answer from ``url`` as a retryable error, the URL's credentials masked.

    Only a failure to connect proves nothing was sent. Anything later (the connection closed or reset mid-request,
    an answer cut short or unreadable, aiohttp's total timeout) may follow a request the backend received, so its
    resend is counted as a possible duplicate.
    """
    shown = without_credentials(url)
    # aiohttp's own text may repeat the URL whole (a ClientResponseError names it, query string included).
    said = without_credentials(str(exc)).replace(url, shown)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return RetryableError(f"connection to {shown} closed: {said}", reason="connection", maybe_delivered=True)
    if isinstance(exc, _BEFORE_SENDING):
        return RetryableError(f"cannot reach {shown}: {said}", reason="connection")
    if isinstance(exc, aiohttp.ClientError):
        return RetryableError(f"exchange with {shown} failed: {said}", reason="connection", maybe_delivered=True)
    message = f"no answer from {shown} within {timeout:g}s (the exporter's timeout)"
    return RetryableError(message, reason="timeout", maybe_delivered=True)


def redirect_refused(status: int, location: str, url: str) -> PermanentExportError:
    """A 3xx answer. Redirects are never followed: a 301/302 turns the POST into a GET without its body (the data
    would be lost as a success), and a redirect to another host would carry the configured credential headers."""
    shown, target = without_credentials(url), without_credentials(location)
    return PermanentExportError(
        f"{shown} answered HTTP {status}, a redirect to {target}: redirects are not followed; set the endpoint to "
        "where it points"
    )
