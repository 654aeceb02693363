"""Server TLS, as the Collector's ``tls`` server settings: the ``otlp`` receiver's gRPC and HTTP servers, the
``prometheus`` exporter's scrape endpoint and the admin endpoint.

Off unless ``cert_file`` is set. With ``client_ca_file`` clients must present a certificate those CAs signed
(mutual TLS): the way a gateway tier knows its senders are the cluster's sidecars, or a scrape endpoint its
Prometheus. TLS 1.2 is the oldest version either server accepts (gRPC's core and Python's ``ssl`` defaults, which
the agent keeps).

The files are read and checked when the component is built, before anything stops or binds: a config whose files
are missing or unusable is refused at start, and at a reload (``SIGHUP``, or a change of the TLS files, see
``agent/tls_files.py``) it is refused while the running pipelines go on with the certificates they loaded.
Certificates are rotated in place (a Secret's files are replaced), so a reload that found them half-written and
only failed later, at its start, would find the previous config's files broken too. A reload with good files takes
the rotated certificates: the components restart, and the admin endpoint, which outlives reloads, listens again.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from agent.config.schema import setting
from agent.telemetry.certificates import LoadedCertificate, loaded_certificate
from agent.telemetry.logs import RateLimitedLog
from agent.telemetry.selfmetrics import SelfMetrics

R = TypeVar("R")
C = TypeVar("C")


@dataclass(frozen=True)
class TlsServerConfig:
    cert_file: str = setting(
        "", doc="PEM certificate (with its chain) the server presents; TLS is on when it is set, with `key_file`."
    )
    key_file: str = setting("", doc="PEM private key of `cert_file`, not encrypted.")
    client_ca_file: str = setting(
        "", doc="PEM CA(s) that sign client certificates: when set, every client must present one (mutual TLS)."
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        if bool(self.cert_file) != bool(self.key_file):
            yield "cert_file" if not self.cert_file else "key_file", "cert_file and key_file go together"
        if self.client_ca_file and not self.cert_file:
            yield "client_ca_file", "needs cert_file and key_file: client certificates are asked for over TLS only"

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def load(self, setting: str) -> ServerTls:
        """The files read and checked; ValueError naming the file when one is missing, unreadable or unusable.
        ``setting`` is the config path of these settings, naming the certificate in the agent's own metrics."""
        (key, cert, client_ca), context = read_consistently(self._read, self._ssl_context, self._files())
        # gRPC's core would take a key that does not match its certificate, or a CA file without a certificate,
        # and fail each handshake instead: what it gets is what Python's ssl has just checked.
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
        return ServerTls(context, credentials, loaded_certificate(setting, self.cert_file, cert))

    def _files(self) -> list[str]:
        return [name for name in (self.cert_file, self.key_file, self.client_ca_file) if name]

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        for name in self._files():
            if not Path(name).is_file():
                raise ValueError(f"TLS file not found (or not a file): {name}")
        try:
            key, cert = Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes()
            client_ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        except OSError as exc:
            raise ValueError(f"TLS file not readable: {exc.filename}: {exc.strerror}") from None
        return key, cert, client_ca

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            load_key_pair(context, self.cert_file, self.key_file)
            if self.client_ca_file:
                context.load_verify_locations(cafile=self.client_ca_file)
                context.verify_mode = ssl.CERT_REQUIRED
        except EncryptedKeyError:
            raise
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(f"TLS file(s) not usable ({', '.join(self._files())}): {exc}") from None
        return context


@dataclass(frozen=True)
class ServerTls:
    """A server's TLS material, read and checked once: for aiohttp (``ssl_context``) and for gRPC."""

    ssl_context: ssl.SSLContext
    grpc_credentials: grpc.ServerCredentials
    certificate: LoadedCertificate | None  # what the server presents, for its expiry


