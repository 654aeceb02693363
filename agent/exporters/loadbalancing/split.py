"""Split an export request by the backend that owns each item's trace id, keeping resources and scopes."""

from __future__ import annotations

import os
from collections.abc import Callable

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs, ScopeLogs
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans

Owner = Callable[[bytes], str]


def split_traces(request: ExportTraceServiceRequest, owner: Owner) -> dict[str, ExportTraceServiceRequest]:
    owners: dict[bytes, str] = {}  # one ring lookup per trace, not per span

    def owner_of(trace_id: bytes) -> str:
        found = owners.get(trace_id)
        if found is None:
            found = owners[trace_id] = owner(trace_id)
        return found

    targets = {owner_of(s.trace_id) for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
    if len(targets) <= 1:
        return {target: request for target in targets}  # the common case: no copying at all
    out: dict[str, ExportTraceServiceRequest] = {}
    for rs in request.resource_spans:
        per_target: dict[str, ResourceSpans] = {}
        for ss in rs.scope_spans:
            scoped: dict[str, ScopeSpans] = {}
            for span in ss.spans:
                target = owner_of(span.trace_id)
                group = scoped.get(target)
                if group is None:
                    holder = per_target.get(target)
                    if holder is None:
                        holder = per_target[target] = out.setdefault(
                            target, ExportTraceServiceRequest()
                        ).resource_spans.add(resource=rs.resource, schema_url=rs.schema_url)
                    group = scoped[target] = holder.scope_spans.add(scope=ss.scope, schema_url=ss.schema_url)
                group.spans.append(span)
    return out


def split_logs(request: ExportLogsServiceRequest, owner: Owner) -> dict[str, ExportLogsServiceRequest]:
    # Records without a trace id share one random backend per batch, which spreads them without a hot spot.
    untraced = owner(os.urandom(16))
    owners: dict[bytes, str] = {b"": untraced}

    def owner_of(trace_id: bytes) -> str:
        found = owners.get(trace_id)
        if found is None:
            found = owners[trace_id] = owner(trace_id)
        return found

    out: dict[str, ExportLogsServiceRequest] = {}
    for rl in request.resource_logs:
        per_target: dict[str, ResourceLogs] = {}
        for sl in rl.scope_logs:
            scoped: dict[str, ScopeLogs] = {}
            for record in sl.log_records:
                target = owner_of(record.trace_id)
                group = scoped.get(target)
                if group is None:
                    holder = per_target.get(target)
                    if holder is None:
                        holder = per_target[target] = out.setdefault(
                            target, ExportLogsServiceRequest()
                        ).resource_logs.add(resource=rl.resource, schema_url=rl.schema_url)
                    group = scoped[target] = holder.scope_logs.add(scope=sl.scope, schema_url=sl.schema_url)
                group.log_records.append(record)
    return out
