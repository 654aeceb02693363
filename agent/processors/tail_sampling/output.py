"""Build the export requests released downstream, regrouped per (resource, class, policy).

A resource container arriving at the processor may hold spans of many traces that end up with different
decisions, so its resource cannot simply be stamped: each released request has one ResourceSpans (or
ResourceLogs) per distinct resource *and* decision, whose resource carries ``retention.class`` and
``sampling.policy``, and one ScopeSpans per distinct scope inside it. Resources and scopes from different
incoming requests that are equal are merged (compared by their serialized form, computed once per container).

Kept spans get the trace's OTEP 235 threshold in ``tracestate`` (``ot=th:…``), raised but never lowered
relative to a threshold an earlier sampler already recorded, and erased where that one is malformed or not
consistent with the span's randomness (``probability.stamp``).

Spans are added as positions in their incoming scope and copied when the request is built: the kept traces of
one incoming request (decided together as a rule) then cost one copy call per scope and decision rather than
one per trace and scope.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from agent.component import Signal
from agent.otlp.probability import Stamp, stamp

RETENTION_CLASS_KEY = "retention.class"
SAMPLING_POLICY_KEY = "sampling.policy"
_STAMPED_KEYS = (RETENTION_CLASS_KEY, SAMPLING_POLICY_KEY)


class _Layout:
    def __init__(self, request_type: type, resources: str, scopes: str, items: str) -> None:
        self.request_type = request_type
        self.resources = resources
        self.scopes = scopes
        self.items = items


_LAYOUTS = {
    Signal.TRACES: _Layout(ExportTraceServiceRequest, "resource_spans", "scope_spans", "spans"),
    Signal.LOGS: _Layout(ExportLogsServiceRequest, "resource_logs", "scope_logs", "log_records"),
}


def stamp_resource(resource: Any, retention_class: str, policy: str) -> None:
    """Set ``retention.class`` and ``sampling.policy`` on a Resource, replacing values set upstream."""
    attributes = resource.attributes
    if any(kv.key in _STAMPED_KEYS for kv in attributes):
        kept = [kv for kv in attributes if kv.key not in _STAMPED_KEYS]
        del attributes[:]
        attributes.extend(kept)
    attributes.append(KeyValue(key=RETENTION_CLASS_KEY, value=AnyValue(string_value=retention_class)))
    attributes.append(KeyValue(key=SAMPLING_POLICY_KEY, value=AnyValue(string_value=policy)))


class StampMemo:
    """What builders can reuse across releases: stamped resources (serialized) and stamped ``tracestate`` values.

    Each release is a few kept traces from a few services, and stamping a copied resource costs more than all
    its spans' bookkeeping. Keyed by content, so reuse is always correct; cleared when it grows past ``limit``
    entries (a workload with ever new resources), which bounds its memory.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self.resources: dict[tuple[bytes, str, str], bytes] = {}
        self.tracestates: dict[tuple[str, int], Stamp] = {}

    def stamped_resource(self, key: tuple[bytes, str, str], resource: Any) -> bytes:
        """``resource`` (whose content ``key[0]`` identifies) with ``key``'s class and policy, serialized."""
        found = self.resources.get(key)
        if found is None:
            if len(self.resources) >= self.limit:
                self.resources.clear()
            copy = type(resource)()
            copy.CopyFrom(resource)
            stamp_resource(copy, key[1], key[2])
            found = self.resources[key] = copy.SerializeToString()
        return found

    def tracestate(self, old: str, threshold: int) -> Stamp:
        found = self.tracestates.get((old, threshold))
        if found is None:
            if len(self.tracestates) >= self.limit:
                self.tracestates.clear()
            found = self.tracestates[(old, threshold)] = stamp(old, threshold)
        return found


