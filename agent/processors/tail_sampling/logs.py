"""Retention classes for log records: from the trace they belong to, else from their severity.

Logs are never dropped by trace sampling. A record of a kept trace gets the trace's class and policy, unless its
own severity class is retained longer (an ERROR log in a trace kept at 10% keeps its ``error`` retention: it
would have had it had the trace been dropped, and keeping the trace must not shorten it). Every other record
gets ``log_error_class`` from severity ERROR and above (or a severity text saying so when the number is not one
OTLP defines), else the default class, with ``sampling.policy`` = ``severity``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.otlp.severity import is_error_record
from agent.processors.tail_sampling.policies import Decision

SEVERITY_POLICY = "severity"

LogClass = tuple[str, str]
"""``(retention_class, sampling_policy)``."""


class LogClassifier:
    def __init__(self, classes: Mapping[str, float], default_class: str, error_class: str) -> None:
        self._period = dict(classes)
        self._error = (error_class, SEVERITY_POLICY)
        self._default = (default_class, SEVERITY_POLICY)

    def is_error(self, record: Any) -> bool:
        # The reading the Loki exporter's `level` label uses: an error class and an `info` label never meet.
        return is_error_record(record)

    def by_severity(self, record: Any) -> LogClass:
        return self._error if self.is_error(record) else self._default

    def for_kept_trace(self, record: Any, decision: Decision) -> LogClass:
        own = self.by_severity(record)
        if self._period.get(own[0], 0.0) > self._period.get(decision.retention_class, 0.0):
            return own
        return decision.retention_class, decision.policy

    def group_by_severity(self, records: list[Any]) -> dict[LogClass, list[Any]]:
        groups: dict[LogClass, list[Any]] = {}
        for record in records:
            groups.setdefault(self.by_severity(record), []).append(record)
        return groups

    def group_for_kept_trace(self, records: list[Any], decision: Decision) -> dict[LogClass, list[Any]]:
        groups: dict[LogClass, list[Any]] = {}
        for record in records:
            groups.setdefault(self.for_kept_trace(record, decision), []).append(record)
        return groups
