"""Configuration of the ``memory_limiter`` processor (the Collector's options and semantics)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from agent.config.schema import Duration, setting

DEFAULT_SPIKE_FRACTION = 0.2  # the spike limit when none is set: a fifth of the hard limit, as in the Collector


@dataclass(frozen=True)
class MemoryLimiterConfig:
    check_interval: Duration = setting(
        Duration(1.0), doc="How often the agent's resident memory (RSS) is measured.", positive=True
    )
    limit_mib: int = setting(
        0,
        doc="Hard limit: resident memory in MiB the agent must stay under. Set this or `limit_percentage`.",
        minimum=0,
    )
    spike_limit_mib: int = setting(
        0,
        doc="Headroom below the hard limit for what arrives between two checks: data is refused (retryable) "
        "above `limit_mib - spike_limit_mib` (the soft limit). 0: a fifth of `limit_mib`.",
        minimum=0,
    )
    limit_percentage: int = setting(
        0,
        doc="Hard limit as a percentage of the container's memory limit (cgroup v2 `memory.max` or v1 "
        "`memory.limit_in_bytes`), or of the machine's memory when the container has none.",
        minimum=0,
        maximum=100,
    )
    spike_limit_percentage: int = setting(
        0,
        doc="Headroom below the hard limit, as a percentage of the same total: the soft limit is "
        "`limit_percentage - spike_limit_percentage`. 0: a fifth of the hard limit.",
        minimum=0,
        maximum=100,
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        if self.limit_mib and self.limit_percentage:
            yield "limit_mib", "set either limit_mib or limit_percentage, not both"
        elif not self.limit_mib and not self.limit_percentage:
            yield "limit_mib", "set limit_mib or limit_percentage (the hard limit)"
        if self.spike_limit_mib and not self.limit_mib:
            yield "spike_limit_mib", "applies to limit_mib; with limit_percentage use spike_limit_percentage"
        elif self.limit_mib and self.spike_limit_mib >= self.limit_mib:
            yield "spike_limit_mib", f"must be smaller than limit_mib ({self.limit_mib})"
        if self.spike_limit_percentage and not self.limit_percentage:
            yield "spike_limit_percentage", "applies to limit_percentage; with limit_mib use spike_limit_mib"
        elif self.limit_percentage and self.spike_limit_percentage >= self.limit_percentage:
            yield "spike_limit_percentage", f"must be smaller than limit_percentage ({self.limit_percentage})"
