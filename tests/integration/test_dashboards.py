"""Grafana dashboards in deploy/grafana: every panel query parses, and returns data from a real Prometheus.

The live test runs the real agent (span metrics, tail sampling, Prometheus exporter, an exporter whose backend is
unreachable) and the real Prometheus (Debian package) scraping it every second with the alert and budget rules
loaded, sends a synthetic orchestrator workload, then runs every panel and variable query of every dashboard.
The workload covers what the panels show: failures (30% of traces), a model missing from the price table,
malformed spans the receiver refuses, more traces than the sampler may buffer (forced decisions), and export
failures.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from agent.testing.workload import Workload, resource_for
from tests.helpers import (
    REPO,
    AgentProcess,
    PrometheusServer,
    free_port,
    http_post,
    self_signed_certificate,
    wait_until,
)

pytestmark = pytest.mark.integration

GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
RULES_GLOB = str(REPO / "deploy" / "prometheus" / "rules" / "*.yaml")
# Grafana's built-in variables, replaced by what Grafana would send for a 1-hour view of this short test.
BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
UNPRICED_MODEL = "acme-llm-preview"
TRACES_PER_PHASE = 60

# The metric contract the dashboards are built on (span-derived, the agent's own, and the budget rules).
KNOWN_METRICS = {
    "orchestrator_spans_total",
    "orchestrator_span_duration_seconds_bucket",
    "orchestrator_workflow_executions_total",
    "orchestrator_workflow_duration_seconds_bucket",
    "orchestrator_workflow_duration_seconds_sum",
    "orchestrator_step_executions_total",
    "orchestrator_step_duration_seconds_bucket",
    "orchestrator_llm_requests_total",
    "orchestrator_llm_request_duration_seconds_bucket",
    "orchestrator_llm_tokens_total",
    "orchestrator_llm_cost_usd_total",
    "orchestrator_llm_unpriced_requests_total",
    "orchestrator_errors_total",
    "orchestrator:llm_cost_budget:ratio",
    "otel_sidecar_receiver_accepted_items_total",
    "otel_sidecar_receiver_refused_items_total",
    "otel_sidecar_receiver_failed_requests_total",
    "otel_sidecar_exporter_sent_items_total",
    "otel_sidecar_exporter_send_failed_items_total",
    "otel_sidecar_exporter_queue_fill_ratio",
    "otel_sidecar_exporter_in_flight_items",
    "otel_sidecar_exporter_persistent_queue_errors_total",
    "otel_sidecar_exporter_send_duration_seconds_bucket",
    "otel_sidecar_sampling_traces_buffered",
    "otel_sidecar_sampling_decisions_total",
    "otel_sidecar_sampling_forced_decisions_total",
    "otel_sidecar_spanmetrics_series",
    "otel_sidecar_ready",
    "otel_sidecar_process_cpu_seconds_total",
    "otel_sidecar_process_resident_memory_bytes",
    "otel_sidecar_tls_certificate_expiry_timestamp_seconds",
    "up",
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL expression) for every query target."""
    found = []
    for path in DASHBOARDS:
        for panel in all_panels(load(path)["panels"]):
            for target in panel.get("targets", []):
                found.append((path.name, f"{panel['title']} [{target['refId']}]", target["expr"]))
    return found


def variable_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, variable name, label_values(...) definition) for every query variable."""
    found = []
    for path in DASHBOARDS:
        for variable in load(path)["templating"]["list"]:
            if variable["type"] == "query":
                found.append((path.name, variable["name"], variable["definition"]))
    return found


def substitute(expr: str) -> str:
    """What Grafana sends for an expression: built-ins filled in, every `$var` at its "All" value (`.*`)."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    expr = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)
    assert "$" not in expr, expr
    return expr


QUERIES = panel_queries()
QUERY_IDS = [f"{board}: {title}" for board, title, _ in QUERIES]


def test_there_are_the_three_dashboards_with_unique_uids() -> None:
    boards = {path.name: load(path) for path in DASHBOARDS}
    assert set(boards) == {"workflow-overview.json", "llm-providers.json", "agent-health.json"}
    assert len({board["uid"] for board in boards.values()}) == 3
    titles = {p["title"] for p in all_panels(boards["llm-providers.json"]["panels"])}
    assert titles >= {
        "Requests per second",
        "Tokens per second by type",
        "Spend per hour by model",
        "Latency p50 / p95 / p99",
    }


