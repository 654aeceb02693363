"""``probabilistic``: keep a consistent share of traces, decided by the trace's randomness (OTEP 235).

The policy applies to every trace; whether it keeps one is ``randomness >= threshold``, the randomness being
the explicit ``rv`` of the trace's ``tracestate`` when it has one, else the trace id's: a pure function of the
trace, so independent agents and SDKs with consistent probability samplers at the same rate keep the same
traces.
"""

from __future__ import annotations

from agent.otlp.probability import threshold_for_percentage
from agent.processors.tail_sampling.buffer import BufferedTrace
from agent.processors.tail_sampling.config import ProbabilisticPolicyConfig
from agent.processors.tail_sampling.policies import EvaluationContext


class ProbabilisticPolicy:
    name = "probabilistic"

    def __init__(self, config: ProbabilisticPolicyConfig) -> None:
        self.retention_class = config.retention_class
        self.fixed_threshold = threshold_for_percentage(config.percentage)
        """The same for every trace, so the policy set need not call ``threshold``."""

    def threshold(self, trace: BufferedTrace, context: EvaluationContext) -> int | None:
        return self.fixed_threshold
