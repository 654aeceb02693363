"""The Helm chart, checked with the real Helm library (helm-sdkpy, in the Python 3.12 tool venv).

`helm lint --strict` semantics for the default values and every ``ci/*.yaml``; what Helm renders for each mode;
and the agent config Helm renders into the ConfigMap, validated by the agent itself.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO
from tests.integration.test_rules import alert_rules
from tests.tools.fake_kube_api import FakeKubeApi
from tests.tools.helm_venv import ensure_helm_venv

pytestmark = pytest.mark.integration

CHART = REPO / "helm" / "otel-sidecar"
HELM_TOOL = REPO / "tests" / "tools" / "helm_lint.py"
HELM_INSTALL = REPO / "tests" / "tools" / "helm_install.py"
CI_CASES = sorted(p.name for p in (CHART / "ci").glob("*.yaml"))
ALL_CASES = ["values.yaml", *CI_CASES]
RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
BUDGET_RECORD = "orchestrator:llm_cost_budget_usd"


@pytest.fixture(scope="session")
def helm_python() -> Path:
    return ensure_helm_venv()


def run_helm_tool(helm_python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_python), str(HELM_TOOL), *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def lint_results(helm_python: Path) -> dict[str, dict[str, Any]]:
    result = run_helm_tool(helm_python, str(CHART), "--json")
    return {case["case"]: case for case in json.loads(result.stdout)}


@pytest.fixture(scope="module")
def rendered(helm_python: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """case -> template file -> the Kubernetes objects Helm rendered from it."""
    result = run_helm_tool(helm_python, str(CHART), "--render")
    assert result.returncode == 0, result.stderr
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for case in json.loads(result.stdout):
        assert case["fails"] == [], f"{case['case']}: templates called fail: {case['fails']}"
        out[case["case"]] = {
            name: [doc for doc in yaml.safe_load_all(text) if doc] for name, text in case["manifests"].items()
        }
    return out


def objects(rendered_case: dict[str, list[dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [obj for docs in rendered_case.values() for obj in docs if obj.get("kind") == kind]


def the_workload(rendered_case: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    found = objects(rendered_case, "Deployment") + objects(rendered_case, "StatefulSet")
    assert len(found) == 1, f"expected one Deployment/StatefulSet, got {[o['kind'] for o in found]}"
    return found[0]


def agent_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    agents = [c for c in pod_spec.get("initContainers", []) + pod_spec["containers"] if c["name"] == "otel-sidecar"]
    assert len(agents) == 1
    return agents[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


@pytest.mark.parametrize("case", ALL_CASES)
def test_the_chart_lints_without_warnings_or_errors(lint_results: dict[str, dict[str, Any]], case: str) -> None:
    result = lint_results[case]
    assert result["ok"], f"helm lint with {case}: {result['messages']} {result['fail_messages']}"
    assert all(m["severity"] < 2 for m in result["messages"])


# prometheus-operator's resources: not in the Kubernetes API schemas (their fields are tested one by one below).
CUSTOM_RESOURCES = {"PrometheusRule", "PodMonitor", "ServiceMonitor"}


@pytest.mark.parametrize("case", ALL_CASES)
def test_every_object_the_chart_renders_is_valid_for_the_kubernetes_api(rendered: Any, case: str) -> None:
    """Strict validation against the API's OpenAPI schemas (unknown fields are errors, as `kubectl apply
    --validate=strict` has them): of 1.29, the oldest a native sidecar runs on, and of the newest release the
    installed kubernetes-validate knows. No cluster can run here; a field misspelt would otherwise show only
    when someone applies the chart."""
    import jsonschema
    import kubernetes_validate

    versions = ("1.29.0", kubernetes_validate.latest_version())
    built_in = [obj for docs in rendered[case].values() for obj in docs if obj["kind"] not in CUSTOM_RESOURCES]
    assert built_in, f"{case} rendered no Kubernetes object"
    problems = []
    for obj in built_in:
        for version in versions:
            try:
                kubernetes_validate.validate(copy.deepcopy(obj), version, strict=True)
            except jsonschema.ValidationError as exc:  # kubernetes_validate's own derives from it
                where = ".".join(map(str, exc.absolute_path))
                problems.append(f"{obj['kind']} {obj['metadata']['name']}: {where}: {exc.message} ({version})")
    assert problems == []


def test_there_is_a_ci_values_file_for_each_mode() -> None:
    modes = {(yaml.safe_load((CHART / "ci" / name).read_text())["mode"]) for name in CI_CASES}
    natives = {yaml.safe_load((CHART / "ci" / name).read_text()).get("sidecar", {}).get("native") for name in CI_CASES}
    assert modes == {"sidecar", "gateway"}
    assert {True, False} <= natives


def test_lint_fails_on_values_the_schema_rejects(helm_python: Path, tmp_path: Path) -> None:
    bad_values: list[dict[str, Any]] = [
        {"mode": "daemonset"},
        {"sidecar": {"native": "yes"}},
        {"sidecar": {"nativ": True}},  # misspelt: the native sidecar would silently stay the default
        {"replicaCount": 3},
        {"ports": {"otlp": None}},
        # The agent config's shape (agent/config/jsonschema.py): a misspelt key, an unknown component type.
        {"config": {"receivers": {"otlp": {"grpc": {"endpiont": "127.0.0.1:4317"}}}}},
        {"config": {"exporters": {"jaegr": {"endpoint": "jaeger:4317"}}}},
    ]
    for bad in bad_values:
        values = tmp_path / "bad.yaml"
        values.write_text(yaml.safe_dump(bad))
        result = run_helm_tool(helm_python, str(CHART), "--values", str(values), "--json")
        assert result.returncode == 1, bad
        (case,) = json.loads(result.stdout)
        assert {"severity": 3, "level": "error", "path": "values.yaml"} in case["messages"], bad


def test_lint_fails_on_a_template_that_renders_invalid_yaml(helm_python: Path, tmp_path: Path) -> None:
    chart = tmp_path / "otel-sidecar"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "broken.yaml").write_text("kind: ConfigMap\n  metadata: {{ .Values.mode }}\n")
    result = run_helm_tool(helm_python, str(chart), "--json")
    assert result.returncode == 1
    assert all(
        {"severity": 3, "level": "error", "path": "templates/broken.yaml"} in case["messages"]
        for case in json.loads(result.stdout)
    )


def test_default_values_render_only_the_config_for_injecting_into_your_own_manifests(rendered: Any) -> None:
    case = rendered["values.yaml"]
    kinds = sorted(obj["kind"] for docs in case.values() for obj in docs)
    assert kinds == ["ConfigMap", "ServiceAccount"]


GUARD = "sidecar.native needs Kubernetes 1.29+"
APP = {"workload": {"containers": [{"name": "orchestrator", "image": "orchestrator:1"}]}}


def helm_install(
    helm_python: Path, tmp_path: Path, values: dict[str, Any], kube_version: str = "1.30", chart: Path = CHART
) -> tuple[dict[str, Any], list[str]]:
    """``helm install`` of ``chart`` with ``values`` against a stand-in API server of ``kube_version``
    (``tests/tools/fake_kube_api.py``: no cluster runs here): Helm's outcome, which must be a failure, and the
    requests the server saw."""
    with FakeKubeApi(kube_version) as api:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(api.kubeconfig())
        result = subprocess.run(
            [str(helm_python), str(HELM_INSTALL), str(chart), str(kubeconfig), json.dumps(values)],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
    outcome = json.loads(result.stdout)
    assert not outcome["ok"]
    return outcome, api.requests


@pytest.mark.parametrize(
    ("kube_version", "native", "guarded"),
    [("1.28", True, True), ("1.29", True, False), ("1.28", False, False)],
)
def test_a_native_sidecar_is_refused_on_clusters_older_than_1_29(
    helm_python: Path, tmp_path: Path, kube_version: str, native: bool, guarded: bool
) -> None:
    """``helm install`` against a stand-in API server of the given version (``tests/tools/fake_kube_api.py``: no
    cluster runs here). Below 1.29 a native sidecar fails with the chart's message before anything is written;
    otherwise rendering passes and Helm fails only later, at the stand-in's missing ``apps/v1``."""
    outcome, requests = helm_install(helm_python, tmp_path, {**APP, "sidecar": {"native": native}}, kube_version)
    assert "GET /version" in requests  # the version came from the server
    if guarded:
        assert f"{GUARD} and this cluster is v{kube_version}.0: set sidecar.native=false" in outcome["error"]
    else:
        assert GUARD not in outcome["error"]
        assert "no matches for kind" in outcome["error"]  # rendered, then stopped at building the objects
    assert not [r for r in requests if not r.startswith("GET ")]  # nothing was written


def test_native_sidecar_is_the_first_init_container_with_restart_policy_always(rendered: Any) -> None:
    workload = the_workload(rendered["sidecar.yaml"])
    pod = workload["spec"]["template"]["spec"]
    first = pod["initContainers"][0]
    assert first["name"] == "otel-sidecar"
    assert first["restartPolicy"] == "Always"
    assert first["startupProbe"]["httpGet"] == {"path": "/health/ready", "port": "admin"}
    assert [c["name"] for c in pod["initContainers"][1:]] == ["migrate"]
    assert [c["name"] for c in pod["containers"]] == ["orchestrator"]
    assert workload["metadata"]["name"] == "orchestrator"
    assert workload["spec"]["replicas"] == 2


def test_orchestrator_containers_get_the_otlp_endpoint_and_keep_their_own_env(rendered: Any) -> None:
    pod = the_workload(rendered["sidecar.yaml"])["spec"]["template"]["spec"]
    (orchestrator,) = pod["containers"]
    names = [e["name"] for e in orchestrator["env"]]
    assert names == ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SERVICE_NAME"]
    assert env_of(orchestrator)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"
    agent_env = env_of(agent_container(pod))
    assert agent_env["OTEL_SIDECAR_GRPC_ENDPOINT"] == "127.0.0.1:4317"
    assert agent_env["OTEL_SIDECAR_HTTP_ENDPOINT"] == "127.0.0.1:4318"


def test_non_native_sidecar_is_a_regular_container_with_a_claim_per_pod(rendered: Any) -> None:
    workload = the_workload(rendered["sidecar-non-native.yaml"])
    assert workload["kind"] == "StatefulSet"
    pod = workload["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert [c["name"] for c in pod["containers"]] == ["orchestrator", "otel-sidecar"]
    assert "restartPolicy" not in pod["containers"][1]
    (claim,) = workload["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "otel-sidecar-data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "4Gi"
    assert "otel-sidecar-data" not in [v["name"] for v in pod["volumes"]]
    assert pod["terminationGracePeriodSeconds"] == 60


def test_gateway_is_a_statefulset_of_agents_behind_a_headless_service(rendered: Any) -> None:
    case = rendered["gateway.yaml"]
    workload = the_workload(case)
    (service,) = objects(case, "Service")
    pod = workload["spec"]["template"]["spec"]
    assert workload["kind"] == "StatefulSet"
    assert workload["spec"]["replicas"] == 3
    assert service["spec"]["clusterIP"] == "None"
    assert workload["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "otlp": 4317,
        "otlp-http": 4318,
        "metrics": 9464,
        "admin": 13133,
    }
    # A service mesh or gateway in front takes the protocol from appProtocol: OTLP/gRPC needs HTTP/2.
    assert {p["name"]: p.get("appProtocol") for p in service["spec"]["ports"]} == {
        "otlp": "grpc",
        "otlp-http": "http",
        "metrics": "http",
        "admin": "http",
    }
    assert [c["name"] for c in pod["containers"]] == ["otel-sidecar"]
    # The zone spread counts this release's agents, whatever the release is called (the render's is test-release).
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    for spread in pod["topologySpreadConstraints"]:
        assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()
        assert set(spread.get("matchLabelKeys", [])) <= pod_labels.keys()
    agent_env = env_of(agent_container(pod))
    assert agent_env["OTEL_SIDECAR_GRPC_ENDPOINT"] == "0.0.0.0:4317"
    assert agent_env["OTEL_SIDECAR_HTTP_ENDPOINT"] == "0.0.0.0:4318"
    (monitor,) = objects(case, "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics", "admin"]
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}  # both serve their metrics there
    # This release's Service only: not the Services of other gateway releases in the namespace.
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    # Applications' own metrics keep their job and instance (target_info joins on them), not exported_job.
    assert [e.get("honorLabels", False) for e in monitor["spec"]["endpoints"]] == [True, False]
    # The Prometheus Operator names the job after the Service's jobLabel label, else after the Service
    # (otel-gateway-headless here), which the agent-down alert's job=~".*otel-sidecar.*" would not match.
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    (down,) = [rule for rule in alert_rules() if rule["alert"] == "OtelSidecarDown"]
    assert re.fullmatch(r".*otel-sidecar.*", job) and 'job=~".*otel-sidecar.*"' in down["expr"]


@pytest.mark.parametrize("case", CI_CASES)
def test_agent_container_is_hardened_probed_and_has_writable_volumes(rendered: Any, case: str) -> None:
    workload = the_workload(rendered[case])
    pod = workload["spec"]["template"]["spec"]
    agent = agent_container(pod)
    security = agent["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}  # the "restricted" Pod Security Standard
    # A claim's volume (owned by root) is made writable by the agent's group: its queue directory goes there.
    assert pod["securityContext"]["fsGroup"] == security["runAsGroup"]
    # The agent never calls the Kubernetes API: no token in its pods (nor in a container sharing them).
    assert pod["automountServiceAccountToken"] is False
    assert all(
        account["automountServiceAccountToken"] is False for account in objects(rendered[case], "ServiceAccount")
    )
    assert agent["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "admin"}
    assert agent["startupProbe"]["httpGet"] == {"path": "/health/ready", "port": "admin"}
    if case.startswith("gateway"):  # not ready while reloading: out of the headless Service, which is right
        assert agent["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "admin"}
    else:  # beside the orchestrator, the agent's readiness would be the pod's: a reload would take it out of Services
        assert "readinessProbe" not in agent
    assert {p["name"]: p["containerPort"] for p in agent["ports"]} == {
        "otlp": 4317,
        "otlp-http": 4318,
        "metrics": 9464,
        "admin": 13133,
    }
    assert agent["args"] == ["run", "--config", "/etc/otel-sidecar/config.yaml"]
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    assert mounts["/var/lib/otel-sidecar"] == "otel-sidecar-data"
    assert mounts["/tmp"] == "otel-sidecar-tmp"
    volumes = {v["name"] for v in pod["volumes"]} | {
        c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])
    }
    assert set(mounts.values()) <= volumes
    if not workload["spec"].get("volumeClaimTemplates"):  # an emptyDir queue may not fill the node's disk
        (data,) = [v for v in pod["volumes"] if v["name"] == "otel-sidecar-data"]
        limit = yaml.safe_load((CHART / "values.yaml").read_text())["persistence"]["emptyDirSizeLimit"]
        assert data.get("emptyDir", {"sizeLimit": limit}) == {"sizeLimit": limit}
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    if objects(rendered[case], "PodMonitor") or objects(rendered[case], "ServiceMonitor"):
        assert not [key for key in annotations if key.startswith("prometheus.io/")]  # scraped once, by the monitor
    else:
        assert annotations["prometheus.io/port"] == str(
            next(p["containerPort"] for p in agent["ports"] if p["name"] == "metrics")
        )  # derived from ports.metrics.containerPort
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])


def validated_agent_config(rendered_case: dict[str, list[dict[str, Any]]], tmp_path: Path) -> dict[str, Any]:
    """The rendered ConfigMap's agent config, after `otel-sidecar validate` accepted it with the environment the
    chart gives the agent; returns the effective config `print-config` shows."""
    (config_map,) = objects(rendered_case, "ConfigMap")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config_map["data"]["config.yaml"])
    env = {"PATH": "/usr/bin:/bin"}
    workloads = objects(rendered_case, "Deployment") + objects(rendered_case, "StatefulSet")
    for workload in workloads:  # the endpoints the chart sets in the agent's environment
        env.update(env_of(agent_container(workload["spec"]["template"]["spec"])))
    result = subprocess.run(
        [sys.executable, "-m", "agent", "validate", "--config", str(config_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = subprocess.run(
        [sys.executable, "-m", "agent", "print-config", "--config", str(config_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=True,
    )
    effective: dict[str, Any] = yaml.safe_load(printed.stdout)
    return effective


@pytest.mark.parametrize("case", ALL_CASES)
def test_the_rendered_agent_config_passes_otel_sidecar_validate(rendered: Any, case: str, tmp_path: Path) -> None:
    effective = validated_agent_config(rendered[case], tmp_path)
    mode = yaml.safe_load((CHART / "ci" / case).read_text())["mode"] if case in CI_CASES else "sidecar"
    host = "0.0.0.0" if mode == "gateway" else "127.0.0.1"
    assert str(effective["receivers"]["otlp"]["grpc"]["endpoint"]) == f"{host}:4317"
    assert str(effective["service"]["telemetry"]["admin"]["endpoint"]) == "0.0.0.0:13133"


def test_the_docs_values_example_renders_a_workload_whose_agent_sends_where_it_says(
    helm_python: Path, tmp_path: Path
) -> None:
    """docs/kubernetes.md's `my-values.yaml`, as an operator copies it: it lints, renders the orchestrator with
    the agent beside it, and the agent's config is valid and names the example's three backends."""
    text = (REPO / "docs" / "kubernetes.md").read_text()
    example = text.split("```yaml\n# my-values.yaml\n", 1)[1].split("```", 1)[0]
    values = tmp_path / "my-values.yaml"
    values.write_text(example)
    linted = run_helm_tool(helm_python, str(CHART), "--values", str(values), "--json")
    assert linted.returncode == 0, linted.stdout + linted.stderr
    result = run_helm_tool(helm_python, str(CHART), "--render", "--values", str(values))
    assert result.returncode == 0, result.stderr
    (case,) = json.loads(result.stdout)
    assert case["fails"] == []
    manifests = {name: [doc for doc in yaml.safe_load_all(body) if doc] for name, body in case["manifests"].items()}
    workload = the_workload(manifests)
    assert workload["spec"]["replicas"] == 2
    assert workload["spec"]["template"]["metadata"]["labels"]["app"] == "orchestrator"  # for its own Service
    pod = workload["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["orchestrator"]
    assert agent_container(pod)["image"].startswith("registry.example.com/otel-sidecar:")
    exporters = validated_agent_config(manifests, tmp_path)["exporters"]
    assert exporters["otlp/jaeger"]["endpoint"] == "jaeger-collector.observability.svc:4317"
    assert exporters["otlp/jaeger_archive"]["endpoint"] == "jaeger-archive-collector.observability.svc:4317"
    assert exporters["loki"]["endpoint"] == "http://loki-gateway.observability.svc/loki/api/v1/push"


def parent_chart(tmp_path: Path) -> Path:
    """A chart depending on otel-sidecar whose Deployment is the docs' exact parent-chart example."""
    parent = tmp_path / "my-orchestrator"
    (parent / "templates").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "otel-sidecar")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: my-orchestrator\nversion: 1.0.0\n"
        "dependencies:\n  - {name: otel-sidecar, version: 0.1.0, repository: 'file://../otel-sidecar'}\n"
    )
    (parent / "values.yaml").write_text("otel-sidecar:\n  sidecar: {native: true}\n")
    snippet = (REPO / "docs" / "kubernetes.md").read_text().split("<!-- parent-chart-example -->")[1]
    template = snippet.split("```yaml\n", 1)[1].split("```", 1)[0]
    (parent / "templates" / "deployment.yaml").write_text(template)
    return parent


