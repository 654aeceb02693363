"""What the HTTP exporters (OTLP/HTTP, Loki) share about failing to reach a backend with aiohttp."""

from __future__ import annotations

import aiohttp

from agent.config.schema import without_credentials
from agent.exporters._helper.retry import PermanentExportError, RetryableError


def unreachable(exc: aiohttp.ClientError | TimeoutError, url: str, timeout: float) -> RetryableError:
    """A failure to get an answer from ``url`` as a retryable error, the URL's credentials masked.

    A connection closed mid-request and aiohttp's total timeout (a bare TimeoutError) may follow a request the
    backend received, so they may have delivered; a failure to connect did not.
    """
    shown = without_credentials(url)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return RetryableError(f"connection to {shown} closed: {exc}", reason="connection", maybe_delivered=True)
    if isinstance(exc, aiohttp.ClientError):
        return RetryableError(f"cannot reach {shown}: {exc}", reason="connection")
    return RetryableError(f"no answer from {shown} within {timeout:g}s", reason="timeout", maybe_delivered=True)


def redirect_refused(status: int, location: str, url: str) -> PermanentExportError:
    """A 3xx answer. Redirects are never followed: a 301/302 turns the POST into a GET without its body (the data
    would be lost as a success), and a redirect to another host would carry the configured credential headers."""
    shown, target = without_credentials(url), without_credentials(location)
    return PermanentExportError(
        f"{shown} answered HTTP {status}, a redirect to {target}: redirects are not followed; set the endpoint to "
        "where it points"
    )
