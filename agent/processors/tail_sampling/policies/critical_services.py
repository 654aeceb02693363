"""``critical_services``: keep every trace touching a service whose ``service.name`` is listed."""

from __future__ import annotations

from agent.processors.tail_sampling.buffer import BufferedTrace
from agent.processors.tail_sampling.config import CriticalServicesPolicyConfig
from agent.processors.tail_sampling.policies import EvaluationContext


class CriticalServicesPolicy:
    name = "critical_services"

    def __init__(self, config: CriticalServicesPolicyConfig) -> None:
        self.retention_class = config.retention_class
        self._services = frozenset(config.services)

    def threshold(self, trace: BufferedTrace, context: EvaluationContext) -> int | None:
        for rs, _, _ in trace.fragments():
            service = context.resource_attributes(rs).get("service.name")
            if service is not None and service.string_value in self._services:
                return 0
        return None
