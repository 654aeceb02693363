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


def tls_files(config: AgentConfig) -> list[str]:
    """Every certificate, key and CA file named by the TLS settings of ``config``, components and service."""
    found: set[str] = set()
    for kind_section in (config.receivers, config.processors, config.exporters, config.connectors):
        for component in kind_section.values():
            found.update(_files_in(component.config))
    found.update(_files_in(config.service))
    return sorted(found)


def _files_in(node: Any) -> Iterator[str]:
    if isinstance(node, TlsServerConfig):
        yield from (name for name in (node.cert_file, node.key_file, node.client_ca_file) if name)
    elif isinstance(node, TlsClientConfig):
        yield from (name for name in (node.ca_file, node.cert_file, node.key_file) if name)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
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


def changed(before: FileDigests) -> list[str]:
    """The files of ``before`` whose content differs now (or that appeared or went)."""
    return [name for name, digest in before.items() if _digest(name) != digest]
