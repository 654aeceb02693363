"""The configs shipped in config/ are valid, and the sidecar/gateway pair splits the work without overlap."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agent.config.loader import AgentConfig, load_path, load_text
from tests.unit.test_tail_sampling_support import DROPPED_AT_10, Rig, exported_spans, rig, span, spans_request
from tests.unit.test_tail_sampling_support import trace_id_with_randomness as trace_id

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "config"
AGENT_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p.name != "pricing.yaml")


@pytest.mark.parametrize("path", AGENT_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    load_path(path, environ={})


def test_the_sidecar_derives_metrics_and_forwards_while_the_gateway_samples_without_counting_again() -> None:
    sidecar = load_path(CONFIG_DIR / "sidecar-gateway.yaml", environ={})
    gateway = load_path(CONFIG_DIR / "gateway.yaml", environ={})
    assert "spanmetrics" in sidecar.connectors and not gateway.connectors
    assert "tail_sampling" in gateway.processors and "tail_sampling" not in sidecar.processors
    assert sidecar.service.pipelines["traces"].exporters == ["loadbalancing"]
    assert sidecar.service.pipelines["logs"].exporters == ["loadbalancing"]
    assert gateway.receivers["otlp"].config.grpc.endpoint.host == "0.0.0.0"
    resolver = sidecar.exporters["loadbalancing"].config.resolver.dns
    assert resolver.port == gateway.receivers["otlp"].config.grpc.endpoint.port


@pytest.mark.parametrize("path", [CONFIG_DIR / "agent.yaml", CONFIG_DIR / "gateway.yaml", None], ids=str)
def test_every_sampling_config_shipped_keeps_all_development_traces_under_either_key(path: Path | None) -> None:
    config = load_path(path, environ={})
    (rule,) = [r for r in config.processors["tail_sampling"].config.policies.attributes if r.name == "development"]
    assert {rule.key, *rule.also_keys} == {"deployment.environment", "deployment.environment.name"}
    assert (rule.match_on, rule.values, rule.percentage) == ("resource", ["development"], 100.0)


def test_the_compose_config_keeps_all_development_traces_as_the_chart_does() -> None:
    compose = yaml.safe_load((CONFIG_DIR.parent / "deploy/docker-compose.yaml").read_text())
    config = load_text(compose["configs"]["otel-sidecar-config"]["content"].replace("$$", "$"), environ={})
    (rule,) = [r for r in config.processors["tail_sampling"].config.policies.attributes if r.name == "development"]
    assert {rule.key, *rule.also_keys} == {"deployment.environment", "deployment.environment.name"}
    assert (rule.match_on, rule.values, rule.percentage) == ("resource", ["development"], 100.0)


def test_every_listen_address_variable_a_shipped_config_reads_is_one_the_chart_and_the_image_set() -> None:
    repo = CONFIG_DIR.parent
    variable = re.compile(r"\bOTEL_SIDECAR_[A-Z]+_ENDPOINT\b")
    read = set()
    for path in [*AGENT_CONFIGS, repo / "agent" / "default_config.yaml", repo / "helm/otel-sidecar/values.yaml"]:
        read |= set(variable.findall(path.read_text()))
    chart_sets = set(variable.findall((repo / "helm/otel-sidecar/templates/_helpers.tpl").read_text()))
    image_sets = set(variable.findall((repo / "Dockerfile").read_text()))
    assert read and read <= chart_sets and read <= image_sets, (read, chart_sets, image_sets)


@pytest.mark.parametrize("path", [*AGENT_CONFIGS, None], ids=str)
def test_every_shipped_metrics_pipeline_fed_by_a_receiver_is_redacted(path: Path | None) -> None:
    """Applications' own metrics can carry headers or prompts as labels; the scrape serves every label."""
    config = load_path(path, environ={})
    for name, pipeline in config.service.pipelines.items():
        if name.split("/")[0] == "metrics" and "otlp" in pipeline.receivers:
            assert "redaction" in pipeline.processors, name


def pipelines_without_memory_limiter_first(config: AgentConfig) -> list[str]:
    return [
        name
        for name, pipeline in config.service.pipelines.items()
        if any(r in config.receivers for r in pipeline.receivers)
        and (not pipeline.processors or config.processors[pipeline.processors[0]].factory.type != "memory_limiter")
    ]


@pytest.mark.parametrize("path", [*AGENT_CONFIGS, None], ids=str)
def test_every_shipped_pipeline_fed_by_a_receiver_starts_with_the_memory_limiter(path: Path | None) -> None:
    """A sidecar killed for its memory loses every trace it buffered; refusing (retryable) loses nothing."""
    assert pipelines_without_memory_limiter_first(load_path(path, environ={})) == []


