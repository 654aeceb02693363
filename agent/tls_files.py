"""The TLS files a config names, and whether they changed since the running pipelines read them.

Certificates are rotated in place (cert-manager renews a Secret, the kubelet swaps the mounted files), and the
agent reads them when it builds its components. ``service.tls_files_check_interval`` compares the files with what
they held when the running config was built, and a change reloads that config: rotated certificates are taken
without a ``SIGHUP``, as the Collector's ``reload_interval`` takes them.

What is compared is a digest of each file, taken before the components read them: a rotation between the digest
and the read makes one reload more, never one fewer.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agent.config.loader import AgentConfig
from agent.exporters._helper.tls import TlsClientConfig
from agent.server_tls import TlsServerConfig

FileDigests = Mapping[str, bytes | None]  # by path; None: missing or unreadable


def component_tls_files(config: AgentConfig) -> list[str]:
    """Every certificate, key and CA file named by the TLS settings of ``config``'s components."""
    found: set[str] = set()
    for kind_section in (config.receivers, config.processors, config.exporters, config.connectors):
        for component in kind_section.values():
            found.update(_files_in(component.config))
    return sorted(found)


def admin_tls_files(config: AgentConfig) -> list[str]:
    """The admin endpoint's TLS files: it outlives reloads, so what it holds is read apart from the pipelines'."""
    return sorted(set(_files_in(config.service.telemetry.admin.tls)))


def _files_in(node: Any) -> Iterator[str]:
    if isinstance(node, TlsServerConfig):
        yield from (name for name in (node.cert_file, node.key_file, node.client_ca_file) if name)
    elif isinstance(node, TlsClientConfig):
        yield from (name for name in (node.ca_file, node.cert_file, node.key_file) if name)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        if getattr(node, "enabled", True) is False:
            return  # a switched-off section (a protocol) presents no certificate: its files' changes mean nothing
        for field in dataclasses.fields(node):
            yield from _files_in(getattr(node, field.name))
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _files_in(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from _files_in(value)


def digests(files: list[str]) -> dict[str, bytes | None]:
    return {name: _digest(name) for name in files}


def _digest(name: str) -> bytes | None:
    try:
        return hashlib.sha256(Path(name).read_bytes()).digest()
    except OSError:
        return None


class TlsFilesRead:
    """What the TLS files held when the running pipelines and the admin endpoint read them, and what a refused
    reload found, so that the same files are not tried again until they change.

    The admin endpoint outlives reloads and is not always given new files (a reload falling back to a config with
    other admin settings leaves it as it was), so its files' digests are kept apart from the pipelines'.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.pipelines: FileDigests = digests(component_tls_files(config))
        self.admin: FileDigests = digests(admin_tls_files(config))
        self.refused: FileDigests | None = None

    def changed_files(self) -> list[str]:
        """The files that differ from what was read, unless they are what a refused reload found."""
        now = digests(sorted({*self.pipelines, *self.admin}))
        if now == self.refused:
            return []
        # A file both read (the admin endpoint's certificate for a receiver too) differs if either read differs.
        return [
            name
            for name, digest in now.items()
            if digest != self.pipelines.get(name, digest) or digest != self.admin.get(name, digest)
        ]

    def refuse(self, attempt: TlsFilesRead) -> None:
        """``attempt``, read for a reload of the running config that was refused, is not to be tried again."""
        self.refused = {**attempt.pipelines, **attempt.admin}
