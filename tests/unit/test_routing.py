"""Routing by retention class: ``retention_classes`` on an exporter, checked against ``service.retention``."""

from __future__ import annotations

import pytest
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.component import Signal
from agent.config.loader import load_path, load_text
from agent.config.schema import ConfigInvalid
from agent.config.service import RetentionConfig, ServiceConfig
from agent.exporters._helper.retention import RetentionFilter
from agent.otlp.signals import SPECS
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.workload import attr
from tests.delivery_doubles import make_settings
from tests.helpers import REPO, metric_value


def traces(*classes: str | None) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for index, retention_class in enumerate(classes):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.append(attr("service.name", f"svc{index}"))
        if retention_class is not None:
            resource_spans.resource.attributes.append(attr("retention.class", retention_class))
        resource_spans.scope_spans.add().spans.add(name=f"span{index}")
        resource_spans.scope_spans.add().spans.add(name=f"other{index}")
    return request


def services(request: ExportTraceServiceRequest) -> list[str]:
    return [rs.resource.attributes[0].value.string_value for rs in request.resource_spans]


def test_an_archive_exporter_keeps_only_error_and_critical_resources() -> None:
    metrics = SelfMetrics()
    archive = RetentionFilter(["error", "critical"], make_settings("otlp/jaeger_archive", metrics))
    batch = traces("standard", "error", None, "critical", "bogus")
    part, routed = archive.apply(Signal.TRACES, batch)
    assert part is not None and services(part) == ["svc1", "svc3"]
    archive.count(Signal.TRACES, routed)  # once the part is queued
    assert services(batch) == ["svc0", "svc1", "svc2", "svc3", "svc4"]  # shared with other exporters: untouched
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_routed_items_total", retention_class="error") == 2
    assert metric_value(text, "otel_sidecar_exporter_routed_items_total", retention_class="standard") == 0


def test_an_exporter_without_retention_classes_takes_everything_and_counts_by_class() -> None:
    metrics = SelfMetrics()
    primary = RetentionFilter([], make_settings("otlp/jaeger", metrics))
    batch = traces("standard", "error", None)
    part, routed = primary.apply(Signal.TRACES, batch)
    assert part is batch
    primary.count(Signal.TRACES, routed)
    text = metrics.render().decode()
    assert metric_value(text, "otel_sidecar_exporter_routed_items_total", retention_class="standard") == 4
    assert metric_value(text, "otel_sidecar_exporter_routed_items_total", retention_class="error") == 2


def test_nothing_left_means_the_batch_is_not_for_this_exporter() -> None:
    archive = RetentionFilter(["error"], make_settings("otlp/archive"))
    assert archive.apply(Signal.TRACES, traces("standard", None))[0] is None


def test_unclassified_data_follows_the_configured_default_class() -> None:
    service = ServiceConfig(retention=RetentionConfig(default_class="error"))
    archive = RetentionFilter(["error"], make_settings("otlp/archive", service=service))
    part, _ = archive.apply(Signal.TRACES, traces(None, "standard"))
    assert part is not None and services(part) == ["svc0"]


def test_log_resources_are_routed_the_same_way() -> None:
    request = ExportLogsServiceRequest()
    for retention_class in ("error", "standard"):
        resource_logs = request.resource_logs.add()
        resource_logs.resource.attributes.append(attr("retention.class", retention_class))
        resource_logs.scope_logs.add().log_records.add()
    part, _ = RetentionFilter(["standard"], make_settings("loki/long")).apply(Signal.LOGS, request)
    assert part is not None
    assert [rl.resource.attributes[0].value.string_value for rl in part.resource_logs] == ["standard"]


def test_metrics_are_counted_by_data_point_as_the_sent_counter_counts_them() -> None:
    """exporter_routed_items_total must agree with exporter_sent_items_total: both count data points."""
    request = ExportMetricsServiceRequest()
    for retention_class, points in (("error", 5), ("standard", 3)):
        resource_metrics = request.resource_metrics.add()
        resource_metrics.resource.attributes.append(attr("retention.class", retention_class))
        gauge = resource_metrics.scope_metrics.add().metrics.add(name="g").gauge
        for value in range(points):
            gauge.data_points.add(as_int=value)
    metrics = SelfMetrics()
    archive = RetentionFilter(["error"], make_settings("otlp/archive", metrics))
    part, routed = archive.apply(Signal.METRICS, request)
    assert part is not None
    archive.count(Signal.METRICS, routed)
    text = metrics.render().decode()
    routed_points = metric_value(text, "otel_sidecar_exporter_routed_items_total", retention_class="error")
    assert routed_points == SPECS[Signal.METRICS].count_items(part) == 5


CONFIG = """
receivers:
  otlp: {grpc: {endpoint: "127.0.0.1:0"}}
exporters:
  otlp/jaeger: {endpoint: "jaeger:4317", tls: {insecure: true}}
  otlp/jaeger_archive: {endpoint: "jaeger-archive:4317", retention_classes: [%s]}
  loki: {endpoint: "http://loki:3100/loki/api/v1/push", retention_classes: [%s]}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [otlp/jaeger, otlp/jaeger_archive, loki]}
    logs: {receivers: [otlp], exporters: [loki]}
"""