def test_the_helm_chart_and_compose_configs_start_their_pipelines_with_the_memory_limiter() -> None:
    repo = CONFIG_DIR.parent
    chart = yaml.safe_load((repo / "helm/otel-sidecar/values.yaml").read_text())["config"]
    compose = yaml.safe_load((repo / "deploy/docker-compose.yaml").read_text())
    compose_config = compose["configs"]["otel-sidecar-config"]["content"].replace("$$", "$")
    for text in (yaml.safe_dump(chart), compose_config):
        assert pipelines_without_memory_limiter_first(load_text(text, environ={})) == []


def test_the_sidecars_exemplars_point_at_traces_the_gateways_keep() -> None:
    sidecar = load_path(CONFIG_DIR / "sidecar-gateway.yaml", environ={})
    gateway = load_path(CONFIG_DIR / "gateway.yaml", environ={})
    exemplars = sidecar.connectors["spanmetrics"].config.exemplars
    policies = gateway.processors["tail_sampling"].config.policies
    assert exemplars.enabled and exemplars.error_spans == policies.errors.enabled
    assert exemplars.sampled_percentage == policies.probabilistic.percentage


SAMPLING_CONFIGS = [CONFIG_DIR / "agent.yaml", CONFIG_DIR / "gateway.yaml", None]


def shipped_sampler(path: Path | None) -> Rig:
    config = load_path(path, environ={})
    return rig(service=config.service, built=config.processors["tail_sampling"].config)


@pytest.mark.parametrize("path", SAMPLING_CONFIGS, ids=str)
def test_a_shipped_sampler_keeps_the_error_at_the_end_of_a_twenty_second_workflow(path: Path | None) -> None:
    """Four 5 s LLM steps, each exported as it ends; the last one fails and the root ends with it. Decided 10 s
    after the first span, the trace was dropped before its error came and the error became a late span."""
    r = shipped_sampler(path)
    workflow = trace_id(DROPPED_AT_10)
    for step in range(3):
        r.traces.consume(spans_request(span(workflow, step + 1, start_ms=5000 * step, duration_ms=5000)))
        r.tick_after(5)
    r.traces.consume(
        spans_request(
            span(workflow, 4, start_ms=15000, duration_ms=5000, error=True),
            span(workflow, 0, root=True, duration_ms=20000),
        )
    )
    r.tick_after(40)
    assert len(exported_spans(r.trace_sink)) == 5


@pytest.mark.parametrize("path", SAMPLING_CONFIGS, ids=str)
def test_a_shipped_sampler_waits_after_the_root_for_a_span_another_process_exports_on_its_own_timer(
    path: Path | None,
) -> None:
    """SDKs export every 5 s: another pod's (behind a gateway) or container's failing child can arrive 5 s after
    the root, which a 2 s grace after the root missed."""
    r = shipped_sampler(path)
    workflow = trace_id(DROPPED_AT_10)
    r.traces.consume(spans_request(span(workflow, 0, root=True, duration_ms=3000)))
    r.tick_after(5)
    r.traces.consume(spans_request(span(workflow, 1, start_ms=1000, duration_ms=1000, error=True)))
    r.tick_after(40)
    assert len(exported_spans(r.trace_sink)) == 2


def every_agent_config_text() -> dict[str, str]:
    """Every config an agent can run with: config/, the packaged default, the chart's and compose's."""
    repo = CONFIG_DIR.parent
    chart = yaml.safe_load((repo / "helm/otel-sidecar/values.yaml").read_text())["config"]
    compose = yaml.safe_load((repo / "deploy/docker-compose.yaml").read_text())
    return {
        **{path.name: path.read_text() for path in AGENT_CONFIGS},
        "packaged default": (repo / "agent/default_config.yaml").read_text(),
        "chart": yaml.safe_dump(chart),
        "compose": compose["configs"]["otel-sidecar-config"]["content"].replace("$$", "$"),
    }


@pytest.mark.parametrize(("name", "text"), every_agent_config_text().items(), ids=every_agent_config_text())
def test_every_config_reads_the_critical_services_and_capture_content_variables_the_readme_lists(
    name: str, text: str
) -> None:
    environ = {"OTEL_SIDECAR_CRITICAL_SERVICES": "[payments, billing]", "OTEL_SIDECAR_CAPTURE_CONTENT": "true"}
    config = load_text(text, environ=environ)
    sampler, redaction = config.processors.get("tail_sampling"), config.processors.get("redaction")
    assert sampler or redaction
    if sampler:
        assert sampler.config.policies.critical_services.services == ["payments", "billing"]
    if redaction:
        assert redaction.config.capture_content is True