def parent_pod_template(helm_python: Path, parent: Path, values: Path | None = None) -> dict[str, Any]:
    result = run_helm_tool(helm_python, str(parent), "--render", *(["--values", str(values)] if values else []))
    (case,) = json.loads(result.stdout)
    (deployment,) = yaml.safe_load_all(case["manifests"]["deployment.yaml"])
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


def test_a_parent_chart_injects_the_agent_with_the_named_templates(helm_python: Path, tmp_path: Path) -> None:
    parent = parent_chart(tmp_path)
    lint = run_helm_tool(helm_python, str(parent), "--json")
    assert lint.returncode == 0, lint.stdout
    pod = parent_pod_template(helm_python, parent)["spec"]
    assert pod["initContainers"][0]["name"] == "otel-sidecar"
    assert pod["initContainers"][0]["restartPolicy"] == "Always"
    assert {"otel-sidecar-config", "otel-sidecar-data", "otel-sidecar-tmp"} <= {v["name"] for v in pod["volumes"]}


def test_a_parent_chart_rolls_its_pods_when_the_agent_config_changes(helm_python: Path, tmp_path: Path) -> None:
    """The agent reads its config only at start and on SIGHUP: a changed ConfigMap must change the pod template."""
    parent = parent_chart(tmp_path)
    debug = tmp_path / "debug.yaml"
    debug.write_text("otel-sidecar:\n  config: {service: {telemetry: {logs: {level: debug}}}}\n")
    same = tmp_path / "same.yaml"
    same.write_text("otel-sidecar:\n  image: {tag: '9.9.9'}\n")
    checksums = [
        parent_pod_template(helm_python, parent, values)["metadata"]["annotations"]["checksum/otel-sidecar-config"]
        for values in (None, debug, same)
    ]
    assert all(len(c) == 64 for c in checksums)
    assert checksums[0] != checksums[1] and checksums[0] == checksums[2]


