"""Batching by size and time for exporters: merge queued export requests, split ones that are too big.

Merging and splitting work on the OTLP request messages themselves: ``MergeFrom`` concatenates the
``resource_*`` lists, and splitting copies items into new requests under copies of their resource and scope.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.message import Message

from agent.component import Signal
from agent.config.schema import Duration, setting
from agent.otlp.descriptors import is_repeated


@dataclass(frozen=True)
class BatchConfig:
    enabled: bool = setting(True, doc="Merge queued requests into larger exports.")
    min_size: int = setting(
        2048,
        doc="Items (spans, log records, data points) an export gathers, waiting at most `flush_timeout`. Each of "
        "the `sending_queue.num_consumers` workers gathers its own, so exports can be smaller.",
        minimum=1,
    )
    max_size: int = setting(
        0,
        doc="Most items in one export; larger requests are split (a metric's points stay together). 0: no limit.",
        minimum=0,
    )
    max_bytes: int = setting(
        4 * 1024 * 1024,
        doc="Most bytes (protobuf size) in one export: requests are merged only up to it, and a larger request is "
        "split by items to fit. The default stays under the 4 MiB a gRPC server (a Jaeger or Collector "
        "receiver) accepts by default; a larger export would be refused whole. 0: no limit.",
        minimum=0,
    )
    flush_timeout: Duration = setting(
        Duration(0.2), doc="Longest time the oldest queued request waits for more before it is sent."
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        if self.max_size and self.max_size < self.min_size:
            yield "max_size", "must be 0 or at least min_size"


# (resource list, scope list, item list) field names per signal.
_LEVELS: dict[Signal, tuple[str, str, str]] = {
    Signal.TRACES: ("resource_spans", "scope_spans", "spans"),
    Signal.LOGS: ("resource_logs", "scope_logs", "log_records"),
    Signal.METRICS: ("resource_metrics", "scope_metrics", "metrics"),
}


def merge(batches: list[Message]) -> Message:
    """One request holding every resource of ``batches``.

    A new message: queued batches may be shared with other exporters (the fan-out hands read-only consumers
    the same object), so they are never modified.
    """
    if len(batches) == 1:
        return batches[0]
    merged = type(batches[0])()
    for batch in batches:
        merged.MergeFrom(batch)
    return merged


def _weight(signal: Signal, item: Message) -> int:
    if signal is not Signal.METRICS:
        return 1
    kind = item.WhichOneof("data")
    return max(len(getattr(item, kind).data_points), 1) if kind else 1


def _shell(message: Message, skip: str) -> Message:
    """A copy of ``message`` without its ``skip`` list (a resource or scope entry without its children)."""
    shell = type(message)()
    for descriptor, value in message.ListFields():
        if descriptor.name == skip:
            continue
        if is_repeated(descriptor):
            getattr(shell, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(shell, descriptor.name).CopyFrom(value)
        else:
            setattr(shell, descriptor.name, value)
    return shell


_FRAMING = 6  # bytes around an embedded message: its field tag and a length of up to 5 bytes (a bound, not exact)


def split(signal: Signal, request: Message, max_items: int = 0, max_bytes: int = 0) -> list[Message]:
    """``request`` cut into requests of at most ``max_items`` items (a metric with more points stays whole) and
    at most ``max_bytes`` bytes, measured item by item (items vary: one span may carry a long prompt); 0 is no
    limit. Only an item larger than ``max_bytes`` by itself makes a larger request, alone."""
    resource_field, scope_field, item_field = _LEVELS[signal]
    chunks: list[Message] = []
    current: Message | None = None
    current_items = current_bytes = 0
    for resource in getattr(request, resource_field):
        resource_shell = _shell(resource, scope_field)
        resource_bytes = resource_shell.ByteSize() + _FRAMING if max_bytes else 0
        target_resource = None
        for scope in getattr(resource, scope_field):
            scope_shell = _shell(scope, item_field)
            scope_bytes = scope_shell.ByteSize() + _FRAMING if max_bytes else 0
            target_scope = None
            for item in getattr(scope, item_field):
                weight = _weight(signal, item)
                item_bytes = item.ByteSize() + _FRAMING if max_bytes else 0
                adds = item_bytes + (resource_bytes if target_resource is None else 0)
                adds += scope_bytes if target_scope is None else 0
                full = current_items and (
                    (max_items and current_items + weight > max_items)
                    or (max_bytes and current_bytes + adds > max_bytes)
                )
                if current is None or full:
                    current = type(request)()
                    chunks.append(current)
                    current_items = current_bytes = 0
                    target_resource = target_scope = None
                    adds = item_bytes + resource_bytes + scope_bytes
                if target_resource is None:
                    target_resource = getattr(current, resource_field).add()
                    target_resource.CopyFrom(resource_shell)
                if target_scope is None:
                    target_scope = getattr(target_resource, scope_field).add()
                    target_scope.CopyFrom(scope_shell)
                getattr(target_scope, item_field).append(item)
                current_items += weight
                current_bytes += adds
    return chunks or [request]
