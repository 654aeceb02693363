"""The ``loadbalancing`` exporter's config: the same checks as the ``otlp`` exporter's, and resolvers that work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config.schema import ConfigError, build
from agent.exporters.loadbalancing.config import LoadBalancingExporterConfig, parse_nameserver


def problems(raw: dict[str, Any]) -> list[str]:
    errors: list[ConfigError] = []
    build(LoadBalancingExporterConfig, raw, "exporters.loadbalancing", errors)
    return [str(e) for e in errors]


DNS = {"dns": {"hostname": "otel-gateway-headless"}}


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [
        ({"timeout": "0s"}, "exporters.loadbalancing.protocol.timeout: must be longer than 0s"),
        (
            {"tls": {"insecure_skip_verify": True}},
            "exporters.loadbalancing.protocol.tls.insecure_skip_verify: is not available over gRPC; give "
            "tls.ca_file (the server's CA)",
        ),
        (
            {"headers": {"bad name": "x"}},
            "exporters.loadbalancing.protocol.headers.bad name: is not a valid header name",
        ),
    ],
)
def test_protocol_settings_the_otlp_exporter_refuses_are_refused_here_too(
    protocol: dict[str, Any], expected: str
) -> None:
    assert problems({"protocol": protocol, "resolver": DNS}) == [expected]


@pytest.mark.parametrize("hostname", ["gw:99999", "gw:0", ":4317", "gw"])
def test_static_gateways_need_a_host_and_a_port_in_range(hostname: str) -> None:
    (problem,) = problems({"resolver": {"static": {"hostnames": ["gw-0:4317", hostname]}}})
    assert problem.startswith("exporters.loadbalancing.resolver.static.hostnames[1]: must")


def test_a_dns_resolver_needs_a_name_and_nameservers_that_are_addresses() -> None:
    found = problems({"resolver": {"dns": {"hostname": " ", "nameservers": ["10.0.0.10", "not-an-ip"]}}})
    assert found == [
        "exporters.loadbalancing.resolver.dns.hostname: must name the gateways' DNS name (their headless Service)",
        "exporters.loadbalancing.resolver.dns.nameservers[1]: must be an IP address with an optional :port "
        "([ipv6]:port), got 'not-an-ip'",
    ]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.0.10", ("10.0.0.10", 53)),
        ("10.0.0.10:5353", ("10.0.0.10", 5353)),
        ("fd00::a", ("fd00::a", 53)),
        ("[fd00::a]:5353", ("fd00::a", 5353)),
    ],
)
def test_nameservers_are_ipv4_or_ipv6_with_an_optional_port(text: str, parsed: tuple[str, int]) -> None:
    assert parse_nameserver(text) == parsed


@pytest.mark.parametrize("text", ["dns.local", "10.0.0.10:0", "[fd00::a]x", "10.0.0.10:dns"])
def test_other_nameserver_forms_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(text)


def test_a_zero_cooldown_is_refused() -> None:
    """A failed gateway would be back in the ring at once and take its traces again at every re-route."""
    found = problems({"resolver": DNS, "backend_cooldown": "0s"})
    assert found == ["exporters.loadbalancing.backend_cooldown: must be longer than 0s"]


def test_one_wrong_setting_does_not_hide_the_others() -> None:
    """Every field is checked on its own, and the section's own checks still run on the fields that parsed."""
    resolver = {"dns": {"hostname": "gw", "port": 0, "interval": "-1s", "timeout": "0s"}}
    assert problems({"resolver": resolver, "protocol": {"timeout": "0s"}, "backend_cooldown": "0s"}) == [
        "exporters.loadbalancing.protocol.timeout: must be longer than 0s",
        "exporters.loadbalancing.resolver.dns.port: must be positive",
        "exporters.loadbalancing.resolver.dns.interval: must be a duration like '10s', '500ms' or '2m', got '-1s'",
        "exporters.loadbalancing.resolver.dns.timeout: must be longer than 0s",
        "exporters.loadbalancing.backend_cooldown: must be longer than 0s",
    ]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_tls_files_beside_insecure_true_are_refused_rather_than_sent_in_plain_text(protocol: str) -> None:
    """The shipped sidecar config and the chart's ci/sidecar-to-gateway.yaml set ``insecure: true``; an operator
    adding docs/gateway.md's mutual-TLS keys to it (Helm merges them into that map) got plain text, and the gateway
    only closed each connection: "Socket closed", with nothing naming the cause."""
    tls = {"insecure": True, "ca_file": "/tls/ca.crt", "cert_file": "/tls/tls.crt", "key_file": "/tls/tls.key"}
    assert problems({"protocol": {"protocol": protocol, "tls": tls}, "resolver": DNS}) == [
        "exporters.loadbalancing.protocol.tls.insecure: is true, so the connection is plain text and tls.ca_file, "
        "tls.cert_file, tls.key_file would be ignored: set insecure: false for TLS (over a default or Helm value "
        "that sets it true) or remove them"
    ]
    assert problems({"protocol": {"protocol": protocol, "tls": {**tls, "insecure": False}}, "resolver": DNS}) == []
    assert problems({"protocol": {"protocol": protocol, "tls": {"insecure": True}}, "resolver": DNS}) == []