def test_a_parent_chart_injecting_a_native_sidecar_is_refused_on_clusters_older_than_1_29(
    helm_python: Path, tmp_path: Path
) -> None:
    outcome, requests = helm_install(helm_python, tmp_path, {}, "1.28", parent_chart(tmp_path))
    assert f"{GUARD} and this cluster is v1.28.0: set sidecar.native=false" in outcome["error"]
    assert not [r for r in requests if not r.startswith("GET ")]  # nothing was written


def test_the_agents_memory_limit_is_the_default_the_docs_give() -> None:
    """docs/kubernetes.md: the memory limiter's percentages are of this limit, and 64 senders of 2.5 MB requests
    fitted at 512Mi, not at 256Mi."""
    (documented,) = re.findall(
        r"`resources.limits.memory` \((\w+) by default\)", (REPO / "docs" / "kubernetes.md").read_text()
    )
    assert documented == "512Mi"
    assert yaml.safe_load((CHART / "values.yaml").read_text())["resources"]["limits"]["memory"] == documented


def test_every_value_is_documented() -> None:
    """Every value in values.yaml has a `# --` comment (the helm-docs convention) above it.

    Groups of settings (`image:`, `ports.otlp:`) are documented through their keys; the children of a documented
    value (a probe, resources, a security context) belong to it; the agent `config` is documented in
    docs/configuration.md.
    """
    assert undocumented_values((CHART / "values.yaml").read_text()) == []


def undocumented_values(text: str) -> list[str]:
    lines = text.splitlines()
    stack: list[tuple[int, str, bool]] = []  # (depth, key, documented) of the enclosing keys
    missing = []
    for index, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z0-9_.\-/]+):(.*)$", line)
        if not match:
            continue
        depth, key, rest = len(match.group(1)) // 2, match.group(2), match.group(3).split(" #")[0].strip()
        while stack and stack[-1][0] >= depth:
            stack.pop()
        documented = "# --" in "\n".join(_comment_block_above(lines, index))
        covered = any(doc for _, _, doc in stack) or (stack and stack[0][1] == "config")
        is_group = not rest and _next_line_is_a_deeper_key(lines, index, depth)
        if not covered and not documented and not is_group:
            missing.append(".".join([k for _, k, _ in stack] + [key]))
        stack.append((depth, key, documented))
    return missing


def _comment_block_above(lines: list[str], index: int) -> list[str]:
    block = []
    for line in reversed(lines[:index]):
        if not line.strip().startswith("#"):
            break
        block.append(line.strip())
    return block


def _next_line_is_a_deeper_key(lines: list[str], index: int, depth: int) -> bool:
    for line in lines[index + 1 :]:
        if not line.strip() or line.strip().startswith("#"):
            continue
        match = re.match(r"^( *)[A-Za-z0-9_.\-/]+:", line)
        return bool(match) and len(match.group(1)) // 2 > depth
    return False


def test_the_documentation_check_finds_an_undocumented_value() -> None:
    text = "# -- documented\na: 1\nimage:\n  # -- the tag\n  tag: x\n  pullPolicy: Always\n"
    assert undocumented_values(text) == ["image.pullPolicy"]


