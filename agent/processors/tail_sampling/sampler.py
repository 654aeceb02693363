"""The tail sampler of one component id, shared by its traces and logs pipeline instances.

Flow: ``consume_spans`` groups each scope's spans by trace id in one pass and appends the groups to the
buffered traces (or, for traces already decided, forwards or drops them at once from the decision caches).
A timer decides traces that are due every ``tick_interval``, in slices of about ``TICK_SLICE_SPANS`` spans with
the event loop free to serve requests in between; traces decided together are released together, one export
request per slice (split only between traces when larger than ``max_batch_bytes``). Bounds are
enforced after each batch by deciding the oldest traces early. Decided data the next stage refuses is kept,
counted in the byte bound, and retried on the next tick; while it fills the bound, ``consume`` refuses.

Threading: everything runs on the agent's event loop (receivers call ``consume`` there), so there is no lock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.component import Consumer, CreateSettings, PermanentError, Refused, Signal
from agent.otlp.probability import explicit_randomness
from agent.otlp.signals import SPECS, count_log_records, count_spans
from agent.processors.tail_sampling.buffer import MEMORY_PER_PROTOBUF_BYTE, BufferedTrace, TraceBuffer, group_by_trace
from agent.processors.tail_sampling.config import TailSamplingConfig
from agent.processors.tail_sampling.decision_cache import DroppedCache, KeptCache
from agent.processors.tail_sampling.logs import LogClass, LogClassifier
from agent.processors.tail_sampling.metrics import SamplingMetrics
from agent.processors.tail_sampling.output import OutputBuilder, StampMemo
from agent.processors.tail_sampling.policies import Decision, EvaluationContext, build_policies
from agent.telemetry.logs import RateLimitedLog

Clock = Callable[[], float]

TICK_SLICE_SPANS = 1024
"""Spans decided per slice of a timer tick (about a millisecond of event-loop time, with the stages after)."""
_NO_TRACE_ID = bytes(16)
_ONE_TRACE_BOUNDS = frozenset({"max_spans_per_trace", "max_bytes_per_trace"})  # an early decision of one trace
_SAMPLED_FLAG = 0x01  # W3C trace flags: the trace is sampled (LogRecord.flags carries them in its low byte)


@dataclass
class _Pending:
    request: Any
    items: int
    size: int


@dataclass
class Release:
    """What one decision batch (a tick, or one ``consume``) sends downstream, chunked between traces."""

    max_bytes: int
    memo: StampMemo
    builders: dict[Signal, list[OutputBuilder]] = field(default_factory=dict)

    def builder(self, signal: Signal, size: int) -> OutputBuilder:
        """The builder to add ``size`` more bytes of one trace to; a new one when the current would overflow."""
        chunks = self.builders.setdefault(signal, [])
        if not chunks or (chunks[-1].items and chunks[-1].bytes + size > self.max_bytes):
            chunks.append(OutputBuilder(signal, self.memo))
        current = chunks[-1]
        current.bytes += size
        return current


class TailSampler:
    def __init__(self, config: TailSamplingConfig, settings: CreateSettings, clock: Clock = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._log = RateLimitedLog(settings.logger)
        retention = settings.service.retention
        self.policies = build_policies(config.policies, retention.classes)
        self.buffer = TraceBuffer(float(config.decision_wait), float(config.decision_wait_after_root))
        self._stamps = StampMemo()
        self.kept = KeptCache[Decision](config.decision_cache.kept_size)
        self.dropped = DroppedCache(config.decision_cache.dropped_size)
        self.logs = LogClassifier(retention.classes, retention.default_class, config.log_error_class)
        self.metrics = SamplingMetrics(settings)
        errors = config.policies.errors
        self._late_failure: Decision | None = (
            Decision(True, errors.retention_class, "errors", 0)
            if errors.enabled and errors.keep_late_failures
            else None
        )
        self._rescued = KeptCache[Decision](config.decision_cache.kept_size)  # traces kept by a late failure
        self._retention = {name: float(period) for name, period in retention.classes.items()}
        self._consumers: dict[Signal, Consumer] = {}
        self._pending: dict[Signal, collections.deque[_Pending]] = {s: collections.deque() for s in SPECS}
        self.pending_bytes = 0
        # The configured bounds are memory; buffer.bytes and pending_bytes are protobuf bytes.
        self._byte_limit = int(config.max_buffered_bytes / MEMORY_PER_PROTOBUF_BYTE)
        self._trace_byte_limit = int(
            min(config.max_bytes_per_trace, config.max_buffered_bytes // 4) / MEMORY_PER_PROTOBUF_BYTE
        )
        self._timer: asyncio.Task[None] | None = None
        self._closed = False
        self.took_over = False  # whether it goes on with its predecessor's decision caches (see take_over_from)

    # --- wiring and lifecycle ------------------------------------------------------------------------------------

    def attach(self, signal: Signal, consumer: Consumer) -> None:
        if signal in self._consumers:
            raise ValueError(f"tail_sampling already has a {signal} pipeline; use one component id per pipeline")
        self._consumers[signal] = consumer

    async def start(self) -> None:
        if self._timer is None and not self._closed:
            self._timer = asyncio.create_task(self._run_timer())

    def take_over_from(self, previous: TailSampler) -> None:
        """At a reload, before starting: go on with the decisions the stopped sampler remembers, so that late spans
        and logs of traces decided before the reload follow their trace's decision rather than being decided
        afresh. Its shutdown decided what it held: those kept are remembered, those dropped are not (see
        ``_decide``). Not when the cache sizes changed: the caches are sized when built, and start empty then."""
        if previous is self or previous._config.decision_cache != self._config.decision_cache:
            return
        self.kept, self.dropped, self._rescued = previous.kept, previous.dropped, previous._rescued
        self.took_over = True
        self._update_gauges()

    async def shutdown(self, deadline: float) -> None:
        """Decide every buffered trace now, release it, and retry refused data until ``deadline``."""
        if not self._closed:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._timer
            self.decide_all("shutdown")
        while self._has_pending() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(deadline - time.monotonic(), 0.0)))
            self._flush_pending()
        self._abandon_pending()

    async def _run_timer(self) -> None:
        interval = float(self._config.tick_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                # In slices, letting the event loop serve requests in between: deciding and releasing (which runs
                # the stages downstream) a whole tick's traces at once would hold it for tens of milliseconds.
                while self.tick(TICK_SLICE_SPANS):
                    await asyncio.sleep(0)
            except Exception as exc:  # a bug here must not stop all future decisions
                self.metrics.tick_failures.inc()
                self._log.exception("tick", f"tail_sampling tick failed: {exc!r}", error=type(exc).__name__)

    def tick(self, max_spans: float = math.inf) -> bool:
        """Retry refused data, decide the traces that are due, release them together.

        With ``max_spans``, only the first traces due, up to about that many spans (at least one trace); returns
        whether that cut the work short, i.e. more traces may be due now.
        """
        self._flush_pending()
        release = Release(self._config.max_batch_bytes, self._stamps)
        due, more = self.buffer.due(self._clock(), max_spans)
        self._decide(due, None, release)
        self._emit(release)
        self.buffer.clear_root_queue_of_stale()
        self._update_gauges()
        return more

    def decide_all(self, reason: str) -> None:
        release = Release(self._config.max_batch_bytes, self._stamps)
        self._decide(self.buffer.all(), reason, release)
        self._emit(release)
        self._update_gauges()

    # --- ingest ----------------------------------------------------------------------------------------------------

    def consume_spans(self, request: Any, size: int | None = None) -> None:
        """Buffer the spans of undecided traces; pass late spans of kept ones; drop those of dropped ones.

        ``size``: the request's size as received, else each scope is measured (``ByteSize``, about 0.1 µs per
        span).
        """
        self._refuse_if_full(request, size)
        now = self._clock()
        buffer, kept, dropped = self.buffer, self.kept, self.dropped
        traces = buffer.traces
        max_spans = self._config.max_spans_per_trace
        release = Release(self._config.max_batch_bytes, self._stamps)
        oversized: dict[bytes, BufferedTrace] = {}
        heavy: dict[bytes, BufferedTrace] = {}
        holders: list[BufferedTrace] = []  # traces that took spans of this request (once per fragment)
        late_kept = late_dropped = held_spans = held_bytes = held_span_bytes = 0
        # Late spans of dropped traces, settled once the whole request is read: a failed span of the trace in a
        # later resource or scope of it keeps them too (policies.errors.keep_late_failures).
        late_of_dropped: list[tuple[bytes, Any, Any, list[int], float]] = []
        # Likewise late spans of traces kept with a class a late failure would raise.
        late_of_kept: list[tuple[bytes, Any, Any, list[int], float, Decision]] = []
        failed_here: set[bytes] = set()
        rescue = self._late_failure is not None
        # This request's own size, never an average over earlier ones, under which large spans (prompts) would
        # pass for small ones.
        request_bytes = size or 0
        bytes_per_span = size / total if size and (total := count_spans(request)) else 0.0
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                spans = ss.spans
                count = len(spans)
                if not count:
                    continue
                groups, roots, failed, states = group_by_trace(spans)
                if size is None:
                    scope_bytes = ss.ByteSize()
                    request_bytes += scope_bytes
                    bytes_per_span = scope_bytes / count
                    container_bytes = scope_bytes
                else:
                    container_bytes = size
                for trace_id, indices in groups.items():
                    trace = traces.get(trace_id)
                    if trace is None:
                        # Only an id not buffered can be a late span of a decided trace: ask the caches then.
                        decision = kept.get(trace_id)
                        if decision is None and rescue:  # kept by a late failure, and forgotten by the kept cache
                            decision = self._rescued.get(trace_id)
                        if decision is not None:
                            if rescue and self._outlived_by_late_failure(decision):
                                late_of_kept.append((trace_id, rs, ss, indices, bytes_per_span, decision))
                            else:
                                builder = release.builder(Signal.TRACES, int(bytes_per_span * len(indices)))
                                builder.add_spans(
                                    rs, ss, indices, decision.retention_class, decision.policy, decision.threshold
                                )
                            late_kept += len(indices)
                            continue
                        if trace_id in dropped:
                            if rescue:
                                late_of_dropped.append((trace_id, rs, ss, indices, bytes_per_span))
                            else:
                                late_dropped += len(indices)
                            continue
                        trace = buffer.create(trace_id, now)
                    elif not trace.span_count:
                        # Its log records came first: the wait for the decision starts with the first span.
                        buffer.restart(trace, now)
                    if trace.explicit_randomness is None and states and trace_id in states:
                        # Not only from the first span: one reported by a participant upstream of the SDK that
                        # set ``rv`` has none, and the decision must not depend on which span came first.
                        trace.explicit_randomness = explicit_randomness(states[trace_id])
                    fragment_bytes = int(bytes_per_span * len(indices))
                    held_spans += len(indices)
                    held_span_bytes += fragment_bytes
                    held_bytes += trace.add_spans(rs, ss, indices, fragment_bytes, container_bytes)
                    holders.append(trace)
                    if trace.span_count >= max_spans:
                        oversized[trace_id] = trace
                    elif self._is_heavy(trace):
                        heavy[trace_id] = trace
                for trace_id in failed:
                    trace = traces.get(trace_id)
                    if trace is not None:
                        trace.failed = True
                if rescue and failed:
                    failed_here.update(failed)
                for trace_id in roots:
                    trace = traces.get(trace_id)
                    if trace is not None and trace.root_seen is None:
                        buffer.root_arrived(trace, now)
        for trace_id, rs, ss, indices, per_span, decision in late_of_kept:
            if trace_id in failed_here:
                decision = self._raise_to_late_failure(trace_id)
            builder = release.builder(Signal.TRACES, int(per_span * len(indices)))
            builder.add_spans(rs, ss, indices, decision.retention_class, decision.policy, decision.threshold)
        for trace_id, rs, ss, indices, per_span in late_of_dropped:
            if trace_id in failed_here or self._rescued.get(trace_id) is not None:
                self._keep_late_failure(trace_id, rs, ss, indices, per_span, release)
                late_kept += len(indices)
            else:
                late_dropped += len(indices)
        buffer.count_added(held_spans, held_bytes)
        self._pin(holders, request_bytes, held_span_bytes)
        if late_kept:
            self.metrics.late_kept.inc(late_kept)
        if late_dropped:
            self.metrics.late_dropped.inc(late_dropped)
        self._decide(list(oversized.values()), "max_spans_per_trace", release)
        self._decide([trace for trace_id, trace in heavy.items() if trace_id not in oversized], "max_bytes_per_trace",
                     release)  # fmt: skip
        self._after_ingest(release)

    def consume_logs(self, request: Any, size: int | None = None) -> None:
        """Hold records of undecided traces with them; classify and pass all others at once.

        A record of a trace not seen yet starts that trace's wait: SDKs export logs sooner than spans (every 1 s
        against 5 s by default), so the records of an error trace would otherwise be classed by their severity
        before its error span arrived.
        """
        self._refuse_if_full(request, size)
        buffer, kept, dropped, logs = self.buffer, self.kept, self.dropped, self.logs
        waits_for_spans = Signal.TRACES in self._consumers
        now = self._clock()
        release = Release(self._config.max_batch_bytes, self._stamps)
        holders: list[BufferedTrace] = []  # traces that took records of this request (once per fragment)
        request_bytes = size or 0
        bytes_per_record = size / total if size and (total := count_log_records(request)) else 0.0
        held_bytes = 0
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                records = sl.log_records
                count = len(records)
                if not count:
                    continue
                held: dict[bytes, list[Any]] = {}
                passing: dict[tuple[str, str], list[Any]] = {}
                for record in records:
                    trace_id = record.trace_id
                    if trace_id and trace_id != _NO_TRACE_ID:  # all zeros is no trace id (OTLP)
                        if trace_id in buffer.traces:
                            held.setdefault(trace_id, []).append(record)
                            continue
                        decision = kept.get(trace_id) or self._rescued.get(trace_id)
                        if decision is not None:
                            passing.setdefault(logs.for_kept_trace(record, decision), []).append(record)
                            continue
                        # Not when the record says its trace was not sampled (W3C flags, the low byte): the SDK
                        # exports none of its spans, and the record would wait decision_wait for nothing.
                        if waits_for_spans and record.flags & _SAMPLED_FLAG and trace_id not in dropped:
                            buffer.create_for_logs(trace_id, now)
                            held.setdefault(trace_id, []).append(record)
                            continue
                    passing.setdefault(logs.by_severity(record), []).append(record)
                if size is None:
                    scope_bytes = sl.ByteSize()
                    request_bytes += scope_bytes
                    bytes_per_record = scope_bytes / count
                for (retention_class, policy), group in passing.items():
                    builder = release.builder(Signal.LOGS, int(bytes_per_record * len(group)))
                    builder.add(rl, sl, group, retention_class, policy)
                for trace_id, group in held.items():
                    trace = buffer.traces[trace_id]
                    group_bytes = int(bytes_per_record * len(group))
                    held_bytes += group_bytes
                    buffer.add_logs(trace, rl, sl, group, group_bytes)
                    holders.append(trace)
        self._pin(holders, request_bytes, held_bytes)
        # Records count toward a trace's bytes too (GenAI prompts and completions are often log records).
        unique = {trace.trace_id: trace for trace in holders}  # once per trace, not per fragment
        self._decide([trace for trace in unique.values() if self._is_heavy(trace)], "max_bytes_per_trace", release)
        self._after_ingest(release)

    def _is_heavy(self, trace: BufferedTrace) -> bool:
        """Whether ``trace`` holds ``max_bytes_per_trace`` (spans and log records) and is to be decided now."""
        limit = self._trace_byte_limit
        return (
            # The bound, not the average-based estimate: a prompt-heavy span in a batch of small spans of other
            # traces is charged the batch's average size.
            trace.bytes_bound >= limit
            and trace.bytes_bound >= 2 * trace.size_checked
            # Measured before deciding (then again once its bound has doubled): the bound may be another trace's
            # prompts.
            and trace.measured_bytes() >= limit
        )

    def _pin(self, holders: list[BufferedTrace], request_bytes: int, held_bytes: int) -> None:
        """Count a request whole until the last trace holding part of it leaves (see ``RequestPin``): the part no
        trace holds, and each holder's part once it has left. One trace holding (nearly) all of a request needs
        no pin; under a sixteenth (rounding, a few passed-on spans) is not worth an object per trace."""
        unheld = max(request_bytes - held_bytes, 0)
        if len(holders) > 1 or (holders and unheld > request_bytes >> 4):
            self.buffer.pin(holders, unheld, held_bytes)

    def _keep_late_failure(
        self, trace_id: bytes, rs: Any, ss: Any, indices: list[int], bytes_per_span: float, release: Release
    ) -> None:
        """A dropped trace failed after its decision: keep what comes of it from now on, as the errors policy
        would have (the spans dropped before are gone). Called for each of its fragments in the request."""
        decision = self._remember_late_failure(trace_id, self.metrics.late_failures_kept)
        builder = release.builder(Signal.TRACES, int(bytes_per_span * len(indices)))
        builder.add_spans(rs, ss, indices, decision.retention_class, decision.policy, decision.threshold)

    def _outlived_by_late_failure(self, decision: Decision) -> bool:
        late = self._late_failure
        assert late is not None
        return self._retention.get(decision.retention_class, 0.0) < self._retention.get(late.retention_class, 0.0)

    def _raise_to_late_failure(self, trace_id: bytes) -> Decision:
        """A trace kept with a shorter class (the 10%) failed after its decision: from now on it is kept as a
        dropped trace that failed late would be, with the errors policy's class, so that its failure reaches the
        archive too rather than keeping less than a trace the failure rescued."""
        return self._remember_late_failure(trace_id, self.metrics.late_failures_raised)

    def _remember_late_failure(self, trace_id: bytes, counter: Any) -> Decision:
        """The errors policy's decision for a trace that failed late, remembered (and counted) at its first
        fragment: in the kept cache, asked before the dropped filter, so that its later spans and logs follow it;
        and apart, since the kept cache may forget it long before the dropped filter does."""
        decision = self._late_failure
        assert decision is not None
        if self._rescued.get(trace_id) is None:
            self.kept.put(trace_id, decision)
            self._rescued.put(trace_id, decision)
            counter.inc()
        return decision

    def _after_ingest(self, release: Release) -> None:
        if self._closed:
            # Data arriving after shutdown (from a stage upstream that flushes late) is decided at once.
            self._decide(self.buffer.all(), "shutdown", release)
        else:
            self._enforce_bounds(release)
        self._emit(release)
        self.buffer.clear_root_queue_of_stale()
        self._update_gauges()

    def _refuse_if_full(self, request: Any, size: int | None) -> None:
        """Refuse ``request`` while data the next stage refused is held and taking it would pass the byte bound.

        Held refused data is a reason to refuse, never to decide waiting traces early (``_enforce_bounds``): made
        room for that way, every trace accepted while the next stage is down would be decided on its first spans,
        and its error root, arriving later, dropped as a late span of a dropped trace.
        """
        if not self.pending_bytes:
            return
        self._flush_pending()
        if not self.pending_bytes:
            return
        incoming = size if size is not None else request.ByteSize()
        if self.pending_bytes + self.buffer.bytes + incoming > self._byte_limit:
            raise Refused("tail_sampling buffer is full: the next stage is not keeping up")

    def _enforce_bounds(self, release: Release) -> None:
        """Decide the oldest traces early until the trace count and byte bounds hold again (the buffer's own
        bytes: while refused data is held, ``_refuse_if_full`` keeps the total within the bound)."""
        buffer = self.buffer
        excess = len(buffer) - self._config.max_traces
        if excess > 0:
            self._decide(buffer.oldest(excess), "max_traces", release)
        limit = self._byte_limit
        while len(buffer) and buffer.bytes > limit:
            over = buffer.bytes - limit
            average = buffer.bytes / len(buffer)
            self._decide(buffer.oldest(max(1, int(over / average) + 1)), "max_buffered_bytes", release)

    # --- decisions -------------------------------------------------------------------------------------------------

    def _decide(self, traces: list[BufferedTrace], reason: str | None, release: Release) -> None:
        if not traces:
            return
        self.buffer.remove_all(traces)
        decide, context = self.policies.decide, EvaluationContext()
        counts: dict[tuple[str, bool], int] = {}
        dropped_ids: list[bytes] = []
        dropped_spans = 0
        for trace in traces:
            if not trace.span_count:
                # Only log records came: they pass with their severity's class, and nothing is remembered, so
                # spans arriving later (a workflow that logs long before it exports) start a trace of their own.
                self._release_logs_of_dropped(trace, release)
                continue
            decision = decide(trace, context)
            if reason in _ONE_TRACE_BOUNDS:
                self._log_outsized(trace, reason, decision.keep, decision.policy)
            key = (decision.policy, decision.keep)  # a Decision's own hash is a Python-level dataclass one
            counts[key] = counts.get(key, 0) + 1
            if decision.keep:
                self.kept.put(trace.trace_id, decision)
                self._release_kept(trace, decision, release)
            else:
                dropped_ids.append(trace.trace_id)
                dropped_spans += trace.span_count
                if trace.logs:
                    self._release_logs_of_dropped(trace, release)
        if reason != "shutdown":
            # A drop forced by a shutdown is not remembered: at a reload the next sampler goes on with these
            # caches, and the rest of a trace still running (its slow root, a critical service's span) must be
            # judged on its own spans rather than follow a drop made on a part of them.
            self.dropped.add_all(dropped_ids)
        if dropped_spans:
            self.metrics.dropped_spans.inc(dropped_spans)
        now = self._clock()
        decided = [trace for trace in traces if trace.span_count]  # not the ones only log records came for
        self.metrics.decision_latency.observe_all([now - trace.first_seen for trace in decided])
        self.metrics.count_decisions(counts)
        if reason is not None and decided:
            self.metrics.forced[reason].inc(len(decided))

    def _release_kept(self, trace: BufferedTrace, decision: Decision, release: Release) -> None:
        builder = release.builder(Signal.TRACES, trace.bytes - trace.log_bytes)
        retention_class, policy, threshold = decision.retention_class, decision.policy, decision.threshold
        for rs, ss, indices in trace.fragments():
            builder.add_spans(rs, ss, indices, retention_class, policy, threshold)
        if trace.logs:
            self._release_logs(trace, release, lambda records: self.logs.group_for_kept_trace(records, decision))

    def _release_logs_of_dropped(self, trace: BufferedTrace, release: Release) -> None:
        self._release_logs(trace, release, self.logs.group_by_severity)

    def _release_logs(
        self,
        trace: BufferedTrace,
        release: Release,
        classify: Callable[[list[Any]], dict[LogClass, list[Any]]],
    ) -> None:
        """A trace's held log records, by class and policy, in requests of at most ``max_batch_bytes``."""
        bytes_per_record = trace.log_bytes / trace.log_count
        for rl, sl, records in trace.logs:
            for (retention_class, policy), group in classify(records).items():
                builder = release.builder(Signal.LOGS, int(bytes_per_record * len(group)))
                builder.add(rl, sl, group, retention_class, policy)

    # --- release ---------------------------------------------------------------------------------------------------

    def _emit(self, release: Release) -> None:
        self._flush_pending()
        for signal, builders in release.builders.items():
            for builder in builders:
                if builder.items:
                    self._send(signal, _Pending(builder.build(), builder.items, 0))

    def _send(self, signal: Signal, entry: _Pending) -> None:
        queue = self._pending[signal]
        if queue:  # keep the order: older refused data goes first
            self._hold(signal, entry)
            return
        if not self._deliver(signal, entry):
            self._hold(signal, entry)

    def _hold(self, signal: Signal, entry: _Pending) -> None:
        if not entry.size:
            entry.size = entry.request.ByteSize()
            if signal is Signal.TRACES:
                self.metrics.refused_spans.inc(entry.items)
            else:
                self.metrics.refused_log_records.inc(entry.items)
        self._pending[signal].append(entry)
        self.pending_bytes += entry.size

    def _deliver(self, signal: Signal, entry: _Pending) -> bool:
        """Hand one request to the next stage; False when it refused (retry later)."""
        try:
            self._consumers[signal].consume(entry.request)
        except Refused:
            return False
        except PermanentError as exc:
            self._lose(signal, "permanent_error", entry.items, str(exc))
        except Exception as exc:  # a failing next stage must not break sampling
            self._lose(signal, type(exc).__name__, entry.items, str(exc))
        return True

    def _flush_pending(self) -> None:
        for signal, queue in self._pending.items():
            while queue:
                entry = queue[0]
                if not self._deliver(signal, entry):
                    break
                queue.popleft()
                self.pending_bytes -= entry.size

    def held_items(self, signal: Signal) -> int:
        """Items of ``signal`` held here: buffered until their trace is decided, or decided and waiting for the next
        stage to take them."""
        pending = sum(entry.items for entry in self._pending[signal])
        if signal is Signal.TRACES:
            return self.buffer.spans + pending
        return sum(trace.log_count for trace in self.buffer.traces.values()) + pending

    def _has_pending(self) -> bool:
        return any(self._pending.values())

    def _abandon_pending(self) -> None:
        for signal, queue in self._pending.items():
            items = sum(entry.items for entry in queue)
            if items:
                self._lose(signal, "shutdown_timeout", items, "the next stage still refused at the shutdown deadline")
            queue.clear()
        self.pending_bytes = 0
        self._update_gauges()

    def _log_outsized(self, trace: BufferedTrace, reason: str, kept: bool, policy: str) -> None:
        """Name the trace a per-trace bound decided early: the counter says one did, its id says which to look at
        (a runaway loop in one workflow, a prompt far larger than the rest)."""
        key = f"outsized:{reason}"
        # Measured, not the buffer's estimate (a span charged its request's average looks small beside a prompt),
        # and only for a message that is written: measuring 10,000 spans of prompts takes milliseconds.
        size = f", {trace.measured_bytes()} bytes of protobuf" if self._log.would_warn(key) else ""
        self._log.warning(
            key,
            f"trace {trace.trace_id.hex()} was decided before its time: it reached {reason} "
            f"({trace.span_count} spans{size}); its later spans follow the decision",
            trace_id=trace.trace_id.hex(),
            reason=reason,
            decision="kept" if kept else "dropped",
            policy=policy,
        )

    def _lose(self, signal: Signal, reason: str, items: int, detail: str) -> None:
        self.metrics.lost(signal.value, reason, items)
        self._log.warning(
            f"lost:{signal}:{reason}",
            f"{items} {SPECS[signal].item_name} lost after sampling: {detail}",
            signal=signal.value,
            reason=reason,
        )

    def _update_gauges(self) -> None:
        m = self.metrics
        m.traces_buffered.set(len(self.buffer))
        m.spans_buffered.set(self.buffer.spans)
        m.bytes_buffered.set(int((self.buffer.bytes + self.pending_bytes) * MEMORY_PER_PROTOBUF_BYTE))
        m.kept_entries.set(len(self.kept))
        m.dropped_entries.set(len(self.dropped))
