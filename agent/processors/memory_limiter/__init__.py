"""``memory_limiter`` processor: refuse data (retryable) while the agent's resident memory is above a limit.

Every stage bounds its own memory (ingest queue, sampler buffer, sending queues), but their sum can outgrow a
container's limit, and an OOM-killed sidecar loses everything it buffered. This stage is the last line: it
measures the process's resident memory every ``check_interval`` and, above the soft limit, refuses data so
that senders back off and retry, as the Collector's ``memory_limiter`` does.
"""

from __future__ import annotations

from agent.component import Factory, Kind, Signal
from agent.processors.memory_limiter.config import MemoryLimiterConfig
from agent.processors.memory_limiter.processor import MemoryLimiterProcessor, create

FACTORY: Factory[MemoryLimiterConfig] = Factory(
    kind=Kind.PROCESSOR,
    type="memory_limiter",
    config_class=MemoryLimiterConfig,
    signals=frozenset({Signal.TRACES, Signal.LOGS, Signal.METRICS}),
    create=create,
    description="Refuses data (retryable: gRPC UNAVAILABLE, HTTP 503) while the agent's resident memory is above "
    "its soft limit; limits in MiB or as a percentage of the container's memory limit. Put it first in "
    "every pipeline.",
    retains_data=False,  # passes each batch straight on, or refuses it
)

__all__ = ["FACTORY", "MemoryLimiterConfig", "MemoryLimiterProcessor"]