class HandshakeFailures:
    """Counts and logs the TLS handshakes one aiohttp server fails (``tls_handshake_failures_total``): a client
    without an accepted certificate, one that refused the server's, plain HTTP sent to the TLS port, no protocol
    version in common. asyncio closes those connections before the application sees them, so nothing else would
    say so. gRPC's core does its own handshakes: its servers cannot count them (it writes a line to stderr)."""

    def __init__(self, metrics: SelfMetrics, logger: logging.Logger, server: str) -> None:
        self._server = server  # the config path of the server, e.g. receivers.otlp.http
        self._failures = metrics.counter(
            "tls_handshake_failures_total",
            "TLS handshakes an HTTPS server (OTLP/HTTP receiver, scrape or admin endpoint) failed, by OpenSSL's "
            "reason: peer_did_not_return_a_certificate, certificate_verify_failed, tlsv1_alert_unknown_ca (the "
            "client does not trust the agent's CA; other refusals give their own alert), http_request (plain HTTP "
            "sent to the TLS port)...",
            ["server", "reason"],
        )
        self._log = RateLimitedLog(logger)

    def ssl_context(self, tls: ServerTls | None) -> ssl.SSLContext | None:
        """``tls``'s context, its failed handshakes counted from now on (None without TLS)."""
        if tls is None:
            return None
        failed = self._failed

        class CountedSSLObject(ssl.SSLObject):
            # SSLContext.sslobject_class is the documented way to change what wrap_bio, which asyncio uses, returns.
            def do_handshake(self) -> None:
                try:
                    super().do_handshake()
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLSyscallError):
                    raise  # more bytes to come (asyncio retries a syscall error too): the handshake goes on
                except ssl.SSLError as exc:
                    failed((exc.reason or type(exc).__name__).lower())
                    raise

        tls.ssl_context.sslobject_class = CountedSSLObject
        return tls.ssl_context

    def _failed(self, reason: str) -> None:
        self._failures.labels(self._server, reason).inc()
        self._log.warning(f"tls:{reason}", f"TLS handshake failed: {reason}", server=self._server, reason=reason)


def read_consistently(read: Callable[[], R], check: Callable[[], C], files: list[str]) -> tuple[R, C]:
    """``read()`` the files' bytes, ``check()`` them (Python's ssl loads the same files by name), and read again until
    two reads around a check agree: what Python's ssl checked is what gRPC gets, not a pair half rotated. For the
    servers' files and the exporters' client files alike; ValueError after three tries."""
    for _attempt in range(3):
        before = read()
        checked = check()
        if read() == before:
            return before, checked
    raise ValueError(f"TLS files keep changing while being read: {', '.join(files)}")


class EncryptedKeyError(ValueError):
    """A TLS key protected by a passphrase, which the agent has no way to be given."""


class _PassphraseAsked(Exception):
    pass


def _refuse_passphrase() -> bytes:
    raise _PassphraseAsked


def load_key_pair(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """``context.load_cert_chain`` refusing an encrypted key (``EncryptedKeyError``, naming it): without a password
    callback OpenSSL would ask for the passphrase on the terminal and wait there for good, or fail with a bare
    "Invalid argument" without one. For the servers' keys and the exporters' client keys alike."""
    try:
        context.load_cert_chain(cert_file, key_file, password=_refuse_passphrase)
    except _PassphraseAsked:
        raise EncryptedKeyError(f"TLS key is encrypted (give it without a passphrase): {key_file}") from None
    except ssl.SSLError as exc:
        raise ValueError(_key_pair_problem(cert_file, key_file, exc)) from None


def _key_pair_problem(cert_file: str, key_file: str, exc: ssl.SSLError) -> str:
    """OpenSSL's words for a file that is not what its setting wants are "[SSL] PEM lib": say which file."""
    try:
        cert, key = Path(cert_file).read_bytes(), Path(key_file or cert_file).read_bytes()
    except OSError:
        return str(exc)
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        return f"cert_file {cert_file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    if b"PRIVATE KEY-----" not in key:
        return f"key_file {key_file or cert_file} holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)"
    if "KEY_VALUES_MISMATCH" in str(exc):
        return f"the key in {key_file or cert_file} is not the key of the certificate in {cert_file}"
    return str(exc)


def load_server_tls(tls: TlsServerConfig, path: str) -> ServerTls | None:
    """``tls`` read and checked when its component is built, or None when it is off; RuntimeError naming the
    setting's config path and the file."""
    if not tls.enabled:
        return None
    try:
        return tls.load(path)
    except ValueError as exc:
        raise RuntimeError(f"{path}: {exc}") from None
