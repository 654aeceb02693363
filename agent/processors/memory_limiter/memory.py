"""What the process's memory is and may be: resident size, the container's limit, returning freed heap to the OS.

Linux only (``/proc``, cgroups, glibc), like the pods the agent runs in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(statm: Path = Path("/proc/self/statm")) -> int:
    """The process's resident set size (what the kernel counts against a container's memory limit)."""
    return int(statm.read_text().split()[1]) * _PAGE_SIZE


def machine_bytes() -> int:
    return _PAGE_SIZE * os.sysconf("SC_PHYS_PAGES")


def container_limit_bytes(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The memory limit of the process's cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``), or None when
    it has none. Inside a container the cgroup's own directory is usually the mount root, so both are tried."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits: list[int] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # the cgroup v2 hierarchy
            candidates = [
                root / relative / "memory.max",
                root / "memory.max",
                root / "unified" / relative / "memory.max",
            ]
        elif "memory" in controllers.split(","):
            candidates = [
                root / "memory" / relative / "memory.limit_in_bytes",
                root / "memory" / "memory.limit_in_bytes",
            ]
        else:
            continue
        limits.extend(limit for limit in map(_read_limit, candidates) if limit is not None)
    # Without a limit, v1 reports a number near 2**63; anything beyond the machine is no limit at all.
    real = [limit for limit in limits if limit < machine_bytes()]
    return min(real) if real else None


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text == "max" or not text.isdigit() else int(text)


def _load_malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc only; musl has none


_MALLOC_TRIM = _load_malloc_trim()


def release_free_heap() -> None:
    """Hand memory the process has freed back to the OS. glibc keeps it otherwise: after a burst of large
    requests is processed and dropped, the resident size would stay at its peak and the limiter would go on
    refusing data the process has room for."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
