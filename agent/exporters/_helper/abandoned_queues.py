"""Persistent-queue directories that no running exporter reads.

An exporter renamed or removed by a reload (or switched to a memory queue) leaves its directory behind with what it
had accepted and not yet delivered; nothing will send it. The agent looks for such directories under the storage
directories its configs name, at start and after each reload, and says what it finds: a warning, and the gauge
``persistent_queue_abandoned_bytes``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Collection, Iterable
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


def abandoned_directories(
    configs: Iterable[AgentConfig], running: AgentConfig, exporters: Collection[str]
) -> dict[Path, int]:
    """Directories under the storage directories of ``configs`` that hold queued data and that neither an exporter of
    ``running`` (of the ids ``exporters``, the ones it built) nor another agent reads, with their bytes."""
    roots = {root for config in configs for root in storage_roots(config).values()}
    in_use = {queue_directory(root, eid) for eid, root in storage_roots(running).items() if eid in exporters}
    found: dict[Path, int] = {}
    for root in roots:
        with contextlib.suppress(OSError):
            for directory in Path(root).iterdir():
                if directory in in_use or not directory.is_dir():
                    continue
                size = _queued_bytes(directory)
                if size and not _locked_by_another_agent(directory):
                    found[directory] = size
    return found


def _queued_bytes(directory: Path) -> int:
    total = 0
    for segment in directory.glob("*.seg"):
        with contextlib.suppress(OSError):
            total += segment.stat().st_size
    return total


def _locked_by_another_agent(directory: Path) -> bool:
    """Whether an agent holds the directory's lock (another one sharing the storage directory)."""
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