def test_retention_classes_named_by_exporters_must_be_defined() -> None:
    assert load_text(CONFIG % ("error, critical", "")).exporters["otlp/jaeger_archive"].config.retention_classes == [
        "error",
        "critical",
    ]
    with pytest.raises(ConfigInvalid) as raised:
        load_text(CONFIG % ("error, eror", "standard, standard"))
    messages = [str(e) for e in raised.value.errors]
    assert (
        "exporters.otlp/jaeger_archive.retention_classes[1]: unknown retention class 'eror'; "
        "defined classes: error, critical, standard"
    ) in messages
    assert "exporters.loki.retention_classes[1]: names standard more than once" in messages


UNROUTED = """
receivers:
  otlp: {grpc: {endpoint: "127.0.0.1:0"}}
processors:
  tail_sampling: {}
exporters:
  otlp/jaeger: {endpoint: "jaeger:4317", retention_classes: [standard]}
  otlp/jaeger_archive: {endpoint: "jaeger:4327", retention_classes: [%s]}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [tail_sampling], exporters: [otlp/jaeger_archive, otlp/jaeger]}
"""


def test_a_class_no_exporter_of_a_pipeline_takes_is_refused_at_load() -> None:
    """Kept critical traces would reach no exporter and vanish uncounted: refused with the pipeline's path."""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(UNROUTED % "error")
    assert [str(e) for e in raised.value.errors] == [
        "service.pipelines.traces.exporters: no exporter takes retention class(es) critical "
        "(each lists retention_classes): that data would be dropped; add an exporter without retention_classes "
        "or list them"
    ]
    assert load_text(UNROUTED % "error, critical").service.pipelines["traces"].exporters


def test_an_unknown_class_is_listed_before_the_class_it_leaves_unrouted() -> None:
    """The misspelt class is the cause and the unrouted one its consequence: the cause comes first."""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(UNROUTED % "eror, critical")
    assert [str(e).split(";")[0].split(" (")[0] for e in raised.value.errors] == [
        "exporters.otlp/jaeger_archive.retention_classes[0]: unknown retention class 'eror'",
        "service.pipelines.traces.exporters: no exporter takes retention class(es) error",
    ]


UNROUTED_BESIDE_LOKI = """
receivers:
  otlp: {grpc: {endpoint: "127.0.0.1:0"}}
processors:
  tail_sampling: {}
exporters:
  otlp/jaeger_archive: {endpoint: "jaeger:4327", retention_classes: [error, critical]}
  loki: {endpoint: "http://loki:3100/loki/api/v1/push"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [tail_sampling], exporters: [otlp/jaeger_archive, loki]}
"""


def test_loki_in_a_traces_pipeline_is_no_destination_for_the_spans_of_a_class() -> None:
    """Loki turns spans into log lines of their events and stores no span: beside it, kept standard traces
    reached no exporter and were counted only as routed to Loki."""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(UNROUTED_BESIDE_LOKI)
    assert [str(e) for e in raised.value.errors] == [
        "service.pipelines.traces.exporters: no exporter takes retention class(es) standard "
        "(each lists retention_classes) (beside loki, which pass(es) on no spans): that data would be dropped; add an "
        "exporter without retention_classes or list them"
    ]
    alone = UNROUTED_BESIDE_LOKI.replace("exporters: [otlp/jaeger_archive, loki]", "exporters: [loki]")
    assert load_text(alone).service.pipelines["traces"].exporters == ["loki"]  # no routing by class there


def hours(text: str) -> float:
    assert text.endswith("h"), text
    return float(text[:-1])


def test_the_shipped_config_routes_long_classes_to_the_archive_and_the_backend_configs_agree() -> None:
    config = load_path(REPO / "config" / "agent.yaml")
    classes = {name: float(duration) / 3600 for name, duration in config.service.retention.classes.items()}
    archive = config.exporters["otlp/jaeger_archive"].config.retention_classes
    longest = max(classes.values())
    assert sorted(archive) == sorted(name for name, period in classes.items() if period == longest)
    assert config.exporters["otlp/jaeger"].config.retention_classes == []

    loki = yaml.safe_load((REPO / "deploy" / "loki" / "loki-config.yaml").read_text())
    streams = {rule["selector"]: hours(rule["period"]) for rule in loki["limits_config"]["retention_stream"]}
    assert streams == {f'{{retention="{name}"}}': period for name, period in classes.items()}
    assert hours(loki["limits_config"]["retention_period"]) == classes[config.service.retention.default_class]
    assert loki["compactor"]["retention_enabled"] is True

    jaeger = yaml.safe_load((REPO / "deploy" / "jaeger" / "config.yaml").read_text())
    backends = jaeger["extensions"]["jaeger_storage"]["backends"]
    query = jaeger["extensions"]["jaeger_query"]["storage"]
    assert hours(backends[query["traces"]]["badger"]["ttl"]["spans"]) == min(classes.values())
    assert hours(backends[query["traces_archive"]]["badger"]["ttl"]["spans"]) == longest
    archive_port = config.exporters["otlp/jaeger_archive"].config.endpoint.rsplit(":", 1)[1].split("}")[0]
    assert jaeger["receivers"]["otlp/archive"]["protocols"]["grpc"]["endpoint"].endswith(":" + archive_port)
