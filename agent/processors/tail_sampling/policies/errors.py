"""``errors``: keep every trace with a failed span (status ERROR, optionally ``error.type`` or HTTP 5xx)."""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Status

from agent.processors.tail_sampling.buffer import BufferedTrace
from agent.processors.tail_sampling.config import ErrorsPolicyConfig
from agent.processors.tail_sampling.policies import EvaluationContext

_ERROR = Status.STATUS_CODE_ERROR


class ErrorsPolicy:
    name = "errors"

    def __init__(self, config: ErrorsPolicyConfig) -> None:
        self.retention_class = config.retention_class
        self._error_type = config.error_type
        self._http = config.http_server_errors

    def threshold(self, trace: BufferedTrace, context: EvaluationContext) -> int | None:
        # Status first: one field per span, and it settles almost every error trace without an attribute scan.
        for _, _, spans in trace.spans:
            for span in spans:
                if span.status.code == _ERROR:
                    return 0
        if (self._error_type or self._http) and self._any_error_attribute(trace):
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
