"""When the certificates the agent presents stop being valid: gauges per TLS ``cert_file``, and log lines.

A certificate that expires breaks every connection it serves or opens, and nothing in the agent would say so
beforehand (an expired one even loads without a word: OpenSSL checks dates at the handshake, on the peer's side).
One loaded out of date is logged when it is loaded; one in use when it expires is logged at that moment.
The dates are read from the bytes the component loaded, not from the file later: after a rotation without a
reload the file is new but the agent still presents the old certificate, which is what must raise the alert.

The gauges hold the certificates of what runs: it is set again after the start and after each reload (a refused
reload changes nothing), so the series of a component that no longer runs, or no longer has TLS, go away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from agent.telemetry.logs import component_logger
from agent.telemetry.selfmetrics import SelfMetrics

_log = component_logger("tls")


@dataclass(frozen=True)
class LoadedCertificate:
    """The validity of a ``cert_file`` as loaded: of its certificate chain, the narrowest (the earliest end and
    the latest start), since peers refuse the chain when any certificate in it is out of date."""

    setting: str  # the config path of its TLS settings, e.g. exporters.otlp/jaeger.tls
    file: str
    not_before: float  # Unix seconds
    not_after: float


class PresentsCertificate(Protocol):
    """TLS material read for a server or a client (``ServerTls``, ``ClientTls``)."""

    @property
    def certificate(self) -> LoadedCertificate | None: ...


def presented_certificates(tls: PresentsCertificate | None) -> list[LoadedCertificate]:
    """The certificate a component presents with ``tls``, for its expiry: none without TLS (or dates unreadable)."""
    return [tls.certificate] if tls is not None and tls.certificate is not None else []


def loaded_certificate(setting: str, file: str, pem: bytes) -> LoadedCertificate | None:
    """The validity of the PEM chain ``pem`` read from ``file``; None (and a warning) when it cannot be read.

    Only called on files OpenSSL has already accepted, so None means a certificate this parser is stricter about:
    no series then, but the component runs, as it would without this gauge.
    """
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        _log.warning(
            "cannot read the dates of a TLS certificate: its expiry is not exported",
            extra={"setting": setting, "file": file, "error": str(exc)},
        )
        return None
    not_before = max(cert.not_valid_before_utc.timestamp() for cert in chain)
    not_after = min(cert.not_valid_after_utc.timestamp() for cert in chain)
    return LoadedCertificate(setting, file, not_before, not_after)


class CertificateValidity:
    """Two gauges per loaded ``cert_file``: when its chain starts and stops being valid. The start lets an alert
    take a certificate's lifetime into account (a day-long one is always within days of its end)."""

    def __init__(self, metrics: SelfMetrics) -> None:
        labels = ["setting", "file"]
        self._not_after = metrics.gauge(
            "tls_certificate_expiry_timestamp_seconds",
            "When the TLS certificate chain the agent loaded from cert_file stops being valid (Unix seconds; the "
            "earliest end in the chain), by the config path of its settings. Read at the start and at each reload.",
            labels,
        )
        self._not_before = metrics.gauge(
            "tls_certificate_not_before_timestamp_seconds",
            "When the TLS certificate chain the agent loaded from cert_file started being valid (Unix seconds; the "
            "latest start in the chain).",
            labels,
        )
        self._published: set[tuple[str, str]] = set()
        self._expiries: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def publish(self, certificates: Iterable[LoadedCertificate]) -> None:
        """Expose ``certificates``, the running ones, in place of those published before; log those out of date,
        and each of the others at the moment it expires, should it still be in use then."""
        self.stop_watching()
        now = time.time()
        current: set[tuple[str, str]] = set()
        for cert in certificates:
            key = (cert.setting, cert.file)
            current.add(key)
            self._not_after.labels(*key).set(cert.not_after)
            self._not_before.labels(*key).set(cert.not_before)
            _say_if_out_of_date(cert, now)
            self._watch_expiry(cert, now)
        for key in self._published - current:
            self._not_after.remove(*key)
            self._not_before.remove(*key)
        self._published = current

    def stop_watching(self) -> None:
        for handle in self._expiries.values():
            handle.cancel()
        self._expiries.clear()

    def _watch_expiry(self, cert: LoadedCertificate, now: float) -> None:
        if cert.not_after <= now:
            return  # said already
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # published outside the agent's loop (a tool, a test): nothing to wake
            return
        # A timer, not a poll: the moment the handshakes start failing is what an operator reading the log needs.
        # The loop's clock is not the wall clock (a step by NTP, a suspended host): the timer looks again at most
        # an hour later, and when it fires early it waits for the rest.
        delay = min(cert.not_after - now, _LOOK_AGAIN_SECONDS)
        self._expiries[(cert.setting, cert.file)] = loop.call_later(delay, self._expiry_due, cert)

    def _expiry_due(self, cert: LoadedCertificate) -> None:
        now = time.time()
        if cert.not_after <= now:
            _say(cert, _EXPIRED)
        else:
            self._watch_expiry(cert, now)


_EXPIRED = "has expired: its peers refuse it"
_LOOK_AGAIN_SECONDS = 3600.0


def _say_if_out_of_date(cert: LoadedCertificate, now: float) -> None:
    if cert.not_after <= now:
        _say(cert, _EXPIRED)
    elif cert.not_before > now:
        _say(cert, "is not valid yet: its peers refuse it (is the clock right?)")


def _say(cert: LoadedCertificate, problem: str) -> None:
    _log.error(
        f"TLS certificate {problem}",
        extra={
            "setting": cert.setting,
            "file": cert.file,
            "not_before": _utc(cert.not_before),
            "not_after": _utc(cert.not_after),
        },
    )


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
