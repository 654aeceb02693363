from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.config.loader import default_config_text, load_text
from agent.config.schema import ConfigInvalid, Duration, HostPort
from agent.config.service import ServiceConfig

CASES = yaml.safe_load((Path(__file__).parent.parent / "testdata" / "invalid_configs.yaml").read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_invalid_configs_report_every_problem_with_its_path(name: str) -> None:
    case = CASES[name]
    with pytest.raises(ConfigInvalid) as raised:
        load_text(yaml.safe_dump(case["config"], sort_keys=False), environ={})
    assert sorted(str(e) for e in raised.value.errors) == sorted(case["errors"])


def test_the_packaged_default_config_is_valid_and_listens_on_localhost_only() -> None:
    config = load_text(default_config_text(), environ={})
    otlp = config.receivers["otlp"].config
    assert otlp.grpc.endpoint == "127.0.0.1:4317"
    assert otlp.http.endpoint == "127.0.0.1:4318"
    assert config.service.telemetry.admin.endpoint.host == "127.0.0.1"
    assert set(config.service.pipelines) >= {"traces", "metrics", "logs"}


def test_env_references_are_substituted_with_defaults_and_typed_when_whole() -> None:
    text = """
receivers:
  otlp:
    grpc: {endpoint: "${env:GRPC:-127.0.0.1:5317}", max_recv_msg_size_mib: "${env:SIZE}"}
exporters:
  file: {path: "/data/${env:TENANT}/out"}
service:
  pipelines: {traces: {receivers: [otlp], exporters: [file]}}
"""
    config = load_text(text, environ={"SIZE": "32", "TENANT": "acme"})
    assert config.receivers["otlp"].config.grpc.endpoint == "127.0.0.1:5317"
    assert config.receivers["otlp"].config.grpc.max_recv_msg_size_mib == 32
    assert config.exporters["file"].config.path == "/data/acme/out"


def test_a_missing_env_variable_without_default_is_an_error_at_its_path() -> None:
    text = """
receivers: {otlp: {}}
exporters: {file: {path: "${env:OUT_DIR}"}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [file]}}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    assert [str(e) for e in raised.value.errors] == [
        "exporters.file.path: environment variable OUT_DIR is not set and has no default"
    ]


def test_named_instances_of_one_type_are_separate_components() -> None:
    text = """
receivers: {otlp: {}}
exporters:
  file/a: {path: /tmp/a}
  file/b: {path: /tmp/b}
service: {pipelines: {traces: {receivers: [otlp], exporters: [file/a, file/b]}}}
"""
    config = load_text(text, environ={})
    assert {cid: c.config.path for cid, c in config.exporters.items()} == {"file/a": "/tmp/a", "file/b": "/tmp/b"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10.0), ("2m", 120.0), ("1h30m", 5400.0), ("30d", 2592000.0), ("1.5s", 1.5)],
)
def test_durations_parse_go_style_units(text: str, seconds: float) -> None:
    assert Duration.parse(text) == seconds


@pytest.mark.parametrize("text", ["10", "10 s", "s", "-1s", "1w", ""])
def test_malformed_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        Duration.parse(text)


def test_durations_render_back_to_their_shortest_form() -> None:
    assert [Duration(v).render() for v in (0.5, 10, 120, 2592000, 90)] == ["500ms", "10s", "2m", "30d", "90s"]


@pytest.mark.parametrize("text", ["localhost", "host:99999", "host:", ":x"])
def test_bad_endpoints_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        HostPort.parse(text)


def test_ipv6_endpoints_expose_host_and_port() -> None:
    endpoint = HostPort.parse("[::1]:4317")
    assert (endpoint.host, endpoint.port) == ("::1", 4317)


def test_effective_config_fills_defaults_and_renders_durations() -> None:
    config = load_text(default_config_text(), environ={})
    effective = config.effective()
    assert effective["service"]["shutdown_timeout"] == "25s"
    assert effective["service"]["retention"]["classes"] == {"error": "30d", "critical": "30d", "standard": "7d"}
    assert effective["exporters"]["file"]["sending_queue"]["queue_size"] == 1000
    assert yaml.safe_load(yaml.safe_dump(effective)) == effective


def test_secret_fields_are_masked_when_printed() -> None:
    from dataclasses import dataclass

    from agent.config.schema import setting, to_plain

    @dataclass(frozen=True)
    class WithSecrets:
        headers: dict[str, str] = setting(doc="headers", default_factory=dict, secret=True)
        token: str = setting("", doc="token", secret=True)
        name: str = setting("x", doc="name")

    plain = to_plain(WithSecrets(headers={"Authorization": "Bearer abc"}, token="s3cr3t"))
    assert plain == {"headers": {"Authorization": "[REDACTED]"}, "token": "[REDACTED]", "name": "x"}


def test_service_defaults_keep_shutdown_within_the_kubernetes_grace_period() -> None:
    assert float(ServiceConfig().shutdown_timeout) < 30


def test_configuration_reference_is_up_to_date() -> None:
    from agent.config.docs import render

    path = Path(__file__).parent.parent.parent / "docs" / "configuration.md"
    assert path.read_text() == render(), "run `make docs` to regenerate docs/configuration.md"
