"""Client TLS settings shared by the network exporters (``otlp`` over gRPC and HTTP, ``loki``)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.config.schema import setting
from agent.telemetry.certificates import LoadedCertificate, loaded_certificate


@dataclass(frozen=True)
class TlsClientConfig:
    insecure: bool = setting(
        False,
        doc="Plain text instead of TLS for a gRPC endpoint without a scheme (`jaeger:4317`). URLs decide by their "
        "scheme: `http://` is plain text, `https://` is TLS.",
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

    def missing_files(self) -> list[str]:
        return [name for name in (self.ca_file, self.cert_file, self.key_file) if name and not Path(name).is_file()]

    def read(self, name: str) -> bytes | None:
        return Path(name).read_bytes() if name else None

    def client_certificates(self, setting: str) -> list[LoadedCertificate]:
        """The client certificate a TLS connection presents, for its expiry (``setting``: the config path of these
        settings); none without ``cert_file``. Read when the exporter starts, as its connections read it."""
        if not self.cert_file:
            return []
        try:
            loaded = loaded_certificate(setting, self.cert_file, Path(self.cert_file).read_bytes())
        except OSError:  # gone since the exporter checked it: its connections say so
            return []
        return [loaded] if loaded is not None else []

    def ssl_context(self) -> ssl.SSLContext:
        """A client context for HTTPS (aiohttp)."""
        context = ssl.create_default_context(cafile=self.ca_file or None)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


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
