"""Client TLS settings shared by the network exporters (``otlp`` over gRPC and HTTP, ``loki``, ``loadbalancing``).

The files are read and checked when the exporter is built, before anything stops or binds, as the servers' are
(``agent/server_tls.py``): a config whose files are missing or unusable is refused at start and at a reload, while
the running pipelines go on. Every connection then uses what was read, so files rotated later (half-written,
perhaps) change nothing until a reload reads them again, and a reload cannot pass its checks and then fail to start
on them, which would fail the fallback to the previous config (same files) too.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.config.schema import setting
from agent.server_tls import EncryptedKeyError, load_key_pair, read_consistently
from agent.telemetry.certificates import LoadedCertificate, loaded_certificate


@dataclass(frozen=True)
class TlsClientConfig:
    insecure: bool = setting(
        False,
        doc="Plain text instead of TLS for a gRPC endpoint without a scheme (`jaeger:4317`). URLs decide by their "
        "scheme: `http://` is plain text, `https://` is TLS; so for an endpoint that is always a URL (Loki's) "
        "this has no effect.",
    )
    ca_file: str = setting("", doc="PEM file of the CA(s) that sign the server's certificate; empty uses the system's.")
    cert_file: str = setting("", doc="PEM client certificate, for mutual TLS (needs `key_file`).")
    key_file: str = setting("", doc="PEM private key of `cert_file`.")
    insecure_skip_verify: bool = setting(False, doc="Do not verify the server's certificate (testing only).")
    server_name_override: str = setting("", doc="Name expected in the server's certificate, if not the host.")

    def validate(self) -> Iterator[tuple[str, str]]:
        if bool(self.cert_file) != bool(self.key_file):
            yield "cert_file" if not self.cert_file else "key_file", "cert_file and key_file go together"

    def given_for_tls(self) -> list[str]:
        """The settings given here that only a TLS connection uses (for a message when the connection is plain)."""
        names = ("ca_file", "cert_file", "key_file", "server_name_override", "insecure_skip_verify")
        return [f"tls.{name}" for name in names if getattr(self, name)]

    def _files(self) -> list[str]:
        return [name for name in (self.ca_file, self.cert_file, self.key_file) if name]

    def load(self, setting: str) -> ClientTls:
        """The files read and checked; ValueError naming them when one is missing, unreadable or unusable.
        ``setting`` is the config path of these settings, naming the client certificate in the agent's metrics."""
        missing = [name for name in self._files() if not Path(name).is_file()]
        if missing:
            raise ValueError(f"TLS file(s) not found: {', '.join(missing)}")
        (ca, cert, key), context = read_consistently(self._read, self._ssl_context, self._files())
        certificate = loaded_certificate(setting, self.cert_file, cert) if cert is not None else None
        return ClientTls(context, ca, key, cert, certificate)

    def _read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        return _read_file(self.ca_file), _read_file(self.cert_file), _read_file(self.key_file)

    def _ssl_context(self) -> ssl.SSLContext:
        # grpcio would take an unreadable CA, or a key that does not match its certificate, and fail every
        # handshake ("Failed to create security handshaker") until each batch is given up: Python's ssl checks them.
        try:
            context = ssl.create_default_context(cafile=self.ca_file or None)
            if self.cert_file:
                load_key_pair(context, self.cert_file, self.key_file)
        except EncryptedKeyError:
            raise
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(f"TLS file(s) not usable ({', '.join(self._files())}): {exc}") from None
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass(frozen=True)
class ClientTls:
    """A client's TLS material, read and checked once: aiohttp's context, and the same files' bytes for gRPC."""

    ssl_context: ssl.SSLContext
    root_certificates: bytes | None
    private_key: bytes | None
    certificate_chain: bytes | None
    certificate: LoadedCertificate | None  # what the client presents, for its expiry


def _read_file(name: str) -> bytes | None:
    if not name:
        return None
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise ValueError(f"TLS file not readable: {exc.filename}: {exc.strerror}") from None


def load_client_tls(tls: TlsClientConfig, path: str) -> ClientTls:
    """``tls`` read and checked when its exporter is built; RuntimeError naming the setting's config path."""
    try:
        return tls.load(path)
    except ValueError as exc:
        raise RuntimeError(f"{path}: {exc}") from None


def plain_http_problem(ignored: list[str]) -> str:
    """The message for TLS settings beside an ``http://`` endpoint, which are never used."""
    return f"is plain http://, so {', '.join(ignored)} would be ignored: use https:// for TLS, or remove them"


def insecure_problem(ignored: list[str]) -> str:
    """The message for TLS settings beside ``insecure: true``, which makes the connection plain text. A gateway
    asking for mutual TLS then only closes the connection ("Socket closed"), which says nothing of the cause."""
    return (
        f"is true, so the connection is plain text and {', '.join(ignored)} would be ignored: set insecure: false "
        "for TLS (over a default or Helm value that sets it true) or remove them"
    )
