"""The trace buffer: spans (and logs) grouped by trace id, oldest first, with their byte and span counts.

Spans stay the protobuf messages they arrived as: a trace holds *fragments* ``(resource_container,
scope_container, [items])`` that point into the export requests it came from, so each span keeps its own
resource and scope without any copy until the trace is released. Byte counts are the protobuf size of what
is held (apportioned per scope) plus a fixed overhead per trace and fragment, i.e. an estimate of the heap
used, not an exact figure.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

TRACE_OVERHEAD_BYTES = 300  # the BufferedTrace object, its lists and the two index entries
FRAGMENT_OVERHEAD_BYTES = 120  # one fragment tuple and its item list

Fragment = tuple[Any, Any, list[Any]]
"""``(ResourceSpans|ResourceLogs, ScopeSpans|ScopeLogs, [Span|LogRecord])``."""


class BufferedTrace:
    """Everything held for one undecided trace."""

    __slots__ = ("bytes", "first_seen", "log_count", "logs", "root_seen", "span_count", "spans", "trace_id")

    def __init__(self, trace_id: bytes, first_seen: float) -> None:
        self.trace_id = trace_id
        self.first_seen = first_seen
        self.root_seen: float | None = None
        self.spans: list[Fragment] = []
        self.logs: list[Fragment] = []
        self.span_count = 0
        self.log_count = 0
        self.bytes = TRACE_OVERHEAD_BYTES

    def clear(self) -> None:
        """Let go of the data once released, even if something still refers to this object."""
        self.spans = []
        self.logs = []

    def iter_spans(self) -> Iterator[tuple[Any, Any]]:
        """``(resource_spans, span)`` for every span held."""
        for rs, _, spans in self.spans:
            for span in spans:
                yield rs, span


class TraceBuffer:
    """Undecided traces in arrival order of their first span, plus a queue of root-span deadlines.

    Traces are decided when ``decision_wait`` has passed since their first span (the arrival order is also the
    deadline order, so the oldest are always at the front) or ``after_root`` since their root span (a second
    FIFO queue, in root arrival order, so again deadlines only grow along it).
    """

    def __init__(self, decision_wait: float, after_root: float) -> None:
        self._decision_wait = decision_wait
        self._after_root = after_root
        self.traces: collections.OrderedDict[bytes, BufferedTrace] = collections.OrderedDict()
        # (deadline, trace id): ids, not trace objects, so entries of traces decided by other means stay small.
        self._root_deadlines: collections.deque[tuple[float, bytes]] = collections.deque()
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

    def add_spans(self, trace: BufferedTrace, rs: Any, ss: Any, spans: list[Any], size: int) -> None:
        size += FRAGMENT_OVERHEAD_BYTES
        trace.spans.append((rs, ss, spans))
        trace.span_count += len(spans)
        trace.bytes += size
        self.bytes += size
        self.spans += len(spans)

    def add_logs(self, trace: BufferedTrace, rl: Any, sl: Any, records: list[Any], size: int) -> None:
        size += FRAGMENT_OVERHEAD_BYTES
        trace.logs.append((rl, sl, records))
        trace.log_count += len(records)
        trace.bytes += size
        self.bytes += size

    def root_arrived(self, trace: BufferedTrace, now: float) -> None:
        if trace.root_seen is not None:
            return
        trace.root_seen = now
        if self._after_root > 0:
            self._root_deadlines.append((now + self._after_root, trace.trace_id))

    def remove(self, trace: BufferedTrace) -> None:
        del self.traces[trace.trace_id]
        self.bytes -= trace.bytes
        self.spans -= trace.span_count

    def oldest(self, count: int) -> list[BufferedTrace]:
        """Up to ``count`` traces, oldest first (not removed)."""
        out: list[BufferedTrace] = []
        for trace in self.traces.values():
            if len(out) >= count:
                break
            out.append(trace)
        return out

    def due(self, now: float) -> list[BufferedTrace]:
        """Traces whose decision time has come (not removed), oldest first, each once."""
        due: list[BufferedTrace] = []
        cutoff = now - self._decision_wait
        for trace in self.traces.values():
            if trace.first_seen > cutoff:
                break
            due.append(trace)
        seen = {id(t) for t in due}
        roots = self._root_deadlines
        while roots and roots[0][0] <= now:
            deadline, trace_id = roots.popleft()
            # A trace decided earlier (by age or a bound) may still sit in this queue, or its id may since
            # belong to a new trace (late spans after the caches forgot it): only the entry's own trace is due.
            trace = self.traces.get(trace_id)
            if trace is not None and self._is_entry_of(trace, deadline) and id(trace) not in seen:
                due.append(trace)
                seen.add(id(trace))
        return due

    def all(self) -> list[BufferedTrace]:
        return list(self.traces.values())

    def _is_entry_of(self, trace: BufferedTrace, deadline: float) -> bool:
        return trace.root_seen is not None and trace.root_seen + self._after_root == deadline

    def clear_root_queue_of_stale(self) -> None:
        """Drop entries of traces already decided, so the queue stays within twice the buffer (amortized O(1))."""
        if len(self._root_deadlines) > 2 * len(self.traces) + 256:
            live = self.traces
            self._root_deadlines = collections.deque(
                (deadline, trace_id)
                for deadline, trace_id in self._root_deadlines
                if (trace := live.get(trace_id)) is not None and self._is_entry_of(trace, deadline)
            )