class OutputBuilder:
    """Accumulates released items of one signal into one export request."""

    def __init__(self, signal: Signal, memo: StampMemo | None = None) -> None:
        self.signal = signal
        self._memo = memo or StampMemo()
        self._layout = _LAYOUTS[signal]
        self.request = self._layout.request_type()
        self.items = 0
        self.bytes = 0
        # Content keys of input containers by id(): computing one means serializing a resource. The containers
        # are held in ``_keys_of`` for as long as their ids are used, so that no id can be reused meanwhile.
        self._resource_keys: dict[int, bytes] = {}
        self._scope_keys: dict[int, bytes] = {}
        self._keys_of: list[Any] = []
        self._resources: dict[tuple[bytes, str, str], Any] = {}
        self._scopes: dict[tuple[int, bytes], Any] = {}
        # (id(scope_spans), class, policy, threshold) -> (resource_spans, scope_spans, [position]); the held
        # containers keep their ids valid until ``build``.
        self._positions: dict[tuple[int, str, str, int], tuple[Any, Any, list[int]]] = {}

    def add_spans(
        self, rs: Any, ss: Any, indices: list[int], retention_class: str, policy: str, threshold: int
    ) -> None:
        """Add ``ss.spans[i]`` for each index, stamped with the decision (copied by ``build``)."""
        key = (id(ss), retention_class, policy, threshold)
        held = self._positions.get(key)
        if held is None:
            self._positions[key] = (rs, ss, [*indices])
        else:
            held[2].extend(indices)
        self.items += len(indices)

    def build(self) -> Any:
        """The export request: everything added, copied under stamped resources and their scopes."""
        for (_, retention_class, policy, threshold), (rs, ss, indices) in self._positions.items():
            spans = ss.spans
            self._copy(rs, ss, [spans[i] for i in indices], retention_class, policy, threshold)
        self._positions.clear()
        return self.request

    def add(
        self, resource_container: Any, scope_container: Any, items: list[Any], retention_class: str, policy: str
    ) -> None:
        """Copy log records ``items`` under their resource and scope, stamped with the decision (spans are added
        by position, ``add_spans``, and copied at ``build``)."""
        self._copy(resource_container, scope_container, items, retention_class, policy, None)
        self.items += len(items)

    def _copy(
        self,
        resource_container: Any,
        scope_container: Any,
        items: list[Any],
        retention_class: str,
        policy: str,
        threshold: int | None,
    ) -> None:
        out_scope = self._scope_for(self._resource_for(resource_container, retention_class, policy), scope_container)
        out_items = getattr(out_scope, self._layout.items)
        start = len(out_items)
        out_items.extend(items)
        if threshold is not None:
            self._stamp_threshold(out_items, start, threshold)

    def _resource_for(self, container: Any, retention_class: str, policy: str) -> Any:
        key = self._resource_keys.get(id(container))
        if key is None:
            key = container.resource.SerializeToString(deterministic=True) + b"\x00" + container.schema_url.encode()
            self._resource_keys[id(container)] = key
            self._keys_of.append(container)
        group = (key, retention_class, policy)
        out = self._resources.get(group)
        if out is None:
            out = getattr(self.request, self._layout.resources).add()
            out.resource.MergeFromString(self._memo.stamped_resource(group, container.resource))
            out.schema_url = container.schema_url
            self._resources[group] = out
        return out

    def _scope_for(self, out_resource: Any, container: Any) -> Any:
        key = self._scope_keys.get(id(container))
        if key is None:
            key = container.scope.SerializeToString(deterministic=True) + b"\x00" + container.schema_url.encode()
            self._scope_keys[id(container)] = key
            self._keys_of.append(container)
        group = (id(out_resource), key)
        out = self._scopes.get(group)
        if out is None:
            out = getattr(out_resource, self._layout.scopes).add()
            out.scope.CopyFrom(container.scope)
            out.schema_url = container.schema_url
            self._scopes[group] = out
        return out

    def _stamp_threshold(self, spans: Any, start: int, threshold: int) -> None:
        known = self._memo.tracestates
        for index in range(start, len(spans)):
            span = spans[index]
            old = span.trace_state
            stamped = known.get((old, threshold)) or self._memo.tracestate(old, threshold)
            # A span without ``rv``: its trace id must reach the threshold, else it is erased (its trace was decided
            # on another span's ``rv``, or an upstream sampler was not consistent).
            span.trace_state = stamped.kept if stamped.must_reach is None else stamped.for_trace_id(span.trace_id)