def test_the_image_runs_as_non_root_with_the_config_path_and_ports_the_chart_uses() -> None:
    """docker cannot run here; check the Dockerfile against what the chart expects of the image."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    assert re.search(r"^EXPOSE 4317 4318 9464 13133$", dockerfile, re.M)
    assert 'ENTRYPOINT ["otel-sidecar"]' in dockerfile
    assert 'CMD ["run", "--config", "/etc/otel-sidecar/config.yaml"]' in dockerfile
    assert "chown 10001:10001 /var/lib/otel-sidecar" in dockerfile
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["securityContext"]["runAsUser"] == 10001
    assert {p["containerPort"] for p in values["ports"].values()} == {4317, 4318, 9464, 13133}
    for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        assert (REPO / source).exists(), source
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".tools", ".git", "tests"} <= set(ignored)
    assert "agent" not in ignored


def test_sidecars_forward_to_the_gateway_tier_the_gateway_values_render(rendered: Any) -> None:
    """ci/sidecar-to-gateway.yaml and ci/gateway.yaml work together: DNS name, port, and no work done twice."""
    (gateway_service,) = objects(rendered["gateway.yaml"], "Service")
    gateway_config = yaml.safe_load(objects(rendered["gateway.yaml"], "ConfigMap")[0]["data"]["config.yaml"])
    sidecar_config = yaml.safe_load(objects(rendered["sidecar-to-gateway.yaml"], "ConfigMap")[0]["data"]["config.yaml"])
    dns = sidecar_config["exporters"]["loadbalancing"]["resolver"]["dns"]
    namespace = "observability"  # where ci/gateway.yaml says to install the gateway
    assert dns["hostname"] == f"{gateway_service['metadata']['name']}.{namespace}.svc.cluster.local"
    gateway_pod = the_workload(rendered["gateway.yaml"])["spec"]["template"]["spec"]
    assert dns["port"] == {p["name"]: p["containerPort"] for p in agent_container(gateway_pod)["ports"]}["otlp"]
    # Span metrics are derived once (in the sidecar), sampling is decided once (in the gateway).
    assert "spanmetrics" in sidecar_config["connectors"] and "spanmetrics" not in gateway_config.get("connectors", {})
    assert "tail_sampling" not in sidecar_config.get("processors", {})
    assert "tail_sampling" in gateway_config["service"]["pipelines"]["traces"]["processors"]
    assert sidecar_config["service"]["pipelines"]["traces"]["exporters"] == ["loadbalancing"]
    # Redacted in the sidecar, before anything leaves the pod; and again in the gateway, whose port the cluster
    # reaches (a sender skipping the sidecars), as config/gateway.yaml does.
    for config in (sidecar_config, gateway_config):
        for pipeline in config["service"]["pipelines"].values():
            if "spanmetrics" not in pipeline["exporters"] and "spanmetrics" not in pipeline["receivers"]:
                assert "redaction" in pipeline["processors"], pipeline


def test_the_mtls_gateway_reads_its_certificates_from_the_secret_it_mounts(rendered: Any) -> None:
    """ci/gateway-mtls.yaml: both receivers (no plain-text way around mutual TLS) read the files of the mounted
    Secret."""
    case = rendered["gateway-mtls.yaml"]
    config = yaml.safe_load(objects(case, "ConfigMap")[0]["data"]["config.yaml"])
    pod = the_workload(case)["spec"]["template"]["spec"]
    (mount,) = [m for m in agent_container(pod)["volumeMounts"] if m["name"] == "tls"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "otel-gateway-tls" and mount["readOnly"]
    for protocol in ("grpc", "http"):
        tls = config["receivers"]["otlp"][protocol]["tls"]
        assert set(tls) == {"cert_file", "key_file", "client_ca_file"}
        assert all(path.startswith(mount["mountPath"] + "/") for path in tls.values())


def test_the_prometheus_rule_is_deploy_rules_with_the_budgets_from_values(rendered: Any, tmp_path: Path) -> None:
    """ci/gateway.yaml renders a PrometheusRule: the groups of deploy/prometheus/rules, budgets $250/day and
    $5000/month; promtool accepts it and the alert unit tests pass against it."""
    (rule,) = objects(rendered["gateway.yaml"], "PrometheusRule")
    groups = rule["spec"]["groups"]
    budgets = {r["labels"]["window"]: r["expr"] for g in groups for r in g["rules"] if r.get("record") == BUDGET_RECORD}
    assert budgets == {"daily": "vector(250)", "monthly": "vector(5000)"}
    shipped = [g for path in sorted(RULES_DIR.glob("*.yaml")) for g in yaml.safe_load(path.read_text())["groups"]]
    for group in shipped:
        for r in group["rules"]:
            if r.get("record") == BUDGET_RECORD:
                r["expr"] = budgets[r["labels"]["window"]]
    assert sorted(groups, key=lambda g: g["name"]) == sorted(shipped, key=lambda g: g["name"])
    (tmp_path / "rendered.yaml").write_text(yaml.safe_dump({"groups": groups}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install the Debian package prometheus"
    checked = subprocess.run(
        [promtool, "check", "rules", "rendered.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts_test = yaml.safe_load((RULES_DIR.parent / "tests" / "otel-sidecar-alerts_test.yaml").read_text())
    alerts_test["rule_files"] = ["rendered.yaml"]
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(alerts_test))
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def lint_failures(helm_python: Path, tmp_path: Path, values: dict[str, Any]) -> list[str]:
    """The chart's own ``fail`` messages, and a line per lint error (the values schema refusing a value)."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = run_helm_tool(helm_python, str(CHART), "--values", str(path), "--json")
    (case,) = json.loads(result.stdout)
    errors = [f"lint error in {m['path']}" for m in case["messages"] if m["level"] == "error"]
    failures = [*case["fail_messages"], *errors]
    assert (result.returncode == 0) == (not failures), result.stderr
    return failures


@pytest.mark.parametrize(
    "persistence",
    [
        {"enabled": True},  # a Deployment: one claim
        {"enabled": True, "accessModes": ["ReadWriteMany"]},  # shared, but each agent locks its queue directory
        {"enabled": True, "existingClaim": "queues"},  # one claim, even for a StatefulSet
    ],
)
def test_replicas_sharing_one_claim_fail_with_a_clear_message(
    helm_python: Path, tmp_path: Path, persistence: dict[str, Any]
) -> None:
    for kind in ("Deployment", "StatefulSet"):
        gateway = {"kind": kind, "replicas": 3}
        failures = lint_failures(
            helm_python, tmp_path, {"mode": "gateway", "gateway": gateway, "persistence": persistence}
        )
        shared = kind == "Deployment" or "existingClaim" in persistence
        assert any("3 replicas cannot share one claim" in f for f in failures) == shared, (kind, failures)
    two = {"mode": "gateway", "gateway": {"kind": "Deployment", "replicas": 2}, "persistence": persistence}
    assert any("2 replicas cannot share one claim" in f for f in lint_failures(helm_python, tmp_path, two))
    one = {"mode": "gateway", "gateway": {"kind": "Deployment", "replicas": 1}, "persistence": persistence}
    assert lint_failures(helm_python, tmp_path, one) == []
    autoscaled = {"mode": "gateway", "gateway": {"kind": "Deployment", "replicas": None}, "persistence": persistence}
    failures = lint_failures(helm_python, tmp_path, autoscaled)  # an autoscaler may run more than one
    assert any("replicas left to an autoscaler cannot share one claim" in f for f in failures), failures


def test_replicas_can_be_left_to_an_autoscaler(helm_python: Path, tmp_path: Path) -> None:
    """Rendered, `replicas` would be reset at every `helm upgrade`, fighting a HorizontalPodAutoscaler."""
    gateway = the_workload(render_with(helm_python, tmp_path, {"mode": "gateway", "gateway": {"replicas": None}}))
    assert "replicas" not in gateway["spec"]
    sidecar = sidecar_workload_with(helm_python, tmp_path, workload={**APP["workload"], "replicas": None})
    assert "replicas" not in sidecar["spec"]
    assert the_workload(render_with(helm_python, tmp_path, {"mode": "gateway"}))["spec"]["replicas"] == 2


