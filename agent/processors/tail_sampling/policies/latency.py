"""``latency``: keep traces lasting at least a threshold (latest span end minus earliest span start)."""

from __future__ import annotations

from agent.processors.tail_sampling.buffer import BufferedTrace
from agent.processors.tail_sampling.config import LatencyPolicyConfig
from agent.processors.tail_sampling.policies import EvaluationContext


class LatencyPolicy:
    name = "latency"

    def __init__(self, config: LatencyPolicyConfig) -> None:
        assert config.threshold is not None
        self.retention_class = config.retention_class
        self._threshold_ns = int(float(config.threshold) * 1e9)

    def threshold(self, trace: BufferedTrace, context: EvaluationContext) -> int | None:
        earliest = None
        latest = 0
        for _, span in trace.iter_spans():
            start = span.start_time_unix_nano
            if start and (earliest is None or start < earliest):
                earliest = start
            end = span.end_time_unix_nano
            if end > latest:
                latest = end
        if earliest is not None and latest - earliest >= self._threshold_ns:
            return 0
        return None
