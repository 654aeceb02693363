"""Long log content through the shipped logs pipeline (redaction, then the Loki exporter): the reader keeps the
beginning of a long line or traceback, never an empty marker in its place."""

from __future__ import annotations

from collections import Counter

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from agent.config.service import ServiceConfig
from agent.exporters._helper.retention import RetentionClassifier
from agent.exporters.loki.convert import StreamMapper
from agent.processors.redaction.config import RedactionConfig
from agent.processors.redaction.rules import Redactor
from agent.testing.workload import attr


def _through_redaction_and_loki(body: str, attributes: dict[str, str]) -> tuple[str, dict[str, str]]:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(attr("service.name", "orchestrator"))
    record = resource_logs.scope_logs.add().log_records.add(time_unix_nano=1)
    record.body.string_value = body
    record.attributes.extend(attr(k, v) for k, v in attributes.items())
    redactor = Redactor(RedactionConfig())
    counts: Counter[str] = Counter()
    redactor.value(record.body, counts)
    redactor.attributes(record.attributes, counts)
    mapper = StreamMapper([], RetentionClassifier(ServiceConfig()), 256 * 1024)  # config/agent.yaml's default
    ((_, entries),) = mapper.streams(request).items()
    _, line, metadata = entries[0]
    return line, dict(metadata)


def test_a_line_under_max_line_bytes_but_over_the_redaction_scan_bound_keeps_its_beginning() -> None:
    # 140,000 characters: under Loki's max_line_bytes (262,144), which docs/delivery.md says truncates with
    # "…[truncated N bytes]"; today the redaction processor replaces the whole body with a marker first.
    line, _ = _through_redaction_and_loki("workflow wf-42 state dump: " + "x" * 140_000, {})
    assert line.startswith("workflow wf-42 state dump: ")


def test_a_traceback_over_the_metadata_limit_is_cut_not_dropped() -> None:
    stacktrace = "Traceback (most recent call last):\n" + '  File "app.py", line 1, in run\n' * 3000
    _, metadata = _through_redaction_and_loki("step failed", {"exception.stacktrace": stacktrace})
    assert metadata.get("exception_stacktrace", "").startswith("Traceback (most recent call last):")
