"""The trace buffer: spans (and logs) grouped by trace id, oldest first, with their byte and span counts.

Spans stay inside the export requests they arrived in: a trace holds *fragments* ``(resource_spans,
scope_spans, positions)``, the positions of its spans in that scope's repeated field, so each span keeps its own
resource and scope, nothing is copied until the trace is released, and no Python object is kept per span (a
span's message wrapper costs about 200 bytes, and freeing hundreds of thousands of them a good share of a tick).
What the policies need of every span is read in the one pass that groups a scope's spans (``group_by_trace``):
today, whether the trace has a span with status ERROR. Log records are few and kept as message lists.

A trace stores its fragments in one flat list (see ``BufferedTrace``): the cyclic garbage collector walks every
container the buffer holds, again and again while traces wait, so their number matters as much as their size.

Byte counts are the protobuf size of what is held plus a fixed overhead per trace and fragment, i.e. an estimate
of the heap used, not an exact figure. Holding one span of a request keeps the whole request in memory (upb
frees a message tree at once), so a request held by several traces, or mostly not held, counts whole
(``RequestPin``) until the last of those traces leaves.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

# The bounds are memory; the accounting is protobuf bytes (the receiver measures them for free). Parsed, upb
# messages take about 3.5 times their protobuf size: 300 SDK-sized orchestrator requests held 32 MiB by that size
# and grew the process by 110 MiB. Long strings (prompts) cost little more than their size, so for them this
# overestimates, on the safe side.
MEMORY_PER_PROTOBUF_BYTE = 3.5
TRACE_OVERHEAD_BYTES = 300  # the BufferedTrace object, its list and the two index entries
FRAGMENT_OVERHEAD_BYTES = 120  # a fragment's entries in that list, and the scope wrappers it keeps alive

_ERROR = Status.STATUS_CODE_ERROR
# Called unbound: ``span.HasField`` would build a bound method per span (upb messages defeat the method cache).
_has_field = Span.HasField

SpanFragment = tuple[Any, Any, list[int]]
"""``(ResourceSpans, ScopeSpans, [position of a span in ScopeSpans.spans])``."""
LogFragment = tuple[Any, Any, list[Any]]
"""``(ResourceLogs, ScopeLogs, [LogRecord])``."""


class RequestPin:
    """The bytes of a request that stay in memory while any buffered trace holds part of it, beyond what the
    holders still count themselves: the part no trace holds, then also the part of each holder that left.

    A holder's part is taken as the average (``share``), not its own: one float per request rather than one per
    trace and request, and the totals come out exact once the last holder has left.
    """

    __slots__ = ("bytes", "holders", "share")

    def __init__(self, size: int, holders: int, share: int) -> None:
        self.bytes = size
        self.holders = holders
        self.share = share


def group_by_trace(
    spans: Any,
) -> tuple[dict[bytes, list[int]], list[bytes], list[bytes], dict[bytes, str]]:
    """One pass over a scope's spans: their positions by trace id; the trace ids of root and failed spans; and
    the ``tracestate`` of each trace's first span here, when it has one (an explicit randomness, ``rv``, rides
    there).

    Spans of one trace need not be adjacent (an SDK batch interleaves concurrent traces).
    """
    groups: dict[bytes, list[int]] = {}
    roots: list[bytes] = []
    failed: list[bytes] = []
    states: dict[bytes, str] = {}
    for index, span in enumerate(spans):
        trace_id = span.trace_id
        group = groups.get(trace_id)
        if group is None:
            groups[trace_id] = [index]
            state = span.trace_state
            if state:
                states[trace_id] = state
        else:
            group.append(index)
        if not span.parent_span_id:
            roots.append(trace_id)
        # Most spans have no status at all: asking first avoids building a Status message for each.
        if _has_field(span, "status") and span.status.code == _ERROR:
            failed.append(trace_id)
    return groups, roots, failed, states


_NO_LOGS: tuple[LogFragment, ...] = ()  # until a trace's first log record (then ``add_logs`` makes it a list)
_NO_PINS: tuple[RequestPin, ...] = ()


class BufferedTrace:
    """Everything held for one undecided trace.

    Span fragments are laid out flat in ``_spans``: ``[rs, ss, n, p1, ..., pn, rs, ss, n, ...]``, one list per
    trace where a list of ``(rs, ss, [positions])`` tuples would be two more containers per fragment. Read them
    with ``fragments()``.
    """

    __slots__ = (
        "_spans", "bytes", "bytes_bound", "explicit_randomness", "failed", "first_seen", "log_bytes", "log_count",
        "logs", "pins", "root_seen", "size_checked", "span_count", "trace_id",
    )  # fmt: skip

    def __init__(self, trace_id: bytes, first_seen: float) -> None:
        self.trace_id = trace_id
        self.first_seen = first_seen
        self.root_seen: float | None = None
        self._spans: list[Any] = []
        self.logs: Sequence[LogFragment] = _NO_LOGS  # most traces never get a log record: no list until one comes
        self.span_count = 0
        self.log_count = 0
        self.bytes = TRACE_OVERHEAD_BYTES
        self.log_bytes = 0  # the part of ``bytes`` that is log records (released in their own requests)
        self.failed = False
        """A span with status ERROR arrived (read by the ``errors`` policy without another pass)."""
        self.pins: tuple[RequestPin, ...] = _NO_PINS  # requests this trace keeps alive beyond its own spans
        self.bytes_bound = 0
        """An upper bound of the protobuf bytes held: the size of every request (or scope) a fragment came from, and
        the records' bytes. ``bytes`` charges a span its request's average, which makes a prompt-heavy span sharing
        a batch with many small spans of other traces look small; the bound never underestimates."""
        self.size_checked = 0  # ``bytes_bound`` when the held spans were last measured (see ``measured_bytes``)
        self.explicit_randomness: int | None = None
        """``rv`` from the ``tracestate`` of the trace's first span: its randomness in place of the trace id's."""

    def add_spans(self, rs: Any, ss: Any, indices: list[int], size: int, container_size: int = 0) -> int:
        """Hold ``ss.spans[i]`` for each index; returns the bytes added (``size`` plus the fragment overhead).

        ``container_size``: the size of the request (or scope) the spans came in, at least theirs (``bytes_bound``).
        The buffer's totals are the caller's to update (``TraceBuffer.count_added``), once per batch.
        """
        self.bytes_bound += max(size, container_size)
        size += FRAGMENT_OVERHEAD_BYTES
        spans = self._spans
        spans += (rs, ss, len(indices))
        spans += indices
        self.span_count += len(indices)
        self.bytes += size
        return size

    def fragments(self) -> Iterator[SpanFragment]:
        """``(resource_spans, scope_spans, positions)`` in the order they were added."""
        spans = self._spans
        start, end = 0, len(spans)
        while start < end:
            count = spans[start + 2]
            yield spans[start], spans[start + 1], spans[start + 3 : start + 3 + count]
            start += 3 + count

    def measured_bytes(self) -> int:
        """The protobuf size of the spans held, and the records' share of their requests (as ``bytes_bound``
        counts them: measured exactly, records would come out below it, and ``_is_heavy`` would wait for the bound
        to double). ``bytes`` gives each span its request's average, which is right for the buffer's total but can
        make a small trace look large beside a prompt-heavy one."""
        self.size_checked = self.bytes_bound
        spans = sum(span.ByteSize() for _, span in self.iter_spans())
        return spans + self.log_bytes

    def iter_spans(self) -> Iterator[tuple[Any, Any]]:
        """``(resource_spans, span)`` for every span held."""
        for rs, ss, positions in self.fragments():
            spans = ss.spans
            for position in positions:
                yield rs, spans[position]


class TraceBuffer:
    """Undecided traces in arrival order of their first span, plus a queue of root-span deadlines.

    Traces are decided when ``decision_wait`` has passed since their first span (the arrival order is also the
    deadline order, so the oldest are always at the front) or ``after_root`` since their root span (a second
    FIFO queue, in root arrival order, so again deadlines only grow along it).
    """

    def __init__(self, decision_wait: float, after_root: float) -> None:
        self._decision_wait = decision_wait
        self._after_root = after_root
        # A plain dict keeps insertion order, i.e. first-span order, and is cheaper than an OrderedDict.
        self.traces: dict[bytes, BufferedTrace] = {}
        # Traces only log records have come for so far, in the same order: the first to decide early when a bound
        # is reached (see ``oldest``).
        self.log_only: dict[bytes, BufferedTrace] = {}
        # Deadlines and trace ids in two parallel queues (no tuple per entry); ids, not trace objects, so entries
        # of traces decided by other means stay small.
        self._root_deadlines: collections.deque[float] = collections.deque()
        self._root_ids: collections.deque[bytes] = collections.deque()
        self.bytes = 0
        self.spans = 0

    def __len__(self) -> int:
        return len(self.traces)

    def get(self, trace_id: bytes) -> BufferedTrace | None:
        return self.traces.get(trace_id)

    def create(self, trace_id: bytes, now: float) -> BufferedTrace:
        trace = BufferedTrace(trace_id, now)
        self.traces[trace_id] = trace
        self.bytes += trace.bytes
        return trace

    def create_for_logs(self, trace_id: bytes, now: float) -> BufferedTrace:
        """A trace whose log records came before any of its spans (``restart`` once its first span comes)."""
        trace = self.create(trace_id, now)
        self.log_only[trace_id] = trace
        return trace

    def restart(self, trace: BufferedTrace, now: float) -> None:
        """Start ``trace``'s wait again from ``now`` (its first span, after log records), keeping the buffer in
        first-seen order: re-inserted, it goes to the end, after every trace seen before ``now``."""
        self.log_only.pop(trace.trace_id, None)
        del self.traces[trace.trace_id]
        trace.first_seen = now
        self.traces[trace.trace_id] = trace

    def count_added(self, spans: int, size: int) -> None:
        """Account for ``spans`` and ``size`` bytes added to buffered traces with ``BufferedTrace.add_spans``."""
        self.spans += spans
        self.bytes += size

    def add_logs(self, trace: BufferedTrace, rl: Any, sl: Any, records: list[Any], size: int) -> None:
        size += FRAGMENT_OVERHEAD_BYTES
        logs = trace.logs if isinstance(trace.logs, list) else []
        logs.append((rl, sl, records))
        trace.logs = logs
        trace.log_count += len(records)
        trace.bytes += size
        trace.log_bytes += size
        trace.bytes_bound += size
        self.bytes += size

    def pin(self, holders: Sequence[BufferedTrace], size: int, held: int) -> None:
        """Keep one request counted until the last of ``holders`` (once per fragment) leaves: ``size`` bytes more
        now (the part no trace holds: spans passed on or dropped, records of other traces), and the part of each
        holder that leaves while others still keep the request in memory (``held`` bytes among them all)."""
        if not holders:
            return
        pin = RequestPin(size, len(holders), held // len(holders))
        for trace in holders:
            trace.pins = (*trace.pins, pin)
        self.bytes += size

    def root_arrived(self, trace: BufferedTrace, now: float) -> None:
        if trace.root_seen is not None:
            return
        trace.root_seen = now
        if self._after_root > 0:
            self._root_deadlines.append(now + self._after_root)
            self._root_ids.append(trace.trace_id)

    def remove_all(self, traces: list[BufferedTrace]) -> None:
        buffered, log_only = self.traces, self.log_only
        for trace in traces:
            del buffered[trace.trace_id]
        if log_only:
            for trace in traces:
                log_only.pop(trace.trace_id, None)
        self.bytes -= sum(trace.bytes for trace in traces) + self._unpin(traces)
        self.spans -= sum(trace.span_count for trace in traces)

    @staticmethod
    def _unpin(traces: list[BufferedTrace]) -> int:
        """Bytes freed beyond the traces' own once ``traces`` have left: requests no longer held by any trace,
        less the traces' own bytes of requests other traces still hold (which stay in memory)."""
        freed = 0
        for trace in traces:
            for pin in trace.pins:
                pin.holders -= 1
                if pin.holders:
                    pin.bytes += pin.share
                    freed -= pin.share
                else:
                    freed += pin.bytes
        return freed

    def oldest(self, count: int) -> list[BufferedTrace]:
        """Up to ``count`` traces to decide before their time (not removed): those only log records have come for,
        oldest first, then the oldest of the others.

        Deciding a trace of log records alone early costs its records only their trace's class (they pass by
        severity, as without a sampler); deciding a trace with spans early can drop it before its error root comes.
        A flood of records of traces this agent never sees spans of (head-sampled out, or sent elsewhere) must not
        push out the traces it does.
        """
        out: list[BufferedTrace] = []
        for trace in self.log_only.values():
            if len(out) >= count:
                return out
            out.append(trace)
        taken = len(out)
        for trace in self.traces.values():
            if len(out) >= count:
                break
            if taken and not trace.span_count:
                continue  # a log-only trace, already taken above
            out.append(trace)
        return out

    def due(self, now: float, max_spans: float = math.inf) -> tuple[list[BufferedTrace], bool]:
        """Traces whose decision time has come (not removed), oldest first, each once; and whether there may be more.

        With ``max_spans``, only a first slice: traces are taken while the slice holds fewer spans (so at least
        one trace), and the rest stays due for the next call. A root-queue entry of a trace already decided
        counts as one span, so that a backlog of them (traces decided early by a bound) is worked off in slices.
        """
        due: list[BufferedTrace] = []
        work = 0
        cutoff = now - self._decision_wait
        for trace in self.traces.values():
            if trace.first_seen > cutoff:
                break
            if work >= max_spans:
                return due, True
            due.append(trace)
            work += trace.span_count
        deadlines, ids = self._root_deadlines, self._root_ids
        if deadlines and deadlines[0] <= now:
            seen = {id(t) for t in due}
            while deadlines and deadlines[0] <= now:
                if work >= max_spans:
                    return due, True
                deadline, trace_id = deadlines.popleft(), ids.popleft()
                # A trace decided earlier (by age or a bound) may still sit in this queue, or its id may since
                # belong to a new trace (late spans after the caches forgot it): only the entry's own trace is due.
                rooted = self.traces.get(trace_id)
                if rooted is not None and self._is_entry_of(rooted, deadline) and id(rooted) not in seen:
                    due.append(rooted)
                    seen.add(id(rooted))
                    work += rooted.span_count
                else:
                    work += 1
        return due, False

    def all(self) -> list[BufferedTrace]:
        return list(self.traces.values())

    def _is_entry_of(self, trace: BufferedTrace, deadline: float) -> bool:
        return trace.root_seen is not None and trace.root_seen + self._after_root == deadline

    def clear_root_queue_of_stale(self) -> None:
        """Drop the entries of traces already decided, so the queue stays near the buffer's size.

        Traces are decided oldest first as a rule (by age, or early by a bound), so such entries gather at the
        front of the queue, where popping them costs O(1) each; only if that ever left the queue far longer than
        the buffer would the whole queue be rebuilt (that holds the event loop for milliseconds at saturation).
        """
        deadlines, ids, live = self._root_deadlines, self._root_ids, self.traces
        while ids:
            trace = live.get(ids[0])
            if trace is not None and self._is_entry_of(trace, deadlines[0]):
                break
            deadlines.popleft()
            ids.popleft()
        if len(ids) > 4 * len(live) + 4096:
            entries = [
                (deadline, trace_id)
                for deadline, trace_id in zip(deadlines, ids, strict=True)
                if (trace := live.get(trace_id)) is not None and self._is_entry_of(trace, deadline)
            ]
            self._root_deadlines = collections.deque(deadline for deadline, _ in entries)
            self._root_ids = collections.deque(trace_id for _, trace_id in entries)