def test_every_panel_uses_the_datasource_variable_and_only_defined_variables() -> None:
    for path in DASHBOARDS:
        board = load(path)
        defined = {v["name"] for v in board["templating"]["list"]}
        assert "datasource" in defined
        for panel in all_panels(board["panels"]):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                used = set(re.findall(r"\$\{?([A-Za-z][A-Za-z0-9_]*)", target["expr"]))
                assert used <= defined, (path.name, panel["title"], used - defined)


@pytest.mark.parametrize(("board", "title", "expr"), QUERIES, ids=QUERY_IDS)
def test_panel_queries_use_only_contract_metrics(board: str, title: str, expr: str) -> None:
    names = set(re.findall(r"\b(orchestrator:[a-z_:]+|orchestrator_[a-z_]+|otel_sidecar_[a-z_]+|up)\b", expr))
    assert names, (board, title)
    assert names <= KNOWN_METRICS, (board, title, names - KNOWN_METRICS)


def test_every_panel_query_parses(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule; an error names the rule, mapped back to its panel."""
    rules = [{"record": f"dashboard:query_{i}", "expr": substitute(expr)} for i, (_, _, expr) in enumerate(QUERIES)]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install the Debian package prometheus (`make prometheus`)"
    result = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "queries.yaml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\nqueries: {list(enumerate(QUERY_IDS))}"
    assert f"SUCCESS: {len(QUERIES)} rules found" in result.stdout


def test_provisioning_loads_the_dashboards_and_the_prometheus_datasource() -> None:
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "otel-sidecar.yaml").read_text())
    (provider,) = providers["providers"]
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yaml").read_text())
    by_type = {d["type"]: d for d in datasources["datasources"]}
    assert by_type["prometheus"]["isDefault"] is True
    exemplar_links = by_type["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert exemplar_links[0]["datasourceUid"] == by_type["jaeger"]["uid"]
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yaml").read_text())
    grafana_volumes = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana_volumes
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana_volumes


# --------------------------------------------------------------------------- live: agent + Prometheus


def agent_config(tmp_path: Path) -> dict[str, Any]:
    client_cert, client_key = self_signed_certificate(tmp_path, "client")
    return {
        "receivers": {
            "otlp": {
                "grpc": {"endpoint": f"127.0.0.1:{free_port()}"},
                "http": {"endpoint": f"127.0.0.1:{free_port()}"},
            }
        },
        "processors": {
            # A small buffer so that a burst of traces forces early decisions.
            "tail_sampling": {"decision_wait": "2s", "decision_wait_after_root": "500ms", "max_traces": 10}
        },
        "connectors": {"spanmetrics": {"metrics_flush_interval": "500ms"}},
        "exporters": {
            # New series stay at zero for three of this Prometheus's 1s scrapes rather than a minute.
            "prometheus": {"endpoint": f"127.0.0.1:{free_port()}", "new_series_at_zero_for": "3s"},
            "file": {"path": str(tmp_path / "out")},
            # A backend that is never there: its batches are given up after a short retry budget. Over TLS with a
            # client certificate, whose expiry the certificates panel shows.
            "otlp/unreachable": {
                "endpoint": f"127.0.0.1:{free_port()}",
                "tls": {"cert_file": str(client_cert), "key_file": str(client_key)},
                "timeout": "1s",
                "retry_on_failure": {"initial_interval": "100ms", "max_interval": "200ms", "max_elapsed_time": "500ms"},
                "batch": {"flush_timeout": "100ms"},
                # On disk, where the agent finds a damaged segment at start (seeded below): the disk-queue panel.
                "sending_queue": {"storage": {"directory": str(tmp_path / "queue")}},
            },
        },
        "service": {
            "pipelines": {
                "traces/spanmetrics": {"receivers": ["otlp"], "exporters": ["spanmetrics"]},
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["tail_sampling"],
                    "exporters": ["file", "otlp/unreachable"],
                },
                "metrics": {"receivers": ["spanmetrics"], "exporters": ["prometheus"]},
            },
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{free_port()}"}},
            "shutdown_timeout": "5s",
        },
    }


class Prometheus(PrometheusServer):
    """Scraping the agent's ``targets`` (labelled by endpoint) every second, with the shipped rules loaded."""

    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [RULES_GLOB],
            "scrape_configs": [
                {
                    "job_name": "otel-sidecar",
                    "static_configs": [{"targets": [t], "labels": {"endpoint": e}} for e, t in targets.items()],
                }
            ],
        }
        super().__init__(workdir, config)

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result = data["result"]
        return result if data["resultType"] in ("vector", "matrix") else [{"value": result}]

    def total(self, expr: str) -> float:
        return sum(float(sample["value"][1]) for sample in self.query(expr))


