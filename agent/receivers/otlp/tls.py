"""Server TLS for the ``otlp`` receiver's gRPC and HTTP servers, as the Collector's ``tls`` server settings.

Off unless ``cert_file`` is set. With ``client_ca_file`` clients must present a certificate those CAs signed
(mutual TLS): the way a gateway tier knows its senders are the cluster's sidecars. The files are read when the
receiver starts, so a ``SIGHUP`` (which restarts the pipelines) takes rotated certificates. TLS 1.2 is the oldest
version either server accepts (gRPC's core and Python's ``ssl`` defaults, which the agent keeps).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.config.schema import setting


@dataclass(frozen=True)
class TlsServerConfig:
    cert_file: str = setting(
        "", doc="PEM certificate (with its chain) the server presents; TLS is on when it is set, with `key_file`."
    )
    key_file: str = setting("", doc="PEM private key of `cert_file`.")
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

    def ssl_context(self) -> ssl.SSLContext:
        """The HTTP server's context; RuntimeError naming the files when they are missing or unusable."""
        self._check_files_exist()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file:
                context.load_verify_locations(cafile=self.client_ca_file)
                context.verify_mode = ssl.CERT_REQUIRED
        except (ssl.SSLError, ValueError) as exc:
            raise RuntimeError(f"TLS file(s) not usable ({self._files()}): {exc}") from None
        return context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """The gRPC server's credentials. Checked through ``ssl_context`` first: gRPC's core would take a key that
        does not match its certificate, or a file that holds no certificate, and fail each handshake instead."""
        self.ssl_context()
        client_ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        pair = (Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())
        return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=bool(client_ca))

    def _check_files_exist(self) -> None:
        missing = [name for name in (self.cert_file, self.key_file, self.client_ca_file) if name]
        missing = [name for name in missing if not Path(name).is_file()]
        if missing:
            raise RuntimeError(f"TLS file(s) not found: {', '.join(missing)}")

    def _files(self) -> str:
        return ", ".join(name for name in (self.cert_file, self.key_file, self.client_ca_file) if name)
