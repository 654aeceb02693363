"""Retention classes for log records: from the trace they belong to, else from their severity.

Logs are never dropped by trace sampling. A record of a kept trace gets the trace's class and policy, unless its
own severity class is retained longer (an ERROR log in a trace kept at 10% keeps its ``error`` retention: it
would have had it had the trace been dropped, and keeping the trace must not shorten it). Every other record
gets ``log_error_class`` from severity ERROR and above (or a severity text saying so when the number is unset),
else the default class, with ``sampling.policy`` = ``severity``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber

from agent.processors.tail_sampling.policies import Decision

SEVERITY_POLICY = "severity"
_ERROR_NUMBER = SeverityNumber.SEVERITY_NUMBER_ERROR
_ERROR_TEXTS = frozenset({"ERROR", "ERR", "FATAL", "CRITICAL", "CRIT", "ALERT", "EMERGENCY", "PANIC"})

LogClass = tuple[str, str]
"""``(retention_class, sampling_policy)``."""


class LogClassifier:
    def __init__(self, classes: Mapping[str, float], default_class: str, error_class: str) -> None:
        self._period = dict(classes)
        self._error = (error_class, SEVERITY_POLICY)
        self._default = (default_class, SEVERITY_POLICY)

    def is_error(self, record: Any) -> bool:
        number = record.severity_number
        if number:
            return bool(number >= _ERROR_NUMBER)
        return record.severity_text.upper() in _ERROR_TEXTS

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
