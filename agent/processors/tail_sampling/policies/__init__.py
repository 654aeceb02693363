"""Sampling policies and how their verdicts combine into one decision per trace.

Each policy answers one question about a whole trace: *at which OTEP 235 rejection threshold would you keep
it?* ``0`` means "always" (errors, critical services, latency), ``threshold_for(p)`` means "with probability
p" (probabilistic, attribute rules), ``None`` means "this policy does not apply". Combining is an OR of
consistent samplers: the trace's threshold is the minimum over the applying policies, and it is kept when its
randomness (an explicit ``rv`` in the trace's ``tracestate``, else its trace id's low 56 bits) reaches that
threshold. The threshold never depends on the randomness,
which keeps the decision consistent in the OTEP 235 sense; only the choice of the *reported* policy does.

Among the policies that keep the trace, the one whose retention class is kept longest wins (first configured
on a tie); its class and name are what the exported spans carry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.otlp.probability import MAX_THRESHOLD, randomness
from agent.processors.tail_sampling.buffer import BufferedTrace
from agent.processors.tail_sampling.config import PoliciesConfig


@dataclass(frozen=True, slots=True)
class Decision:
    keep: bool
    retention_class: str
    policy: str
    threshold: int
    """The OTEP 235 threshold the trace was kept at (written to ``tracestate`` as ``ot=th:…``)."""


DROP = Decision(False, "", "none", MAX_THRESHOLD)


class EvaluationContext:
    """Per-decision-batch memo of resource attributes, so traces sharing a resource convert it once."""

    def __init__(self) -> None:
        self._resources: dict[int, dict[str, Any]] = {}

    def resource_attributes(self, resource_container: Any) -> dict[str, Any]:
        """Attribute key → ``AnyValue`` of the resource of a ResourceSpans/ResourceLogs."""
        key = id(resource_container)
        attrs = self._resources.get(key)
        if attrs is None:
            attrs = {kv.key: kv.value for kv in resource_container.resource.attributes}
            self._resources[key] = attrs
        return attrs


class Policy(Protocol):
    name: str
    retention_class: str

    def threshold(self, trace: BufferedTrace, context: EvaluationContext) -> int | None:
        """The threshold at which this policy keeps the trace, or None when it does not apply."""
        ...


class PolicySet:
    """The configured policies, evaluated together once per trace."""

    def __init__(self, policies: Sequence[Policy], retention: Mapping[str, float]) -> None:
        self.policies = list(policies)
        # Ranked by how long their class is kept, longest first, configuration order on ties (a stable sort):
        # the first policy in this order that keeps the trace is the winner. A policy whose threshold is the same
        # for every trace (``fixed_threshold``) is not called.
        ranked = sorted(self.policies, key=lambda p: -retention.get(p.retention_class, 0.0))
        self._ranked = [(policy, getattr(policy, "fixed_threshold", None)) for policy in ranked]
        self._interned: dict[tuple[str, str, int], Decision] = {}

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.policies]

    def decide(self, trace: BufferedTrace, context: EvaluationContext) -> Decision:
        rand = trace.explicit_randomness if trace.explicit_randomness is not None else randomness(trace.trace_id)
        combined = MAX_THRESHOLD
        winner: Policy | None = None
        for policy, fixed in self._ranked:
            threshold = policy.threshold(trace, context) if fixed is None else fixed
            if threshold is None:
                continue
            if threshold < combined:
                combined = threshold
            if winner is None and rand >= threshold:
                winner = policy
                if not combined:  # no later policy can lower the threshold or outrank the winner
                    break
        if winner is None:
            return DROP
        return self._intern(winner, combined)

    def _intern(self, policy: Policy, threshold: int) -> Decision:
        # A few distinct decisions exist; sharing them keeps each kept-cache entry to a pointer.
        key = (policy.retention_class, policy.name, threshold)
        decision = self._interned.get(key)
        if decision is None:
            decision = self._interned[key] = Decision(True, policy.retention_class, policy.name, threshold)
        return decision


def build_policies(config: PoliciesConfig, retention: Mapping[str, float]) -> PolicySet:
    from agent.processors.tail_sampling.policies.attribute import AttributePolicy
    from agent.processors.tail_sampling.policies.critical_services import CriticalServicesPolicy
    from agent.processors.tail_sampling.policies.errors import ErrorsPolicy
    from agent.processors.tail_sampling.policies.latency import LatencyPolicy
    from agent.processors.tail_sampling.policies.probabilistic import ProbabilisticPolicy

    policies: list[Policy] = []
    if config.errors.enabled:
        policies.append(ErrorsPolicy(config.errors))
    if config.critical_services.services:
        policies.append(CriticalServicesPolicy(config.critical_services))
    if config.latency.threshold is not None:
        policies.append(LatencyPolicy(config.latency))
    policies.extend(AttributePolicy(rule) for rule in config.attributes)
    if config.probabilistic.enabled:
        policies.append(ProbabilisticPolicy(config.probabilistic))
    return PolicySet(policies, retention)
