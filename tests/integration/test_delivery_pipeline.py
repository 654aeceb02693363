"""The delivery pipeline end to end in the real agent: redaction, tail sampling, routing by retention class.

Backends: two OTLP capture servers standing in for Jaeger's primary (gRPC) and 30-day archive (HTTP) stores,
the Loki push API double (Loki cannot be installed here; see ``LokiDouble``) and the file exporter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.testing.workload import TraceTruth, Workload, attr
from tests.delivery_doubles import LokiDouble, OtlpCapture
from tests.helpers import AgentProcess, free_port, http_post, wait_until

pytestmark = pytest.mark.integration

PROTOBUF = {"Content-Type": "application/x-protobuf"}
OPENAI_KEY = "sk-proj-9Xq2Lm4Np7Rs1Tv3Wy5Za8Bc0De6Fg"
BEARER = "eyJhbGciOiJSUzI1NiJ9SecretToken42"
AWS_KEY = "AKIAZZZZ1234567890AB"
DB_PASSWORD = "correct-horse-battery-staple"
PROMPT = "Patient record 4711: diagnosis confidential"
SECRETS = (OPENAI_KEY, BEARER, AWS_KEY, DB_PASSWORD, PROMPT)


def pipeline_config(tmp_path: Path, primary: OtlpCapture, archive: OtlpCapture, loki: LokiDouble) -> dict[str, Any]:
    fast = {"batch": {"flush_timeout": "50ms"}, "retry_on_failure": {"initial_interval": "100ms"}}
    return {
        "receivers": {"otlp": {"grpc": {"enabled": False}, "http": {"endpoint": f"127.0.0.1:{free_port()}"}}},
        "processors": {
            "redaction": {},
            "tail_sampling": {
                "decision_wait": "1s",
                "decision_wait_after_root": "200ms",
                "policies": {"probabilistic": {"percentage": 100, "retention_class": "standard"}},
            },
        },
        "exporters": {
            "otlp/jaeger": {"endpoint": primary.grpc_endpoint, "tls": {"insecure": True}, **fast},
            "otlp/jaeger_archive": {
                "endpoint": archive.http_url,
                "protocol": "http/protobuf",
                "retention_classes": ["error", "critical"],
                **fast,
            },
            "loki": {"endpoint": loki.url, "label_resource_attributes": ["deployment.environment"], **fast},
            "file": {"path": str(tmp_path / "out")},
        },
        "service": {
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["redaction", "tail_sampling"],
                    "exporters": ["otlp/jaeger_archive", "otlp/jaeger", "loki", "file"],
                },
                "logs": {
                    "receivers": ["otlp"],
                    "processors": ["redaction", "tail_sampling"],
                    "exporters": ["loki", "file"],
                },
            },
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{free_port()}"}, "logs": {"level": "info"}},
            "shutdown_timeout": "5s",
        },
    }


def with_secrets(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    for resource_spans in request.resource_spans:
        resource_spans.resource.attributes.append(attr("cloud.setup", f"aws_access_key_id={AWS_KEY}"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.attributes.extend(
                    [
                        attr("http.request.header.authorization", f"Bearer {BEARER}"),
                        attr("db.connection.password", DB_PASSWORD),
                        attr("tool.input", f"call api with key {OPENAI_KEY} please"),
                    ]
                )
                if span.name.startswith("chat "):
                    span.attributes.append(attr("gen_ai.prompt", PROMPT))
                if span.status.code == 2:
                    event = span.events.add(name="exception", time_unix_nano=span.end_time_unix_nano)
                    event.attributes.extend(
                        [
                            attr("exception.type", "AuthenticationError"),
                            attr("exception.message", f"Incorrect API key provided: {OPENAI_KEY}"),
                        ]
                    )
    return request


def logs_for(truths: list[TraceTruth]) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(attr("service.name", "orchestrator"))
    scope_logs = resource_logs.scope_logs.add()
    for truth in truths:
        record = scope_logs.log_records.add(time_unix_nano=1_700_000_000_000_000_000, severity_number=9)
        record.trace_id = truth.trace_id
        record.flags = 1  # written inside a sampled span, as an SDK marks it
        record.body.string_value = f"workflow {truth.trace_id.hex()} uses {OPENAI_KEY} and Bearer {BEARER}"
        record.attributes.extend([attr("user.password", DB_PASSWORD), attr("gen_ai.prompt", PROMPT)])
    return request


def trace_ids(capture: OtlpCapture) -> set[bytes]:
    return {span.trace_id for span in capture.capture.spans()}


def test_secrets_never_reach_an_exporter_and_each_class_reaches_its_stores(tmp_path: Path) -> None:
    primary, archive, loki = OtlpCapture().start(), OtlpCapture().start(), LokiDouble().start()
    agent = AgentProcess(pipeline_config(tmp_path, primary, archive, loki), tmp_path).start()
    try:
        truths: list[TraceTruth] = []
        for request, truth in Workload(seed=4, error_rate=0.3).requests(20):
            status, body, _ = http_post(
                agent.http_url + "/v1/traces", with_secrets(request).SerializeToString(), PROTOBUF
            )
            assert status == 200, body
            truths.extend(truth)
        status, body, _ = http_post(agent.http_url + "/v1/logs", logs_for(truths).SerializeToString(), PROTOBUF)
        assert status == 200, body
        errors = {t.trace_id for t in truths if t.error}
        assert errors and len(errors) < len(truths)
        everything = {t.trace_id for t in truths}
        wait_until(
            lambda: (
                trace_ids(primary) == everything
                and trace_ids(archive) == errors
                and len([e for _, e in loki.entries() if e.metadata.get("event_name") == "exception"]) >= len(errors)
                and len([e for _, e in loki.entries() if e.line.startswith("workflow ")]) == len(truths)
            ),
            timeout=30,
            what="every kept trace and log delivered",
        )
        for rule in ("openai_key", "bearer_token", "aws_access_key", "key:password", "content"):
            assert agent.metric("otel_sidecar_redaction_total", rule=rule) > 0, rule
        assert agent.stop() == 0
    finally:
        agent.kill()
        primary.stop()
        archive.stop()
        loki.stop()

    # Routing: the archive store holds exactly the error traces; every span it has is stamped error.
    assert {
        kv.value.string_value
        for rs in archive.capture.resource_spans()
        for kv in rs.resource.attributes
        if kv.key == "retention.class"
    } == {"error"}
    loki_entries = loki.entries()
    for labels, entry in loki_entries:
        assert set(labels) == {"service_name", "level", "retention", "deployment_environment"} or set(labels) == {
            "service_name",
            "level",
            "retention",
        }
        if entry.metadata.get("event_name") == "exception":
            assert labels["retention"] == "error"
            assert labels["level"] == "error"
            assert entry.line.startswith("AuthenticationError: Incorrect API key provided: [REDACTED]")

    # Redaction: no secret in anything any exporter sent.
    outputs = [
        b"".join(r.SerializeToString() for signal in primary.capture.requests.values() for r in signal),
        b"".join(r.SerializeToString() for signal in archive.capture.requests.values() for r in signal),
        json.dumps([[labels, entry.line, entry.metadata] for labels, entry in loki_entries]).encode(),
        b"".join(path.read_bytes() for path in (tmp_path / "out").glob("*.jsonl")),
    ]
    assert all(outputs)
    for output in outputs:
        for secret in SECRETS:
            assert secret.encode() not in output
    assert b"[REDACTED]" in outputs[0] and b"[REDACTED]" in outputs[2]
