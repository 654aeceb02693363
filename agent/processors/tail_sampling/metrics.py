"""The processor's self-metrics (``otel_sidecar_sampling_*``), with label children resolved once."""

from __future__ import annotations

import collections
from typing import Any

from agent.component import CreateSettings

FORCED_REASONS = ("max_traces", "max_buffered_bytes", "max_spans_per_trace", "shutdown")
_DECISION_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 3.0, 5.0, 7.5, 10.0, 12.5, 15.0, 20.0, 30.0, 60.0)


class SamplingMetrics:
    def __init__(self, settings: CreateSettings) -> None:
        m = settings.metrics
        cid = settings.component_id
        self._cid = cid
        label = ["processor"]
        self.traces_buffered = m.gauge("sampling_traces_buffered", "Traces waiting for a decision.", label).labels(cid)
        self.bytes_buffered = m.gauge(
            "sampling_bytes_buffered",
            "Bytes held: buffered traces and their logs, plus decided data the next stage refused (to retry).",
            label,
        ).labels(cid)
        self.spans_buffered = m.gauge("sampling_spans_buffered", "Spans waiting for a decision.", label).labels(cid)
        self._decisions = m.counter(
            "sampling_decisions_total",
            "Traces decided, by winning policy (`none` when dropped) and decision (keep, drop).",
            [*label, "policy", "decision"],
        )
        forced = m.counter(
            "sampling_forced_decisions_total",
            "Traces decided before their time because a bound was reached, or at shutdown.",
            [*label, "reason"],
        )
        self.forced = {reason: forced.labels(cid, reason) for reason in FORCED_REASONS}
        late = m.counter(
            "sampling_late_spans_total",
            "Spans arriving after their trace was decided, forwarded (keep) or dropped (drop) at once by the "
            "cached decision.",
            [*label, "decision"],
        )
        self.late_kept = late.labels(cid, "keep")
        self.late_dropped = late.labels(cid, "drop")
        self.decision_latency = m.histogram(
            "sampling_decision_latency_seconds",
            "Time from a trace's first span to its decision.",
            label,
            buckets=_DECISION_LATENCY_BUCKETS,
        ).labels(cid)
        entries = m.gauge("sampling_cache_entries", "Trace ids in the decision caches.", [*label, "cache"])
        self.kept_entries = entries.labels(cid, "kept")
        self.dropped_entries = entries.labels(cid, "dropped")
        self.refused_spans = m.counter(
            "sampling_refused_spans_total",
            "Decided spans the next stage refused on release; they are held (counted in bytes) and retried.",
            label,
        ).labels(cid)
        self.refused_log_records = m.counter(
            "sampling_refused_log_records_total",
            "Log records the next stage refused on release; they are held and retried.",
            label,
        ).labels(cid)
        self._lost = m.counter(
            "sampling_lost_items_total",
            "Items lost after a decision: the next stage rejected them for good, or shutdown ran out of time.",
            [*label, "signal", "reason"],
        )
        self._decision_children: dict[tuple[str, str], Any] = {}

    def count_decisions(self, counts: collections.Counter[tuple[str, bool]]) -> None:
        for (policy, keep), count in counts.items():
            key = (policy, "keep" if keep else "drop")
            child = self._decision_children.get(key)
            if child is None:
                child = self._decision_children[key] = self._decisions.labels(self._cid, *key)
            child.inc(count)

    def lost(self, signal: str, reason: str, items: int) -> None:
        self._lost.labels(self._cid, signal, reason).inc(items)
