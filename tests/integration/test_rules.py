"""Prometheus alert and recording rules in deploy/prometheus, checked and unit-tested with the real promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO

pytestmark = pytest.mark.integration

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yaml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*_test.yaml"))
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: install the Debian package prometheus (`make prometheus`)"
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(rule for rule in group["rules"] if "alert" in rule)
    return rules


def alert_rule_tests() -> list[dict[str, Any]]:
    checks = []
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            checks.extend(test.get("alert_rule_test", []))
    return checks


def test_promtool_check_rules_passes() -> None:
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


@pytest.mark.parametrize("test_file", [p.name for p in TEST_FILES])
def test_promtool_rule_unit_tests_pass(test_file: str) -> None:
    result = promtool("test", "rules", f"tests/{test_file}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_proven_to_fire_and_to_stay_quiet() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    checks = alert_rule_tests()
    fired = {c["alertname"] for c in checks if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in checks if not c.get("exp_alerts")}
    assert names - fired == set(), "alerts no unit test makes fire"
    assert names - quiet == set(), "alerts no unit test shows staying quiet"
    severities_fired = {(c["alertname"], a["exp_labels"]["severity"]) for c in checks for a in c.get("exp_alerts", [])}
    declared = {(rule["alert"], rule["labels"]["severity"]) for rule in alert_rules()}
    assert declared - severities_fired == set(), "alert severities no unit test makes fire"


def test_the_alerts_the_orchestrator_teams_asked_for_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "OrchestratorWorkflowErrorRateHigh",
        "LLMProviderFailing",
        "WorkflowLatencyP95High",
        "WorkflowLatencyP99High",
        "WorkflowTimeout",
        "LLMCostSpike",
        "LLMCostBudget80Percent",
        "LLMCostBudget95Percent",
        "LLMCostBudgetExhausted",
        "OtelSidecarDown",
        "OtelSidecarRefusingData",
        "OtelSidecarExporterFailing",
        "OtelSidecarSamplingForcedDecisions",
    } <= names


def test_every_alert_has_a_known_severity_a_summary_and_a_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_budgets_are_configured_by_editing_one_recording_rule_each(tmp_path: Path) -> None:
    """Halving the shipped daily budget turns the same $84/day from an 80% warning into an exhausted budget."""
    budgets = (PROMETHEUS_DIR / "rules" / "llm-cost-budgets.yaml").read_text()
    assert budgets.count("vector(100)") == 1
    (tmp_path / "budgets.yaml").write_text(budgets.replace("vector(100)", "vector(50)"))
    (tmp_path / "budgets_test.yaml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["budgets.yaml"],
                "evaluation_interval": "5m",
                "tests": [
                    {
                        "interval": "1h",
                        "input_series": [
                            {"series": 'orchestrator_llm_cost_usd_total{model="gpt-4o"}', "values": "0+3.5x30"}
                        ],
                        "promql_expr_test": [
                            {
                                "expr": 'orchestrator:llm_cost_budget:ratio{window="daily"}',
                                "eval_time": "25h",
                                "exp_samples": [
                                    {"labels": 'orchestrator:llm_cost_budget:ratio{window="daily"}', "value": 1.68}
                                ],
                            }
                        ],
                        "alert_rule_test": [
                            {"eval_time": "25h", "alertname": "LLMCostBudget80Percent", "exp_alerts": []},
                            {
                                "eval_time": "25h",
                                "alertname": "LLMCostBudgetExhausted",
                                "exp_alerts": [
                                    {
                                        "exp_labels": {"severity": "critical", "window": "daily"},
                                        "exp_annotations": {
                                            "summary": "LLM spend is at 168% of the daily budget",
                                            "description": "The daily LLM budget is used up (rolling window).",
                                        },
                                    }
                                ],
                            },
                        ],
                    }
                ],
            }
        )
    )
    result = promtool("test", "rules", "budgets_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_prometheus_config_is_valid_and_loads_the_rules() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout


def test_the_compose_prometheus_keeps_enough_history_for_the_monthly_budget() -> None:
    compose = yaml.safe_load((PROMETHEUS_DIR.parent / "docker-compose.yaml").read_text())
    flags = dict(arg.split("=", 1) for arg in compose["services"]["prometheus"]["command"] if "=" in arg)
    retention = flags.get("--storage.tsdb.retention.time", "15d")  # Prometheus' default
    assert retention.endswith("d") and int(retention[:-1]) > 30, retention


def test_the_kubernetes_scrape_config_keeps_exactly_the_agent_ports(tmp_path: Path) -> None:
    """Relabeling of deploy/prometheus/scrape-kubernetes.yaml, run by promtool on what pod discovery would yield.

    Debian builds Prometheus without Kubernetes discovery, so the job's `kubernetes_sd_configs` is swapped for a
    file with the targets and `__meta_kubernetes_*` labels Kubernetes pod discovery produces (one target per
    container port, init containers included) for an orchestrator pod rendered by the chart; the relabel rules
    are the file's own.
    """
    config = yaml.safe_load((PROMETHEUS_DIR / "scrape-kubernetes.yaml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "otel-sidecar"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    del job["kubernetes_sd_configs"]
    job["file_sd_configs"] = [{"files": [str(tmp_path / "pods.json")]}]
    config["rule_files"] = [str(PROMETHEUS_DIR / "rules" / "*.yaml")]

    def target(pod: str, ip: str, container: str, port: str, number: int, init: bool, phase: str = "Running") -> Any:
        return {
            "targets": [f"{ip}:{number}"],
            "labels": {
                "__meta_kubernetes_namespace": "llm",
                "__meta_kubernetes_pod_name": pod,
                "__meta_kubernetes_pod_phase": phase,
                "__meta_kubernetes_pod_container_name": container,
                "__meta_kubernetes_pod_container_init": str(init).lower(),
                "__meta_kubernetes_pod_container_port_name": port,
                "__meta_kubernetes_pod_container_port_number": str(number),
                "__meta_kubernetes_pod_label_app_kubernetes_io_component": "sidecar",
            },
        }

    pods = [
        target("orchestrator-1", "10.0.0.5", "otel-sidecar", "otlp", 4317, init=True),
        target("orchestrator-1", "10.0.0.5", "otel-sidecar", "metrics", 9464, init=True),
        target("orchestrator-1", "10.0.0.5", "otel-sidecar", "admin", 13133, init=True),
        target("orchestrator-1", "10.0.0.5", "orchestrator", "http", 8080, init=False),
        target("orchestrator-0", "10.0.0.4", "otel-sidecar", "metrics", 9464, init=True, phase="Succeeded"),
    ]
    (tmp_path / "pods.json").write_text(json.dumps(pods))
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", str(config_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    discovered = promtool("check", "service-discovery", str(config_path), "otel-sidecar", "--timeout=5s")
    assert discovered.returncode == 0, discovered.stderr
    kept = [t["labels"] for t in json.loads(discovered.stdout) if t["labels"]]
    assert sorted((t["instance"], t["endpoint"]) for t in kept) == [
        ("10.0.0.5:13133", "admin"),
        ("10.0.0.5:9464", "metrics"),
    ]
    for labels in kept:
        assert labels["job"] == "otel-sidecar"
        assert (labels["namespace"], labels["pod"], labels["mode"]) == ("llm", "orchestrator-1", "sidecar")
