"""The processor's self-metrics (``otel_sidecar_sampling_*``), with label children resolved once."""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from agent.component import CreateSettings
from agent.telemetry.selfmetrics import PREFIX

FORCED_REASONS = ("max_traces", "max_buffered_bytes", "max_spans_per_trace", "max_bytes_per_trace", "shutdown")
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
        self.dropped_spans = m.counter(
            "sampling_dropped_spans_total",
            "Spans of traces decided drop (late spans of dropped traces: sampling_late_spans_total{decision=drop}).",
            label,
        ).labels(cid)
        forced = m.counter(
            "sampling_forced_decisions_total",
            "Traces decided before their time because a bound was reached, or at shutdown.",
            [*label, "reason"],
        )
        self.forced = {reason: forced.labels(cid, reason) for reason in FORCED_REASONS}
        self.tick_failures = m.counter(
            "sampling_tick_failures_total",
            "Timer ticks that failed (a bug; logged with its traceback): decisions wait for the next tick.",
            label,
        ).labels(cid)
        late = m.counter(
            "sampling_late_spans_total",
            "Spans arriving after their trace was decided, forwarded (keep) or dropped (drop) at once by the "
            "cached decision.",
            [*label, "decision"],
        )
        self.late_kept = late.labels(cid, "keep")
        self.late_dropped = late.labels(cid, "drop")
        self.late_failures_kept = m.counter(
            "sampling_late_failures_kept_total",
            "Dropped traces kept from then on because a failed span (status ERROR) of theirs came after the "
            "decision (policies.errors.keep_late_failures); their spans dropped before are lost.",
            label,
        ).labels(cid)
        self.late_failures_raised = m.counter(
            "sampling_late_failures_raised_total",
            "Traces kept with a shorter retention class whose failed span came after the decision: their spans from "
            "then on get the errors policy's class (policies.errors.keep_late_failures).",
            label,
        ).labels(cid)
        self.decision_latency = m.component_collector(_LatencyFamily.NAME, _LatencyFamily).child(cid)
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

    def count_decisions(self, counts: dict[tuple[str, bool], int]) -> None:
        """Count ``{(policy, keep): traces}``."""
        for (policy, keep), count in counts.items():
            key = (policy, "keep" if keep else "drop")
            child = self._decision_children.get(key)
            if child is None:
                child = self._decision_children[key] = self._decisions.labels(self._cid, *key)
            child.inc(count)

    def lost(self, signal: str, reason: str, items: int) -> None:
        self._lost.labels(self._cid, signal, reason).inc(items)


class DecisionLatency:
    """One processor's ``sampling_decision_latency_seconds``: plain counts, rendered when scraped.

    A prometheus_client Histogram takes a lock and walks its buckets on every observation, about a microsecond;
    the sampler observes once per trace, so it counts here instead (scrapes run on the same event loop).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # the first bucket whose bound is >= seconds
        self.sum += seconds

    def observe_all(self, values: list[float]) -> None:
        bounds, counts = self.bounds, self.counts
        for seconds in values:
            counts[bisect_left(bounds, seconds)] += 1
        self.sum += sum(values)


class _LatencyFamily:
    """The family on one registry, with a child per processor id (asking twice returns the same child)."""

    NAME = f"{PREFIX}_sampling_decision_latency_seconds"
    DOC = "Time from a trace's first span to its decision."
    KIND_LABEL = "processor"

    def __init__(self) -> None:
        self._children: dict[str, DecisionLatency] = {}

    def child(self, component_id: str) -> DecisionLatency:
        found = self._children.get(component_id)
        if found is None:
            found = self._children[component_id] = DecisionLatency(_DECISION_LATENCY_BUCKETS)
        return found

    def forget_except(self, ids: Collection[str]) -> int:
        gone = [component_id for component_id in self._children if component_id not in ids]
        for component_id in gone:
            del self._children[component_id]
        return len(gone)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.NAME, self.DOC, labels=["processor"])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.NAME, self.DOC, labels=["processor"])
        for component_id, child in list(self._children.items()):
            cumulative = list(itertools.accumulate(child.counts))
            buckets = [(floatToGoString(bound), count) for bound, count in zip(child.bounds, cumulative, strict=False)]
            buckets.append(("+Inf", cumulative[-1]))
            family.add_metric([component_id], buckets, child.sum)
        yield family