def _helm_merge(base: Any, override: Any) -> Any:
    """Helm's coalescing of a values file over another (maps merge key by key, null removes)."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _helm_merge(merged.get(key), value)
    return merged


def test_the_mutual_tls_example_of_the_docs_over_the_charts_sidecar_file_speaks_tls() -> None:
    """docs/gateway.md says to give its settings under the chart's ``config:``; over ci/sidecar-to-gateway.yaml
    (``tls: {insecure: true}``) they must still make a valid config that uses TLS."""
    repo = Path(__file__).resolve().parents[2]
    section = (repo / "docs" / "gateway.md").read_text().split("### Mutual TLS between the tiers", 1)[1]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    chart_file = yaml.safe_load((repo / "helm" / "otel-sidecar" / "ci" / "sidecar-to-gateway.yaml").read_text())
    raw = _helm_merge(chart_file["config"]["exporters"]["loadbalancing"], example["exporters"]["loadbalancing"])
    assert problems(raw) == []
    errors: list[ConfigError] = []
    config = build(LoadBalancingExporterConfig, raw, "exporters.loadbalancing", errors)
    assert config is not None
    assert config.protocol.for_backend("10.0.0.1:4317").uses_tls


def test_the_charts_sidecar_file_gives_an_unreachable_tier_as_long_as_the_shipped_sidecar_config() -> None:
    """docs/gateway.md says data waits 15 minutes for an unreachable tier in both; the chart's file left it at the
    5-minute default."""
    repo = Path(__file__).resolve().parents[2]
    chart_file = yaml.safe_load((repo / "helm" / "otel-sidecar" / "ci" / "sidecar-to-gateway.yaml").read_text())
    shipped = yaml.safe_load((repo / "config" / "sidecar-gateway.yaml").read_text())
    waits = []
    for raw in (chart_file["config"]["exporters"]["loadbalancing"], shipped["exporters"]["loadbalancing"]):
        errors: list[ConfigError] = []
        config = build(LoadBalancingExporterConfig, raw, "exporters.loadbalancing", errors)
        assert config is not None and not errors, errors
        waits.append(float(config.retry_on_failure.max_elapsed_time))
    assert waits == [15 * 60, 15 * 60]


def test_a_loadbalancing_exporter_without_a_resolver_is_refused_at_load_not_at_build() -> None:
    """A section left out takes its defaults, which were never checked: the agent failed later, building the
    exporter, with a bare AssertionError. Found by fuzzing the shipped configs."""
    assert problems({"protocol": {"tls": {"insecure": True}}}) == [
        "exporters.loadbalancing.resolver: set exactly one of static and dns"
    ]
    assert problems({"resolver": DNS}) == []
    # Beside another wrong field too: one problem must not hide the other.
    assert problems({"backend_cooldown": "0s"}) == [
        "exporters.loadbalancing.backend_cooldown: must be longer than 0s",
        "exporters.loadbalancing.resolver: set exactly one of static and dns",
    ]