def test_the_gateway_statefulsets_pod_management_policy_is_a_value(helm_python: Path, tmp_path: Path) -> None:
    values = {"mode": "gateway", "gateway": {"kind": "StatefulSet", "podManagementPolicy": "Parallel"}}
    assert the_workload(render_with(helm_python, tmp_path, values))["spec"]["podManagementPolicy"] == "Parallel"
    values["gateway"]["podManagementPolicy"] = ""
    assert "podManagementPolicy" not in the_workload(render_with(helm_python, tmp_path, values))["spec"]
    values["gateway"] = {"kind": "Deployment", "podManagementPolicy": "Parallel"}  # a StatefulSet field only
    assert "podManagementPolicy" not in the_workload(render_with(helm_python, tmp_path, values))["spec"]
    assert lint_failures(helm_python, tmp_path, {"gateway": {"podManagementPolicy": "Ordered"}})
    # A gateway setting: the orchestrator's own StatefulSet (sidecar mode) keeps its default.
    sidecar = yaml.safe_load((CHART / "ci" / "sidecar-non-native.yaml").read_text())
    orchestrator = the_workload(
        render_with(helm_python, tmp_path, {**sidecar, "gateway": {"podManagementPolicy": "Parallel"}})
    )
    assert orchestrator["kind"] == "StatefulSet" and "podManagementPolicy" not in orchestrator["spec"]


def test_settings_that_render_but_cannot_work_are_refused(helm_python: Path, tmp_path: Path) -> None:
    gateway = {"mode": "gateway"}
    assert any(
        "ports.admin.enabled" in f
        for f in lint_failures(helm_python, tmp_path, {**gateway, "ports": {"admin": {"enabled": False}}})
    )
    assert lint_failures(helm_python, tmp_path, {**gateway, "image": {"tag": 1.10}})  # YAML reads 1.1: quote it
    tcp = {"tcpSocket": {"port": "admin"}}
    assert lint_failures(helm_python, tmp_path, {**gateway, "livenessProbe": tcp})  # merged with httpGet: two handlers
    assert (
        lint_failures(helm_python, tmp_path, {**gateway, "serviceMonitor": {"enabled": True, "interval": "1m30s"}})
        == []
    )


def test_long_release_names_still_give_valid_names(helm_python: Path, tmp_path: Path) -> None:
    values = tmp_path / "gateway.yaml"
    values.write_text(
        yaml.safe_dump({"mode": "gateway", "gateway": {"kind": "StatefulSet"}, "fullnameOverride": "g" * 63})
    )
    result = run_helm_tool(helm_python, str(CHART), "--values", str(values), "--render")
    assert result.returncode == 0, result.stderr
    (case,) = json.loads(result.stdout)
    rendered = {name: [d for d in yaml.safe_load_all(text) if d] for name, text in case["manifests"].items()}
    workload = the_workload(rendered)
    (service,) = objects(rendered, "Service")
    assert len(service["metadata"]["name"]) <= 63 and service["metadata"]["name"].endswith("-headless")
    assert workload["kind"] == "StatefulSet" and len(workload["metadata"]["name"]) <= 52
    assert workload["spec"]["serviceName"] == service["metadata"]["name"]


