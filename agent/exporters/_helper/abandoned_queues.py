"""Persistent-queue directories that no running exporter reads.

An exporter renamed or removed by a reload (or switched to a memory queue) leaves its directory behind with what it
had accepted and not yet delivered; nothing will send it. The agent looks for such directories under every storage
directory its configs have named since it started, at start, after each reload and every minute, and says what it
finds: a warning when a directory is first found, and the gauge ``persistent_queue_abandoned_bytes``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from agent.exporters._helper.persistent_queue import queue_directory

if TYPE_CHECKING:
    from agent.config.loader import AgentConfig


def _storage_roots(config: AgentConfig) -> dict[str, str]:
    """The storage directory of each exporter of ``config`` that queues on disk, by exporter id."""
    roots: dict[str, str] = {}
    for exporter_id, component in config.exporters.items():
        queue = getattr(component.config, "sending_queue", None)
        root = getattr(getattr(queue, "storage", None), "directory", "")
        if root:
            roots[exporter_id] = root
    return roots


def _normal(path: str | Path) -> str:
    """One spelling per directory (``q``, ``./q/`` and ``/cwd/q`` alike), without asking the filesystem."""
    return os.path.normpath(os.path.abspath(path))


def queue_roots(config: AgentConfig) -> set[str]:
    return {_normal(root) for root in _storage_roots(config).values()}


def directories_in_use(config: AgentConfig, exporters: Collection[str]) -> set[str]:
    """The queue directories of the exporters ``exporters`` (the ones built) of ``config``."""
    return {
        _normal(queue_directory(root, exporter_id))
        for exporter_id, root in _storage_roots(config).items()
        if exporter_id in exporters
    }


def abandoned_directories(roots: Collection[str], in_use: Collection[str]) -> dict[str, int]:
    """Directories under ``roots`` that hold queued data and that neither an exporter (``in_use``) nor another agent
    reads, with their bytes. Reads the filesystem: run it off the event loop."""
    locked = _flock_inodes()
    found: dict[str, int] = {}
    for root in roots:
        with contextlib.suppress(OSError):
            for directory in Path(root).iterdir():
                if _normal(directory) in in_use or not directory.is_dir():
                    continue
                size = _queued_bytes(directory)
                if size and not _is_locked(directory, locked):
                    found[_normal(directory)] = size
    return found


def _queued_bytes(directory: Path) -> int:
    total = 0
    for segment in directory.glob("*.seg"):
        with contextlib.suppress(OSError):
            total += segment.stat().st_size
    return total


def _flock_inodes() -> set[tuple[int, int, int]] | None:
    """(major, minor, inode) of every file a process holds a flock on, from ``/proc/locks``; None where it cannot
    be read. Read rather than probed: taking a directory's lock, even for a moment, would fail another agent
    opening its queue at that instant."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    held: set[tuple[int, int, int]] = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK":
            with contextlib.suppress(ValueError):
                major, minor, inode = fields[5].split(":")
                held.add((int(major, 16), int(minor, 16), int(inode)))
    return held


def _is_locked(directory: Path, locked: set[tuple[int, int, int]] | None) -> bool:
    """Whether an agent holds the directory's lock (another one sharing the storage directory)."""
    if locked is None:
        return False
    try:
        status = (directory / "lock").stat()
    except OSError:
        return False
    return (os.major(status.st_dev), os.minor(status.st_dev), status.st_ino) in locked