def workload_requests(count: int, seed: int) -> list[ExportTraceServiceRequest]:
    """Workflow traces, 30% failing; every fifth trace's LLM calls go to a model the price table does not know."""
    requests = []
    for index, (request, _) in enumerate(Workload(seed=seed, error_rate=0.3).requests(count)):
        if index % 5 == 0:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        for attribute in span.attributes:
                            if attribute.key in ("gen_ai.request.model", "gen_ai.response.model"):
                                attribute.value.string_value = UNPRICED_MODEL
        requests.append(request)
    return requests


def malformed_request() -> ExportTraceServiceRequest:
    """A span whose trace id is 3 bytes: the receiver refuses it as invalid (OTLP partial success)."""
    span = Span(
        trace_id=b"\x01\x02\x03", span_id=b"\x01" * 8, name="broken", start_time_unix_nano=1, end_time_unix_nano=2
    )
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource_for("orchestrator"), scope_spans=[ScopeSpans(spans=[span])])]
    )


def send(agent: AgentProcess, requests: list[ExportTraceServiceRequest]) -> None:
    for request in requests:
        status, body, _ = http_post(
            agent.http_url + "/v1/traces", request.SerializeToString(), {"Content-Type": "application/x-protobuf"}
        )
        assert status == 200, body


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A Prometheus that has scraped the agent before, between and after two bursts of workload."""
    workdir = tmp_path_factory.mktemp("dashboards")
    config = agent_config(workdir)
    damaged = workdir / "queue" / "otlp__unreachable" / f"{1:020d}.seg"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"no record of the queue's format")  # skipped as corrupt, and set aside
    agent = AgentProcess(config, workdir)
    targets = {
        "metrics": config["exporters"]["prometheus"]["endpoint"],
        "admin": config["service"]["telemetry"]["admin"]["endpoint"],
    }
    prometheus = Prometheus(workdir, targets)
    try:
        agent.start()
        prometheus.start()
        wait_until(lambda: prometheus.total('up{job="otel-sidecar"}') == 2, timeout=20, what="both targets up")
        send(agent, [*workload_requests(TRACES_PER_PHASE, seed=11), malformed_request()])
        status, _, _ = http_post(agent.http_url + "/v1/logs", b"", {"Content-Type": "application/x-protobuf"})
        assert status == 404  # no logs pipeline: a request rejected without a retry (no_pipeline)
        runs = "sum(orchestrator_workflow_executions_total)"
        wait_until(lambda: prometheus.total(runs) == TRACES_PER_PHASE, timeout=30, what="first burst scraped")
        send(agent, workload_requests(TRACES_PER_PHASE, seed=12))
        wait_until(lambda: prometheus.total(runs) == 2 * TRACES_PER_PHASE, timeout=30, what="second burst scraped")
        wait_until(
            lambda: prometheus.total("sum(otel_sidecar_exporter_send_failed_items_total)") > 0,
            timeout=30,
            what="the unreachable exporter gave up on a batch",
        )
        # A counter that appeared in the last scrape has one sample: rate() needs a second one.
        wait_until(
            lambda: prometheus.query("rate(otel_sidecar_exporter_send_failed_items_total[1m])"),
            timeout=30,
            what="two scrapes of the dropped-items counter",
        )
        wait_until(
            lambda: prometheus.query("orchestrator:llm_cost_budget:ratio"), timeout=30, what="budget rules evaluated"
        )
        yield prometheus
    finally:
        prometheus.stop()
        agent.kill()


@pytest.mark.parametrize(("board", "title", "expr"), QUERIES, ids=QUERY_IDS)
def test_panel_query_returns_data_from_prometheus(scraped: Prometheus, board: str, title: str, expr: str) -> None:
    result = scraped.query(substitute(expr))
    assert result, f"{board} / {title}: no data for {substitute(expr)}"
    values = [float(sample["value"][1]) for sample in result]
    assert any(math.isfinite(v) for v in values), f"{board} / {title}: only NaN/Inf: {result}"


def test_the_refused_panel_shows_requests_rejected_without_a_retry(scraped: Prometheus) -> None:
    """Logs sent to an agent without a logs pipeline are lost (OtelSidecarRejectingRequests): the receivers panel
    shows them by reason and signal, apart from the items refused."""
    (expr,) = (e for board, title, e in QUERIES if title.startswith("Refused items and requests per second"))
    shown = {
        (s["metric"].get("reason"), s["metric"].get("signal"), s["metric"].get("kind"))
        for s in scraped.query(substitute(expr))
    }
    assert ("no_pipeline", "logs", "(requests, not retried)") in shown
    assert ("invalid", "traces", None) in shown  # the malformed request's span, refused as an item


@pytest.mark.parametrize(("board", "name", "definition"), variable_queries())
def test_variable_query_returns_values(scraped: Prometheus, board: str, name: str, definition: str) -> None:
    match = re.fullmatch(r"label_values\((.+),\s*([a-z_]+)\)", definition)
    assert match, definition
    selector, label = substitute(match.group(1)), match.group(2)
    values = scraped.api(f"label/{label}/values", **{"match[]": selector})
    assert values, f"{board}: variable {name} has no values ({definition})"


def test_the_live_data_is_the_workload_sent(scraped: Prometheus) -> None:
    assert scraped.total("sum(orchestrator_workflow_executions_total)") == 2 * TRACES_PER_PHASE
    unpriced = scraped.query(f'orchestrator_llm_unpriced_requests_total{{model="{UNPRICED_MODEL}"}}')
    assert unpriced and float(unpriced[0]["value"][1]) > 0
    assert scraped.total('sum(otel_sidecar_receiver_refused_items_total{reason="invalid"})') == 1
    assert scraped.total("sum(otel_sidecar_sampling_forced_decisions_total)") > 0


def test_the_compose_stack_wires_the_agent_prometheus_and_grafana_together(tmp_path: Path) -> None:
    """docker compose cannot run here; check what it would run: the agent config, ports, mounts and scrape targets."""
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"otel-sidecar", "jaeger", "prometheus", "loki", "grafana"}
    # Compose interpolates `${...}`; `$${...}` is how the agent's own `${env:...}` references are written.
    config_text = compose["configs"]["otel-sidecar-config"]["content"].replace("$$", "$")
    (tmp_path / "config.yaml").write_text(config_text)
    result = subprocess.run(
        [sys.executable, "-m", "agent", "validate", "--config", str(tmp_path / "config.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    agent = services["otel-sidecar"]
    assert agent["configs"][0]["target"] == "/etc/otel-sidecar/config.yaml"
    # Published on the host's loopback only: Docker would otherwise bind every interface, past host firewalls.
    assert {p.split(":")[0] for p in agent["ports"]} == {"127.0.0.1"}
    assert {p.split(":")[1] for p in agent["ports"]} == {"4317", "4318", "9464", "13133"}
    for service in compose["services"].values():
        assert all(port.startswith("127.0.0.1:") for port in service.get("ports", [])), service
    # The variables the README lists reach the agent's config from the shell running compose.
    assert set(agent["environment"]) >= {"OTEL_SIDECAR_CRITICAL_SERVICES", "OTEL_SIDECAR_CAPTURE_CONTENT"}
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "otel-sidecar"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"otel-sidecar:9464", "otel-sidecar:13133"}
    config = yaml.safe_load(config_text)
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert config["exporters"]["otlp/jaeger_archive"]["endpoint"] == "jaeger:4327"
    for service, config_file in (("jaeger", "jaeger/config.yaml"), ("loki", "loki/loki-config.yaml")):
        mounted = [v.split(":")[0] for v in services[service]["volumes"]]
        assert f"./{config_file}" in mounted and (REPO / "deploy" / config_file).exists()
    assert config["exporters"]["loki"]["endpoint"].startswith("http://loki:3100/")
