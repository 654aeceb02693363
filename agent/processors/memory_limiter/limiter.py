"""The check behind the ``memory_limiter`` processor: measure resident memory on a timer, decide whether to refuse.

One limiter per component id, shared by its instances in every pipeline (memory is the process's, not a
pipeline's). Data is refused while the resident size is above the soft limit (hard limit minus spike limit), as
in the Collector; the spike limit is headroom for what arrives between two checks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from agent.component import CreateSettings
from agent.processors.memory_limiter import memory
from agent.processors.memory_limiter.config import DEFAULT_SPIKE_FRACTION, MemoryLimiterConfig

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    hard: int
    soft: int


def limits_for(config: MemoryLimiterConfig, total: Callable[[], int | None]) -> Limits:
    """The limits in bytes; ``total`` gives the memory a percentage is of (called only for percentages)."""
    if config.limit_mib:
        hard = config.limit_mib * _MIB
        spike = config.spike_limit_mib * _MIB or int(hard * DEFAULT_SPIKE_FRACTION)
        return Limits(hard, hard - spike)
    available = total()
    if available is None:
        raise RuntimeError("cannot tell how much memory the container or machine has; set limit_mib")
    hard = available * config.limit_percentage // 100
    spike = available * config.spike_limit_percentage // 100 or int(hard * DEFAULT_SPIKE_FRACTION)
    return Limits(hard, hard - spike)


def total_memory() -> int:
    """What ``limit_percentage`` is a percentage of: the container's limit, else the machine's memory."""
    return memory.container_limit_bytes() or memory.machine_bytes()


class MemoryLimiter:
    def __init__(
        self,
        config: MemoryLimiterConfig,
        settings: CreateSettings,
        *,
        resident: Callable[[], int] = memory.resident_bytes,
        total: Callable[[], int | None] = total_memory,
        release: Callable[[], None] = memory.release_free_heap,
    ) -> None:
        self._config = config
        self._settings = settings
        self._resident = resident
        self._total = total
        self._release = release
        self.limits: Limits | None = None
        self.refusing = False
        self._stopped_refusing = False
        self._task: asyncio.Task[None] | None = None
        cid = settings.component_id
        m = settings.metrics
        self._refusing_gauge = m.gauge(
            "memory_limiter_refusing",
            "1 while the agent refuses data because its memory is above the soft limit.",
            ["processor"],
        ).labels(cid)
        limit_gauge = m.gauge(
            "memory_limiter_limit_bytes",
            "The memory limiter's limits on resident memory (soft, hard).",
            ["processor", "limit"],
        )
        self._soft_gauge = limit_gauge.labels(cid, "soft")
        self._hard_gauge = limit_gauge.labels(cid, "hard")

    async def start(self) -> None:
        if self._task is not None:
            return  # started by its instance in another pipeline
        self.limits = limits_for(self._config, self._total)
        self._soft_gauge.set(self.limits.soft)
        self._hard_gauge.set(self.limits.hard)
        self._settings.logger.info(
            "memory limiter checking resident memory",
            extra={"soft_limit_mib": self.limits.soft // _MIB, "hard_limit_mib": self.limits.hard // _MIB},
        )
        self.check()  # refuse from the first request if the agent is already over
        self._task = asyncio.create_task(self._check_periodically())

    async def shutdown(self, deadline: float) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stop_refusing(self, why: str) -> None:
        """For good: at shutdown, what was accepted must reach the stages that can flush it (and free memory)."""
        if self._stopped_refusing:
            return
        self._stopped_refusing = True
        if self.refusing:
            self._settings.logger.info(why)
            self.refusing = False
            self._refusing_gauge.set(0)

    def check(self) -> None:
        """Measure, and refuse or accept data from now on."""
        assert self.limits is not None
        if self._stopped_refusing:
            return
        used = self._resident()
        if used > self.limits.soft:
            self._release()  # freed heap the allocator kept still counts as resident
            used = self._resident()
        self._set_refusing(used > self.limits.soft, used)

    def _set_refusing(self, refusing: bool, used: int) -> None:
        if refusing == self.refusing:
            return
        self.refusing = refusing
        self._refusing_gauge.set(1 if refusing else 0)
        assert self.limits is not None
        details = {"resident_mib": used // _MIB, "soft_limit_mib": self.limits.soft // _MIB}
        if refusing:
            self._settings.logger.warning("memory above the soft limit: refusing data (retryable)", extra=details)
        else:
            self._settings.logger.info("memory below the soft limit again: accepting data", extra=details)

    async def _check_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._config.check_interval)
            try:
                self.check()
            except Exception:  # one failed measurement must not stop the checks for good
                self._settings.logger.exception("memory limiter check failed")