def test_the_monitors_name_the_job_otel_sidecar_whatever_the_name_overrides(helm_python: Path, tmp_path: Path) -> None:
    gateway = {"mode": "gateway", "nameOverride": "tracer"}
    rendered = render_with(helm_python, tmp_path, {**gateway, "serviceMonitor": {"enabled": True, "interval": "15s"}})
    (service,) = objects(rendered, "Service")
    (service_monitor,) = objects(rendered, "ServiceMonitor")
    assert service["metadata"]["labels"][service_monitor["spec"]["jobLabel"]] == "otel-sidecar"
    assert [(e["path"], e["interval"]) for e in service_monitor["spec"]["endpoints"]] == [("/metrics", "15s")] * 2
    rendered = render_with(helm_python, tmp_path, {**gateway, "podMonitor": {"enabled": True, "interval": "15s"}})
    (pod_monitor,) = objects(rendered, "PodMonitor")
    pod_labels = the_workload(rendered)["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[pod_monitor["spec"]["jobLabel"]] == "otel-sidecar"
    endpoints = pod_monitor["spec"]["podMetricsEndpoints"]
    assert [(e["port"], e["path"], e["interval"]) for e in endpoints] == [
        ("metrics", "/metrics", "15s"),
        ("admin", "/metrics", "15s"),
    ]
    # Applications' own metrics keep their job and instance (target_info joins on them), the agent's own not.
    assert [e.get("honorLabels", False) for e in endpoints] == [True, False]
    # This release's pods only, selected by the labels its workload gives them.
    selector = pod_monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items() and "app.kubernetes.io/instance" in selector


def test_a_pod_monitor_scrapes_only_the_agents_container_of_the_pods_the_chart_renders(
    helm_python: Path, tmp_path: Path
) -> None:
    """The orchestrator beside the agent may name its own port ``metrics``: scraped under the agent's job with
    honor_labels, its series would mix with the agent's and its target would count in OtelSidecarDown."""
    sidecar = yaml.safe_load((CHART / "ci" / "sidecar.yaml").read_text())
    (orchestrator,) = sidecar["workload"]["containers"]
    orchestrator["ports"] = [{"name": "metrics", "containerPort": 8000}]
    rendered = render_with(helm_python, tmp_path, {**sidecar, "podMonitor": {"enabled": True}})
    (pod_monitor,) = objects(rendered, "PodMonitor")
    for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["relabelings"] == [
            {"sourceLabels": ["__meta_kubernetes_pod_container_name"], "regex": "otel-sidecar", "action": "keep"}
        ]  # no job relabeling: these pods carry the jobLabel label


def test_labels_and_environment_the_chart_sets_may_not_be_set_again(helm_python: Path, tmp_path: Path) -> None:
    """Set twice, a key renders as a duplicate YAML key whose later value wins: the Service would leave its
    ServiceMonitor's selector, a pod the alerts' job, and an upgrade's strategic merge would break on the env."""
    gateway = {"mode": "gateway", "serviceMonitor": {"enabled": True}}
    failures = lint_failures(helm_python, tmp_path, {**gateway, "commonLabels": {"app.kubernetes.io/component": "x"}})
    assert any("commonLabels.app.kubernetes.io/component: is one of the labels" in f for f in failures), failures
    failures = lint_failures(helm_python, tmp_path, {**gateway, "podLabels": {"otel-sidecar/job": "mine"}})
    assert any("podLabels.otel-sidecar/job: is one of the labels" in f for f in failures), failures
    env = [{"name": "OTEL_SIDECAR_ADMIN_ENDPOINT", "value": "0.0.0.0:8888"}]
    failures = lint_failures(helm_python, tmp_path, {**gateway, "extraEnvs": env})
    assert any("extraEnvs[0].name: OTEL_SIDECAR_ADMIN_ENDPOINT is set by the chart" in f for f in failures), failures
    fine = {"commonLabels": {"team": "llm"}, "podLabels": {"tier": "t"}, "extraEnvs": [{"name": "X", "value": "1"}]}
    assert lint_failures(helm_python, tmp_path, {**gateway, **fine}) == []


def test_a_service_monitor_and_a_pod_monitor_of_the_same_agents_are_refused(helm_python: Path, tmp_path: Path) -> None:
    both = {"mode": "gateway", "serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}
    failures = lint_failures(helm_python, tmp_path, both)
    assert any("podMonitor.enabled: serviceMonitor.enabled scrapes the same agents" in f for f in failures), failures


@pytest.mark.parametrize(("name", "valid"), [("my-port", True), ("grpc2", True), ("my--port", False), ("a-", False)])
def test_port_names_follow_the_kubernetes_rule(helm_python: Path, tmp_path: Path, name: str, valid: bool) -> None:
    port = {name: {"enabled": True, "containerPort": 55679, "protocol": "TCP"}}
    assert (lint_failures(helm_python, tmp_path, {"mode": "gateway", "ports": port}) == []) is valid


def test_notes_name_what_was_rendered(helm_python: Path, tmp_path: Path) -> None:
    def notes(values: dict[str, Any]) -> str:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        result = run_helm_tool(helm_python, str(CHART), "--values", str(path), "--render")
        assert result.returncode == 0, result.stderr
        (case,) = json.loads(result.stdout)
        assert case["fails"] == [], case["fails"]
        return str(case["notes"])

    sidecar = yaml.safe_load((CHART / "ci" / "sidecar.yaml").read_text())
    long_name = "orchestrator-" + "x" * 52
    sidecar["workload"].update(kind="StatefulSet", name=long_name)
    workload = the_workload(render_with(helm_python, tmp_path, sidecar))
    assert f"StatefulSet {workload['metadata']['name']}\n" in notes(sidecar)
    assert len(workload["metadata"]["name"]) == 52
    # Pass 127/128: what the chart renders without a workload, all of it.
    name = "test-release-otel-sidecar"
    for values, rendered in [
        ({"existingConfigMap": "mine"}, f"your ConfigMap mine. Rendered: ServiceAccount {name}.\n"),
        ({}, f"Rendered: ConfigMap {name}, ServiceAccount {name}.\n"),
        ({"serviceAccount": {"create": False}}, f"Rendered: ConfigMap {name}.\n"),
        (
            {
                "prometheusRule": {"enabled": True},
                "podMonitor": {"enabled": True, "podSelector": {"app": "orchestrator"}},
                "persistence": {"enabled": True},
            },
            f"ServiceAccount {name}, PrometheusRule {name}, PodMonitor {name}, PersistentVolumeClaim {name}-data.\n",
        ),
    ]:
        assert rendered in notes(values), values
    assert "Span metrics are not derived here" in notes(yaml.safe_load((CHART / "ci" / "gateway.yaml").read_text()))
    assert "Span metrics: port 9464" in notes({"mode": "gateway"})
    assert "on OTLP/gRPC port 14317.\n" in notes({"mode": "gateway", "ports": {"otlp": {"containerPort": 14317}}})
    # A gateway whose config has no connectors at all, as config/gateway.yaml (Helm removes a key set to null).
    assert "Span metrics are not derived here" in notes({"mode": "gateway", "config": {"connectors": None}})


def sidecar_workload_with(helm_python: Path, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The Deployment or StatefulSet Helm renders from ci/sidecar.yaml with ``overrides`` merged in."""
    sidecar = yaml.safe_load((CHART / "ci" / "sidecar.yaml").read_text())
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({**sidecar, **overrides}))
    result = run_helm_tool(helm_python, str(CHART), "--values", str(values), "--render")
    assert result.returncode == 0, result.stderr
    (case,) = json.loads(result.stdout)
    return the_workload({name: [d for d in yaml.safe_load_all(text) if d] for name, text in case["manifests"].items()})


def test_a_deployment_with_its_one_claim_is_replaced_not_rolled(helm_python: Path, tmp_path: Path) -> None:
    """A rolling update would start the new pod while the old one holds the ReadWriteOnce claim (and the queue
    directory's lock), and never finish: a Deployment with persistence recreates its pod instead."""
    sidecar = yaml.safe_load((CHART / "ci" / "sidecar.yaml").read_text())
    workload = sidecar_workload_with(
        helm_python,
        tmp_path,
        workload={**sidecar.get("workload", {}), "kind": "Deployment"},
        persistence={"enabled": True},
    )
    assert workload["kind"] == "Deployment"
    assert workload["spec"]["strategy"] == {"type": "Recreate"}
    # Without a claim the pods roll as usual: the orchestrator's Deployment keeps serving through an upgrade.
    assert "strategy" not in sidecar_workload_with(helm_python, tmp_path)["spec"]


def test_a_deployments_data_volume_is_the_one_claim_the_chart_renders(
    rendered: Any, helm_python: Path, tmp_path: Path
) -> None:
    sidecar = yaml.safe_load((CHART / "ci" / "sidecar.yaml").read_text())
    case = render_with(helm_python, tmp_path, {**sidecar, "persistence": {"enabled": True}})
    (claim,) = objects(case, "PersistentVolumeClaim")
    pod = the_workload(case)["spec"]["template"]["spec"]
    (data,) = [v for v in pod["volumes"] if v["name"] == "otel-sidecar-data"]
    assert data["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    # A StatefulSet's pods get a claim each from its claim template: no claim of their own.
    for name in ("gateway.yaml", "sidecar-non-native.yaml"):
        assert the_workload(rendered[name])["spec"]["volumeClaimTemplates"]
        assert objects(rendered[name], "PersistentVolumeClaim") == [], name


def test_the_scrape_annotation_follows_the_metrics_port(helm_python: Path, tmp_path: Path) -> None:
    workload = sidecar_workload_with(
        helm_python, tmp_path, ports={"metrics": {"containerPort": 9500}}, podMonitor={"enabled": False}
    )
    assert workload["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9500"
    # A port given in podAnnotations is kept (a scrape through a proxy, say): derived only when none is given.
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": "9999"}
    workload = sidecar_workload_with(helm_python, tmp_path, podAnnotations=scrape, podMonitor={"enabled": False})
    assert workload["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9999"


def render_with(helm_python: Path, tmp_path: Path, values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = run_helm_tool(helm_python, str(CHART), "--values", str(path), "--render")
    assert result.returncode == 0, result.stderr
    (case,) = json.loads(result.stdout)
    return {name: [d for d in yaml.safe_load_all(text) if d] for name, text in case["manifests"].items()}


def test_the_headless_gateway_service_has_the_container_ports_clients_connect_to(
    helm_python: Path, tmp_path: Path
) -> None:
    """DNS of a headless Service gives the pods' addresses: a client connects to the container port itself."""
    rendered = render_with(helm_python, tmp_path, {"mode": "gateway", "ports": {"otlp": {"containerPort": 14317}}})
    (service,) = objects(rendered, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["otlp"] == 14317
    assert (
        env_of(agent_container(the_workload(rendered)["spec"]["template"]["spec"]))["OTEL_SIDECAR_GRPC_ENDPOINT"]
        == "0.0.0.0:14317"
    )
    # A separate service port would be one nobody listens on: the schema refuses it.
    assert lint_failures(helm_python, tmp_path, {"mode": "gateway", "ports": {"otlp": {"servicePort": 4317}}})


def test_a_pod_monitor_for_injected_agents_needs_the_pods_labels(helm_python: Path, tmp_path: Path) -> None:
    failures = lint_failures(helm_python, tmp_path, {"podMonitor": {"enabled": True}})
    assert any("podMonitor.podSelector: the agent is injected" in f for f in failures), failures
    rendered = render_with(helm_python, tmp_path, {"podMonitor": {"enabled": True, "podSelector": {"app": "orch"}}})
    (pod_monitor,) = objects(rendered, "PodMonitor")
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {"app": "orch"}
    # The injected pods do not carry the jobLabel label, so the Operator would name the job after the PodMonitor
    # (here the release's name, which the alerts' job=~".*otel-sidecar.*" misses): the job is set by relabeling.
    # Their own containers may name a port `metrics` too: only the agent's container is kept.
    for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
        keep, job = endpoint["relabelings"]
        assert keep == {
            "sourceLabels": ["__meta_kubernetes_pod_container_name"],
            "regex": "otel-sidecar",  # the container's name wherever it is injected (see agent_container)
            "action": "keep",
        }
        assert job == {"targetLabel": "job", "replacement": "otel-sidecar"}


def test_pod_labels_may_not_reuse_a_selector_label(helm_python: Path, tmp_path: Path) -> None:
    sidecar = yaml.safe_load((CHART / "ci" / "sidecar.yaml").read_text())
    failures = lint_failures(helm_python, tmp_path, {**sidecar, "podLabels": {"app.kubernetes.io/name": "orch"}})
    assert any("podLabels.app.kubernetes.io/name: is one of the labels" in f for f in failures), failures
    assert lint_failures(helm_python, tmp_path, {**sidecar, "podLabels": {"team": "llm"}}) == []


@pytest.mark.parametrize(
    "own",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://localhost:4318/v1/traces"},
    ],
)
def test_a_container_choosing_its_own_otlp_exporter_gets_neither_variable(
    helm_python: Path, tmp_path: Path, own: dict[str, str]
) -> None:
    """Endpoint and protocol go together (pass 151): a container setting only the endpoint, to the HTTP port
    (enough for the JS and Java SDKs, whose default is http/protobuf), got PROTOCOL=grpc added, spoke gRPC to
    the HTTP receiver and lost every span (counted as malformed_http). A name given twice in one env list
    would also break Helm's strategic-merge upgrades."""
    sidecar = yaml.safe_load((CHART / "ci" / "sidecar.yaml").read_text())
    (orchestrator,) = sidecar["workload"]["containers"]
    orchestrator["env"] += [{"name": name, "value": value} for name, value in own.items()]
    workload = sidecar_workload_with(helm_python, tmp_path, workload=sidecar["workload"])
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    names = [e["name"] for e in container["env"]]
    assert sorted(names) == sorted(set(names))
    assert {name: value for name, value in env_of(container).items() if name.startswith("OTEL_EXPORTER_")} == own


def test_the_listen_address_serves_ipv6_clusters(helm_python: Path, tmp_path: Path) -> None:
    rendered = render_with(helm_python, tmp_path, {"mode": "gateway", "listenAddress": "[::]"})
    env = env_of(agent_container(the_workload(rendered)["spec"]["template"]["spec"]))
    assert env["OTEL_SIDECAR_ADMIN_ENDPOINT"] == "[::]:13133"
    assert env["OTEL_SIDECAR_METRICS_ENDPOINT"] == "[::]:9464"
    assert env["OTEL_SIDECAR_GRPC_ENDPOINT"] == "[::]:4317"
    assert lint_failures(helm_python, tmp_path, {"listenAddress": "::"})  # a bare IPv6 address: not host:port


@pytest.mark.parametrize("address", ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[0:0:0:0:0:FFFF:127.0.0.2]"])
def test_a_loopback_listen_address_is_refused(helm_python: Path, tmp_path: Path, address: str) -> None:
    """The kubelet's httpGet probes connect to the pod's IP (a probe ``host`` is resolved in the node's network, not
    the pod's): an admin endpoint on loopback never answers them, so the startup probe fails until the agent is
    restarted, and a native sidecar that never starts holds back the orchestrator's containers for good."""
    for values in ({**APP, "listenAddress": address}, {"mode": "gateway", "listenAddress": address}):
        failures = lint_failures(helm_python, tmp_path, values)
        assert any(f"listenAddress: {address} is loopback" in f for f in failures), (values, failures)
    for other in ("0.0.0.0", "[::]", "10.0.0.5"):  # wildcards, and a (static) pod IP
        assert lint_failures(helm_python, tmp_path, {**APP, "listenAddress": other}) == [], other


def test_the_gateway_network_policy_lets_only_the_sidecars_send_otlp(rendered: Any) -> None:
    """ci/gateway.yaml: OTLP from the pods of ci/sidecar-to-gateway.yaml only; metrics and admin from anywhere."""
    gateway, sidecars = rendered["gateway.yaml"], rendered["sidecar-to-gateway.yaml"]
    (policy,) = objects(gateway, "NetworkPolicy")
    pod_template = the_workload(gateway)["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_template["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    otlp, scrape = policy["spec"]["ingress"]
    container_ports = {p["name"]: p["containerPort"] for p in agent_container(pod_template["spec"])["ports"]}
    assert [p["port"] for p in otlp["ports"]] == [container_ports["otlp"], container_ports["otlp-http"]]
    assert [p["port"] for p in scrape["ports"]] == [container_ports["metrics"], container_ports["admin"]]
    assert {p["protocol"] for p in otlp["ports"] + scrape["ports"]} == {"TCP"}
    assert "from" not in scrape  # Prometheus and the kubelet's probes are never cut off
    ((peer,),) = [otlp["from"]]
    sidecar_labels = the_workload(sidecars)["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= sidecar_labels.items()
    assert peer["namespaceSelector"] == {}  # sidecars of any namespace
    assert objects(sidecars, "NetworkPolicy") == []


def test_a_network_policy_opens_the_ports_the_agent_listens_on_whether_declared_or_not(
    helm_python: Path, tmp_path: Path
) -> None:
    """`ports.<name>.enabled: false` only leaves the port off the container: the agent still listens on it, and
    sidecars dial the pods' addresses, so the policy must not close it (a named port no container declares would
    match nothing). A rule never loses its ports either: one without ports would open every port."""
    closed = {"otlp": {"enabled": False}, "otlp-http": {"enabled": False, "containerPort": 14318}}
    values = {"mode": "gateway", "networkPolicy": {"enabled": True}, "ports": closed}
    (policy,) = objects(render_with(helm_python, tmp_path, values), "NetworkPolicy")
    otlp, scrape = policy["spec"]["ingress"]
    assert ([p["port"] for p in otlp["ports"]], otlp["from"]) == ([4317, 14318], [{"podSelector": {}}])  # the default
    assert [p["port"] for p in scrape["ports"]] == [9464, 13133]


def test_agent_ports_are_tcp_only(helm_python: Path, tmp_path: Path) -> None:
    """Every listener of the agent is TCP: a UDP port would mislabel the container and Service ports."""
    for protocol, valid in (("UDP", False), ("SCTP", False), ("TCP", True)):
        failures = lint_failures(helm_python, tmp_path, {"mode": "gateway", "ports": {"otlp": {"protocol": protocol}}})
        assert (failures == []) == valid, (protocol, failures)


def test_a_network_policy_is_for_gateway_mode_and_takes_network_policy_peers(helm_python: Path, tmp_path: Path) -> None:
    failures = lint_failures(helm_python, tmp_path, {"networkPolicy": {"enabled": True}})
    assert any("networkPolicy.enabled: in sidecar mode the agent runs in your pods" in f for f in failures), failures
    gateway = {"mode": "gateway", "networkPolicy": {"enabled": True}}
    assert lint_failures(helm_python, tmp_path, gateway) == []
    misspelt = {"enabled": True, "otlpFrom": [{"podSelctor": {}}]}
    assert lint_failures(helm_python, tmp_path, {**gateway, "networkPolicy": misspelt})
    # The API server refuses an ipBlock beside a selector in one peer: the schema does, at install time.
    mixed = {"enabled": True, "otlpFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}
    assert lint_failures(helm_python, tmp_path, {**gateway, "networkPolicy": mixed})
    alone = {"enabled": True, "otlpFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}}, {"podSelector": {}}]}
    assert lint_failures(helm_python, tmp_path, {**gateway, "networkPolicy": alone}) == []


ADMIN_TLS = {"tls": {"cert_file": "/etc/tls/tls.crt", "key_file": "/etc/tls/tls.key"}}


def test_probes_and_monitors_follow_the_tls_the_agent_serves(helm_python: Path, tmp_path: Path) -> None:
    """An admin endpoint on HTTPS only: plain-HTTP probes would never pass (a native sidecar would hold the
    orchestrator back) and a plain scrape would fail. The monitors' TLS settings go to the TLS endpoints only."""
    values = {
        "mode": "gateway",
        "config": {"service": {"telemetry": {"admin": ADMIN_TLS}}},
        "podMonitor": {"enabled": True, "tlsConfig": {"insecureSkipVerify": True}},
        "livenessProbe": {"httpGet": {"scheme": "HTTP"}},  # a scheme set here is kept
    }
    rendered = render_with(helm_python, tmp_path, values)
    agent = agent_container(the_workload(rendered)["spec"]["template"]["spec"])
    assert agent["readinessProbe"]["httpGet"]["scheme"] == agent["startupProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert agent["livenessProbe"]["httpGet"]["scheme"] == "HTTP"
    (monitor,) = objects(rendered, "PodMonitor")
    endpoints = {e["port"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
    assert (endpoints["admin"]["scheme"], endpoints["admin"]["tlsConfig"]) == ("https", {"insecureSkipVerify": True})
    assert "scheme" not in endpoints["metrics"] and "tlsConfig" not in endpoints["metrics"]

    metrics_tls = {"exporters": {"prometheus": ADMIN_TLS}}
    values = {"mode": "gateway", "config": metrics_tls, "serviceMonitor": {"enabled": True}}
    rendered = render_with(helm_python, tmp_path, values)
    agent = agent_container(the_workload(rendered)["spec"]["template"]["spec"])
    assert "scheme" not in agent["readinessProbe"]["httpGet"]
    (monitor,) = objects(rendered, "ServiceMonitor")
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    assert endpoints["metrics"]["scheme"] == "https" and "scheme" not in endpoints["admin"]
    annotated = render_with(helm_python, tmp_path, {"mode": "gateway", "config": metrics_tls})
    annotations = the_workload(annotated)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"


def test_an_admin_endpoint_asking_for_client_certificates_is_refused(helm_python: Path, tmp_path: Path) -> None:
    mutual = {"tls": {**ADMIN_TLS["tls"], "client_ca_file": "/etc/tls/ca.crt"}}
    values = {"mode": "gateway", "config": {"service": {"telemetry": {"admin": mutual}}}}
    failures = lint_failures(helm_python, tmp_path, values)
    assert any("kubelet's probes of the admin endpoint present no client certificate" in f for f in failures), failures


def test_a_monitored_agent_is_not_also_annotated_for_scraping(helm_python: Path, tmp_path: Path) -> None:
    """An annotation-based job and the PodMonitor would both scrape the agents: the LLM budget sums would count
    every dollar twice. Other annotations stay."""
    annotations = {"prometheus.io/scrape": "true", "team": "llm"}
    monitored = sidecar_workload_with(helm_python, tmp_path, podAnnotations=annotations)
    assert {
        k: v for k, v in monitored["spec"]["template"]["metadata"]["annotations"].items() if k != "checksum/config"
    } == {"team": "llm"}
    plain = sidecar_workload_with(helm_python, tmp_path, podAnnotations=annotations, podMonitor={"enabled": False})
    assert plain["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_a_drain_takes_one_gateway_agent_at_a_time(rendered: Any, helm_python: Path, tmp_path: Path) -> None:
    gateway = rendered["gateway.yaml"]
    (budget,) = objects(gateway, "PodDisruptionBudget")
    labels = the_workload(gateway)["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects(rendered["sidecar.yaml"], "PodDisruptionBudget") == []
    off = {"mode": "gateway", "gateway": {"podDisruptionBudget": {"enabled": False}}}
    assert objects(render_with(helm_python, tmp_path, off), "PodDisruptionBudget") == []
    share = {"mode": "gateway", "gateway": {"podDisruptionBudget": {"maxUnavailable": "50%"}}}
    (budget,) = objects(render_with(helm_python, tmp_path, share), "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == "50%"
    for refused in ("half", "0%", 0, "101%"):  # "0%" would block every drain
        assert lint_failures(helm_python, tmp_path, {"gateway": {"podDisruptionBudget": {"maxUnavailable": refused}}})


SLEEP_10 = {"preStop": {"exec": {"command": ["sleep", "10"]}}}


@pytest.mark.parametrize(
    ("grace", "timeout", "lifecycle", "refused"),
    [
        (5, "20s", {}, True),
        (20, "20s", {}, True),
        (45, "1m", {}, True),
        (45, "20s", {}, False),
        (61, "1m", {}, False),
        (2, "1500ms", {}, False),
        (25, "20s", SLEEP_10, True),  # the preStop sleep spends the grace period first
        (31, "20s", SLEEP_10, False),
        (25, "20s", {"preStop": {"sleep": {"seconds": 10}}}, True),
        (22, None, {}, True),  # no shutdown_timeout: the agent's default, 25s (the chart's is 20s)
    ],
)
def test_a_grace_period_shorter_than_the_flush_budget_is_refused(
    helm_python: Path, tmp_path: Path, grace: int, timeout: str | None, lifecycle: dict[str, Any], refused: bool
) -> None:
    values: dict[str, Any] = {**APP, "terminationGracePeriodSeconds": grace, "lifecycle": lifecycle}
    values["config"] = {"service": {"shutdown_timeout": timeout}}  # None: Helm removes the default
    failures = lint_failures(helm_python, tmp_path, values)
    assert any("is not longer than the agent's flush budget" in f for f in failures) == refused, failures


def test_the_grace_period_is_not_checked_when_the_chart_renders_no_pods(helm_python: Path, tmp_path: Path) -> None:
    """Injecting the agent into your own manifests: terminationGracePeriodSeconds is yours, not this value."""
    values = {"config": {"service": {"shutdown_timeout": "60s"}}}
    assert lint_failures(helm_python, tmp_path, values) == []


def test_a_regular_sidecar_is_held_back_while_the_orchestrator_flushes(rendered: Any) -> None:
    """ci/sidecar-non-native.yaml: SIGTERM reaches both containers at once; the agent's preStop delays its own."""
    agent = agent_container(the_workload(rendered["sidecar-non-native.yaml"])["spec"]["template"]["spec"])
    assert agent["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "10"]}}}
    native = agent_container(the_workload(rendered["sidecar.yaml"])["spec"]["template"]["spec"])
    assert "lifecycle" not in native  # stops after the orchestrator's containers anyway


def helm_install_error(helm_python: Path, tmp_path: Path, values: dict[str, Any]) -> str:
    """Helm's own message for ``helm install`` with ``values``: what an operator reads when the values schema or
    a template refuses them."""
    return str(helm_install(helm_python, tmp_path, values)[0]["error"])


def test_a_gateway_given_workload_containers_is_refused_naming_the_value(helm_python: Path, tmp_path: Path) -> None:
    """Reusing a sidecar values file for the gateway release (`-f ci/gateway.yaml -f my-values.yaml`, for its image
    and backends) must say which value to drop, not `at '': 'allOf' failed - at '': false schema`."""
    error = helm_install_error(helm_python, tmp_path, {"mode": "gateway", **APP})
    assert "/workload/containers" in error, error


def test_a_collector_style_protocols_level_is_refused_naming_the_protocol(helm_python: Path, tmp_path: Path) -> None:
    """The Collector's `protocols:` level meets the chart's default `grpc` beside it: the error must name
    `/config/receivers/otlp/grpc` and say what to do, not only `'allOf' failed - 'not' failed` at the receiver.
    Setting the chart's default to null, as it says, passes the schema."""
    protocols = {"protocols": {"grpc": {"endpoint": "0.0.0.0:4317"}}}
    error = helm_install_error(helm_python, tmp_path, {**APP, "config": {"receivers": {"otlp": protocols}}})
    assert (
        "at '/config/receivers/otlp/grpc': value must be 'given also under protocols: write it in one place (grpc: null"
        in error
    ), error
    taken = {**APP, "config": {"receivers": {"otlp": {"grpc": None, **protocols}}}}
    assert "schema" not in helm_install_error(helm_python, tmp_path, taken)  # stopped later, at the stand-in API


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({**APP, "livenessProbe": {"tcpSocket": {"port": 13133}}}, "at '/livenessProbe/tcpSocket': false schema"),
        (
            {
                "mode": "gateway",
                "networkPolicy": {"otlpFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]},
            },
            "at '/networkPolicy/otlpFrom/0/podSelector': false schema",
        ),
    ],
)
def test_a_value_the_schema_refuses_in_combination_is_named_by_its_path(
    helm_python: Path, tmp_path: Path, values: dict[str, Any], named: str
) -> None:
    """A probe handler beside the default httpGet, a NetworkPolicy peer with a selector beside its ipBlock (which
    Kubernetes refuses): Helm said only "'not' failed" at the probe or the peer (pass 151)."""
    assert named in helm_install_error(helm_python, tmp_path, values)


@pytest.mark.parametrize("port", [9464, 13133, 4317])
def test_a_workload_port_the_agent_listens_on_is_refused(helm_python: Path, tmp_path: Path, port: int) -> None:
    """The agent and the orchestrator share the pod's network: an orchestrator serving its own Prometheus exporter
    on 9464 (the OpenTelemetry SDKs' default) renders and is admitted, then one of the two cannot bind."""
    app = copy.deepcopy(APP)
    app["workload"]["containers"][0]["ports"] = [{"name": "app", "containerPort": port}]
    failures = lint_failures(helm_python, tmp_path, app)
    assert any("workload.containers[0].ports[0].containerPort" in f for f in failures), failures


@pytest.mark.parametrize(
    ("workload", "refused"),
    [
        # UDP and SCTP: the agent listens on TCP only
        ({"containers": [{"name": "o", "image": "o:1", "ports": [{"containerPort": 4317, "protocol": "UDP"}]}]}, False),
        # A regular init container has exited before a regular agent container starts...
        (
            {**APP["workload"], "initContainers": [{"name": "i", "image": "i:1", "ports": [{"containerPort": 9464}]}]},
            "non-native only",
        ),
        # ...but runs beside one that is a native sidecar, and a native sidecar of its own runs throughout
        (
            {
                **APP["workload"],
                "initContainers": [
                    {"name": "i", "image": "i:1", "restartPolicy": "Always", "ports": [{"containerPort": "13133"}]}
                ],
            },
            True,
        ),
    ],
)
def test_only_ports_that_can_clash_with_the_agents_are_refused(
    helm_python: Path, tmp_path: Path, workload: dict[str, Any], refused: bool | str
) -> None:
    """Pass 153: a UDP port of the agent's number, and a regular init container's, were refused though neither
    can take the agent's TCP port while it listens."""
    for native in (True, False):
        failures = lint_failures(helm_python, tmp_path, {"workload": workload, "sidecar": {"native": native}})
        expected = refused is True or (refused == "non-native only" and native)
        assert any("is where the agent listens" in f for f in failures) == expected, (native, failures)
