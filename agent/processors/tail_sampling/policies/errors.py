"""``errors``: keep every trace with a failed span (status ERROR, optionally ``error.type`` or HTTP 5xx), or
optionally with an ERROR log record held with it."""

from __future__ import annotations

from agent.otlp.severity import is_error_record
from agent.processors.tail_sampling.buffer import BufferedTrace
from agent.processors.tail_sampling.config import ErrorsPolicyConfig
from agent.processors.tail_sampling.policies import EvaluationContext


class ErrorsPolicy:
    name = "errors"

    def __init__(self, config: ErrorsPolicyConfig) -> None:
        self.retention_class = config.retention_class
        self._error_type = config.error_type
        self._http = config.http_server_errors
        self._logs = config.error_logs

    def threshold(self, trace: BufferedTrace, context: EvaluationContext) -> int | None:
        # Status first: read as the spans arrived, and it settles almost every error trace without a scan.
        if trace.failed:
            return 0
        if (self._error_type or self._http) and self._any_error_attribute(trace):
            return 0
        if self._logs and any(is_error_record(r) for _, _, records in trace.logs for r in records):
            return 0
        return None

    def _any_error_attribute(self, trace: BufferedTrace) -> bool:
        for _, span in trace.iter_spans():
            for kv in span.attributes:
                key = kv.key
                if self._error_type and key == "error.type":
                    return True
                if self._http and key == "http.response.status_code" and kv.value.int_value >= 500:
                    return True
        return False
