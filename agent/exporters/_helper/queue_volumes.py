"""Persistent queues whose byte bounds add up to more than the volume under them holds.

Each queue is bounded by its ``sending_queue.max_bytes``, and ``OtelSidecarExporterQueueNearlyFull`` warns as it
nears that bound. Queues on a volume smaller than their bounds together fill the volume first: the senders are
refused with no bound reached and no warning before it. Said at start, at each reload and by
``validate --check-files``, where the volume can be looked at.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from agent.component import Kind
from agent.exporters._helper.abandoned_queues import storage_roots

if TYPE_CHECKING:
    from agent.config.loader import AgentConfig


def oversubscribed_queue_volumes(config: AgentConfig) -> list[str]:
    """One message per volume whose persistent queues (of exporters a pipeline uses) may together hold more bytes
    than the volume's size. Reads the filesystem; a directory that cannot be looked at is left out (a start
    reports it)."""
    by_volume: dict[int, tuple[Path, list[tuple[str, int]]]] = {}
    for exporter_id, root in storage_roots(config).items():
        if not config.in_a_pipeline(Kind.EXPORTER, exporter_id):
            continue
        try:
            existing = _nearest_existing(Path(root))
            device = existing.stat().st_dev
        except OSError:
            continue
        max_bytes = config.exporters[exporter_id].config.sending_queue.max_bytes
        by_volume.setdefault(device, (existing, []))[1].append((exporter_id, max_bytes))
    problems = []
    for existing, queues in by_volume.values():
        try:
            stats = os.statvfs(existing)
        except OSError:
            continue
        size, bounds = stats.f_blocks * stats.f_frsize, sum(max_bytes for _, max_bytes in queues)
        if bounds > size:
            exporters = ", ".join(f"exporters.{exporter_id}" for exporter_id, _ in queues)
            problems.append(
                f"{exporters}: sending_queue.max_bytes add up to {_binary(bounds)}, more than the volume of "
                f"{existing} holds ({_binary(size)}): once it is full the queues refuse senders before their bound, "
                "with no OtelSidecarExporterQueueNearlyFull before it; give the volume more room or lower max_bytes"
            )
    return problems


def _nearest_existing(path: Path) -> Path:
    """``path``, or its nearest parent that exists (the directory a start would make it in)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _binary(size: int) -> str:
    """``1000 MiB``, ``1.5 GiB``, ``200 KiB``: at most one decimal, never an exponent."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{round(size / scale, 1):g} {unit}"
    return f"{size} B"
