"""Persistent-queue directories that no running exporter reads.

An exporter renamed or removed by a reload (or switched to a memory queue) leaves its directory behind with what it
had accepted and not yet delivered; nothing will send it. The agent looks for such directories under every storage
directory its configs have named since it started, at start, after each reload and every minute, and says what it
finds: a warning when a directory is first found, and the gauge ``persistent_queue_abandoned_bytes``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from agent.exporters._helper.persistent_queue import queue_directory

if TYPE_CHECKING:
    from agent.config.loader import AgentConfig


def storage_roots(config: AgentConfig) -> dict[str, str]:
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
    return {_normal(root) for root in storage_roots(config).values()}


def directories_in_use(config: AgentConfig, exporters: Collection[str]) -> set[str]:
    """The queue directories of the exporters ``exporters`` (the ones built) of ``config``."""
    return {
        _normal(queue_directory(root, exporter_id))
        for exporter_id, root in storage_roots(config).items()
        if exporter_id in exporters
    }


def abandoned_directories(roots: Collection[str], in_use: Collection[str]) -> dict[str, int]:
    """Directories under ``roots`` that hold queued data and that neither an exporter (``in_use``) nor another agent
    reads, with their bytes. Reads the filesystem: run it off the event loop."""
    found: dict[str, int] = {}
    for root in roots:
        with contextlib.suppress(OSError):
            for directory in Path(root).iterdir():
                if _normal(directory) in in_use or not directory.is_dir():
                    continue
                size = _queued_bytes(directory)
                if size and not _is_locked(directory):
                    found[_normal(directory)] = size
    return found


def _queued_bytes(directory: Path) -> int:
    total = 0
    for segment in directory.glob("*.seg"):
        with contextlib.suppress(OSError):
            total += segment.stat().st_size
    return total


def _is_locked(directory: Path) -> bool:
    """Whether an agent holds the directory's lock (another one sharing the storage directory). Probed by taking
    it for a moment, which sees a holder in another container too (``/proc/locks`` lists only the processes of
    this PID namespace); an agent opening its queue at that moment tries again (``PersistentStore``)."""
    try:
        fd = os.open(directory / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the lock, if it was taken here
    return False
