"""Split an export request by the backend that owns each item's trace id, keeping resources and scopes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

Owner = Callable[[bytes], str]


def split_traces(request: ExportTraceServiceRequest, owner: Owner) -> dict[str, ExportTraceServiceRequest]:
    owner_of = _memo(owner, {})
    targets = {owner_of(s.trace_id) for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
    if len(targets) <= 1:
        return {target: request for target in targets}  # the common case: no copying at all
    return _split(request, owner_of, ("resource_spans", "scope_spans", "spans"))


def split_logs(request: ExportLogsServiceRequest, owner: Owner) -> dict[str, ExportLogsServiceRequest]:
    # Records without a trace id (empty, or all zeros as some SDKs and log bridges send) share one random backend
    # per batch, which spreads them without a hot spot.
    anywhere = owner(os.urandom(16))
    owner_of = _memo(owner, {b"": anywhere, bytes(16): anywhere})
    return _split(request, owner_of, ("resource_logs", "scope_logs", "log_records"))


def _memo(owner: Owner, known: dict[bytes, str]) -> Owner:
    """One ring lookup per trace, not per item."""

    def owner_of(trace_id: bytes) -> str:
        found = known.get(trace_id)
        if found is None:
            found = known[trace_id] = owner(trace_id)
        return found

    return owner_of


def _split(request: Any, owner_of: Owner, fields: tuple[str, str, str]) -> dict[str, Any]:
    resources_field, scopes_field, items_field = fields
    out: dict[str, Message] = {}
    for resource_entry in getattr(request, resources_field):
        per_target: dict[str, Any] = {}
        for scope_entry in getattr(resource_entry, scopes_field):
            scoped: dict[str, Any] = {}
            for item in getattr(scope_entry, items_field):
                target = owner_of(item.trace_id)
                group = scoped.get(target)
                if group is None:
                    holder = per_target.get(target)
                    if holder is None:
                        target_request = out.setdefault(target, type(request)())
                        holder = per_target[target] = getattr(target_request, resources_field).add(
                            resource=resource_entry.resource, schema_url=resource_entry.schema_url
                        )
                    group = scoped[target] = getattr(holder, scopes_field).add(
                        scope=scope_entry.scope, schema_url=scope_entry.schema_url
                    )
                getattr(group, items_field).append(item)
    return out
