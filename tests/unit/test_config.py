from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import loader
from agent.config.loader import default_config_text, expands_past, load_path, load_text
from agent.config.schema import ConfigError, ConfigInvalid, Duration, HostPort, build
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


def test_env_references_follow_the_collectors_rules_for_escapes_bare_names_and_mistakes() -> None:
    text = """
receivers: {otlp: {}}
exporters:
  file: {path: "/data/$${env:HOME}/${USER_DIR}"}
  loki: {endpoint: "http://loki:3100/loki/api/v1/push", tenant_id: "${env:TENANT}", headers: {X-A: "${env:BAD"}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [file]}, logs: {receivers: [otlp], exporters: [loki]}}}
"""
    environ = {"USER_DIR": "me", "TENANT": "12345", "HOME": "/root"}
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ=environ)
    assert [e.path for e in raised.value.errors] == ["exporters.loki.headers.X-A"]
    config = load_text(text.replace("${env:BAD", "ok"), environ=environ)
    assert config.exporters["file"].config.path == "/data/${env:HOME}/me"  # $$ is a literal $
    assert config.exporters["loki"].config.tenant_id == "12345"  # digits are text to a string field


@pytest.mark.parametrize(
    ("value", "environ", "expected", "problem"),
    [
        ("${env:A:-${env:B:-/tmp/out}}", {"A": "/data"}, "/data", None),  # was "/data}"
        ("${env:A:-${env:B:-/tmp/out}}", {"B": "/b"}, "/b", None),
        ("${env:A:-${env:B:-/tmp/out}}", {}, "/tmp/out", None),  # was the inner reference, as text
        ("${env:A:-${env:B}}", {"A": "/a"}, "/a", None),  # the default's missing variable does not matter
        ("${env:A:-${env:B}}", {}, "", "environment variable B is not set and has no default"),
        ("/x/${env:A:-$${B}}", {}, "/x/${B}", None),  # $$ in a default is a literal $ too
        ("/x${env:A:-/tmp/out}", {"A": ""}, "/x", None),  # set but empty is empty, as the Collector has it
        ("${env:A:-no end", {"A": "/a"}, "/a", "'}' missing: the default of A runs to the end of the value"),
    ],
)
def test_a_default_may_hold_a_reference_expanded_innermost_first(
    value: str, environ: dict[str, str], expected: str, problem: str | None
) -> None:
    text = f'receivers: {{otlp: {{}}}}\nexporters: {{file: {{path: "{value}"}}}}\n'
    text += "service: {pipelines: {traces: {receivers: [otlp], exporters: [file]}}}\n"
    if problem is None:
        assert load_text(text, environ=environ).exporters["file"].config.path == expected
        return
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ=environ)
    assert [(e.path, e.message) for e in raised.value.errors] == [("exporters.file.path", problem)]


@pytest.mark.parametrize(
    "text",
    [
        "receivers:\n  x: 2001-13-45\n",  # PyYAML raises ValueError for impossible dates
        "receivers: " + "[" * 2000 + "]" * 2000 + "\n",
    ],
)
def test_yaml_that_the_parser_itself_chokes_on_is_a_config_error_not_a_traceback(text: str) -> None:
    with pytest.raises(ConfigInvalid, match="not valid YAML"):
        load_text(text, environ={})


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    from agent.config.loader import load_path

    path = tmp_path / "agent.yaml"
    path.write_bytes(b"receivers: {otlp: {}}\n# \xff\n")
    with pytest.raises(ConfigInvalid, match="not UTF-8"):
        load_path(path, environ={})


def test_passwords_in_endpoint_urls_are_masked_when_printed() -> None:
    text = """
receivers: {otlp: {}}
exporters:
  otlp: {endpoint: "https://tenant:S3cretPassw0rd@gateway.example:4318", protocol: http/protobuf}
  loki: {endpoint: "https://glc_token123@logs.example/loki/api/v1/push"}
service: {pipelines: {traces: {receivers: [otlp], exporters: [otlp]}, logs: {receivers: [otlp], exporters: [loki]}}}
"""
    printed = yaml.safe_dump(load_text(text, environ={}).effective())
    assert "S3cretPassw0rd" not in printed and "glc_token123" not in printed
    assert "https://[REDACTED]@gateway.example:4318" in printed


def test_print_config_shows_strings_that_are_no_endpoint_as_written_even_when_they_look_like_urls() -> None:
    """Only URL and endpoint fields have credentials masked: a redaction regex or a sampling regex that looks
    like a URL is printed as it is, so the output is the effective config (and loads back the same)."""
    text = r"""
receivers: {otlp: {}}
processors:
  redaction:
    value_patterns: {db_url: 'postgres://[^:/\s]+:[^@\s]+@', signed_url: 'https://\S+\?sig=\w+'}
    key_patterns: ['https://user:pw@host']
  tail_sampling:
    policies:
      attributes: [{name: urls, key: url.full, regex: 'https://[^@]+@internal\?token=.*', retention_class: standard}]
exporters:
  otlp: {endpoint: "https://tenant:S3cretPassw0rd@gateway.example:4318", protocol: http/protobuf}
  loki: {endpoint: "https://glc_token123@logs.example/loki/api/v1/push?api_key=LEAKKEY"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [redaction, tail_sampling], exporters: [otlp]}
    logs: {receivers: [otlp], exporters: [loki]}
"""
    printed = load_text(text, environ={}).effective()
    redaction = printed["processors"]["redaction"]
    assert redaction["value_patterns"] == {
        "db_url": r"postgres://[^:/\s]+:[^@\s]+@",
        "signed_url": r"https://\S+\?sig=\w+",
    }
    assert redaction["key_patterns"][-1] == "https://user:pw@host"
    regex = printed["processors"]["tail_sampling"]["policies"]["attributes"][0]["regex"]
    assert regex == r"https://[^@]+@internal\?token=.*"
    assert printed["exporters"]["otlp"]["endpoint"] == "https://[REDACTED]@gateway.example:4318"
    assert (
        printed["exporters"]["loki"]["endpoint"]
        == "https://[REDACTED]@logs.example/loki/api/v1/push?api_key=[REDACTED]"
    )


def test_every_endpoint_or_url_field_has_its_credentials_masked_when_printed() -> None:
    """print-config masks credentials by field type (Url, HostPort) or mark (``endpoint=True``), not by the look
    of the text: a new text field holding a URL must say so."""
    import dataclasses
    import typing

    from agent.config.schema import Url
    from agent.registry import FACTORIES

    def unmarked(cls: type, prefix: str) -> list[str]:
        found = []
        hints = typing.get_type_hints(cls)
        for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
            tp, path = hints[spec.name], f"{prefix}.{spec.name}"
            inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            if dataclasses.is_dataclass(inner[-1]):
                found += unmarked(inner[-1], path)  # type: ignore[arg-type]
            elif ("endpoint" in spec.name or "url" in spec.name) and inner[0] not in (Url, HostPort):
                found += [] if spec.metadata.get("endpoint") else [path]
        return found

    classes = [(f.config_class, f"{f.kind.section}.{f.type}") for f in FACTORIES] + [(ServiceConfig, "service")]
    assert [path for cls, prefix in classes for path in unmarked(cls, prefix)] == []


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
    assert [Duration(v).render() for v in (0.0015, 0.0001)] == ["1.5ms", "0.1ms"]  # fractions of a millisecond kept


@pytest.mark.parametrize("text", ["localhost", "host:99999", "host:65536", "host:", ":x"])
def test_bad_endpoints_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        HostPort.parse(text)


def test_the_highest_port_is_a_port() -> None:
    assert HostPort.parse("host:65535").port == 65535


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
    # An unset secret shows as unset: "[REDACTED]" there would hide that it is missing, which is what one checks.
    assert to_plain(WithSecrets()) == {"headers": {}, "token": "", "name": "x"}


def test_service_defaults_keep_shutdown_within_the_kubernetes_grace_period() -> None:
    assert float(ServiceConfig().shutdown_timeout) < 30


def test_configuration_reference_is_up_to_date() -> None:
    from agent.config.docs import render

    path = Path(__file__).parent.parent.parent / "docs" / "configuration.md"
    assert path.read_text() == render(), "run `make docs` to regenerate docs/configuration.md"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:99999/loki/api/v1/push", "the port must be 1-65535"),
        ("https://loki:0x50/push", "the port must be 1-65535"),
        ("http://loki:0/push", "the port must be 1-65535"),
        ("loki:3100", "must be a URL"),
        ("http://lo ki:3100/push", "must be a URL"),
        ("http://:3100/push", "must be a URL"),  # a port but no host
    ],
)
def test_urls_loki_and_otlp_dial_are_checked_alike(url: str, problem: str) -> None:
    """One URL check for every exporter: the OTLP exporter's adds only what is its own (no query, no signal path)."""
    from agent.config.schema import Url
    from agent.exporters.otlp.config import OtlpExporterConfig

    with pytest.raises(ValueError, match=problem):
        Url.parse(url)
    errors: list[ConfigError] = []
    build(OtlpExporterConfig, {"endpoint": url.removesuffix("/push"), "protocol": "http/protobuf"}, "otlp", errors)
    assert [e.message for e in errors] and all(e.message.startswith(problem) for e in errors), errors


def test_an_otlp_endpoint_with_a_port_out_of_range_is_rejected_without_echoing_its_password() -> None:
    text = """
receivers: {otlp: {}}
exporters: {otlp: {endpoint: "http://u:hunter2@127.0.0.1:99999", protocol: http/protobuf}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [otlp]}}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    message = str(raised.value)
    assert "exporters.otlp.endpoint: the port must be 1-65535" in message and "hunter2" not in message


def test_two_servers_of_the_agent_on_one_address_are_reported_at_validation() -> None:
    text = """
receivers:
  otlp: {grpc: {endpoint: "127.0.0.1:14317"}, http: {endpoint: "0.0.0.0:9464"}}
  otlp/off: {grpc: {enabled: false, endpoint: "127.0.0.1:14317"}, http: {endpoint: "127.0.0.1:14318"}}
exporters: {prometheus: {endpoint: "127.0.0.1:9464"}}
service:
  telemetry: {admin: {endpoint: "127.0.0.1:14317"}}
  pipelines: {metrics: {receivers: [otlp, otlp/off], exporters: [prometheus]}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    assert sorted(str(e) for e in raised.value.errors) == [
        "exporters.prometheus.endpoint: 127.0.0.1:9464 is also where receivers.otlp.http.endpoint listens",
        "receivers.otlp.grpc.endpoint: 127.0.0.1:14317 is also where service.telemetry.admin.endpoint listens",
    ]


@pytest.mark.parametrize(
    ("receivers", "admin"),
    [
        # Port 0 asks the OS for a free port: every such listener gets one of its own.
        ("{otlp: {grpc: {endpoint: '127.0.0.1:0'}, http: {endpoint: '127.0.0.1:14318'}}}", "127.0.0.1:0"),
        ("{otlp: {grpc: {endpoint: '127.0.0.1:0'}, http: {endpoint: '127.0.0.1:0'}}}", "127.0.0.1:14317"),
        # A protocol switched off does not listen on its endpoint (here the default, 127.0.0.1:4317).
        ("{otlp: {grpc: {enabled: false}, http: {endpoint: '127.0.0.1:14318'}}}", "127.0.0.1:4317"),
        # A receiver no pipeline uses is not built, so it does not listen either.
        (
            "{otlp: {http: {endpoint: '127.0.0.1:14318'}}, otlp/unused: {grpc: {endpoint: '127.0.0.1:14317'}}}",
            "127.0.0.1:14317",
        ),
    ],
)
def test_addresses_where_nothing_would_listen_twice_are_not_reported_as_shared(receivers: str, admin: str) -> None:
    text = f"""
receivers: {receivers}
exporters: {{nop: {{}}}}
service:
  telemetry: {{admin: {{endpoint: "{admin}"}}}}
  pipelines: {{traces: {{receivers: [otlp], exporters: [nop]}}}}
"""
    assert "otlp" in load_text(text, environ={}).receivers


@pytest.mark.parametrize(
    ("section", "served"),
    [
        ("{}", {"grpc", "http"}),
        ("{http: {endpoint: '127.0.0.1:14318'}}", {"http"}),
        ("{grpc: {}}", {"grpc"}),
        ("{grpc: {}, http: {enabled: false}}", {"grpc"}),
        ("{http: {enabled: false}}", {"grpc"}),  # switching one off is not asking for it alone
        ("{protocols: {grpc: {enabled: false}}}", {"http"}),
    ],
)
def test_an_otlp_receiver_serves_only_the_protocols_it_names_or_both_when_it_names_none(
    section: str, served: set[str]
) -> None:
    text = f"""
receivers: {{otlp: {section}}}
exporters: {{file: {{path: /tmp/x}}}}
service: {{pipelines: {{traces: {{receivers: [otlp], exporters: [file]}}}}}}
"""
    config = load_text(text, environ={}).receivers["otlp"].config
    assert {protocol for protocol in ("grpc", "http") if getattr(config, protocol).enabled} == served


@pytest.mark.parametrize(
    ("section", "environ"),
    [
        ("grpc:\n      enabled: ${env:GRPC_ON}", {"GRPC_ON": "false"}),
        ("grpc: ${env:GRPC}", {"GRPC": "{enabled: false}"}),
    ],
)
def test_a_protocol_switched_off_through_an_environment_variable_leaves_the_other_on(
    section: str, environ: dict[str, str]
) -> None:
    text = f"""
receivers:
  otlp:
    {section}
exporters: {{file: {{path: /tmp/x}}}}
service: {{pipelines: {{traces: {{receivers: [otlp], exporters: [file]}}}}}}
"""
    config = load_text(text, environ=environ).receivers["otlp"].config
    assert (config.grpc.enabled, config.http.enabled) == (False, True)


def test_an_otlp_receiver_with_both_protocols_disabled_is_an_error() -> None:
    text = """
receivers: {otlp: {http: {enabled: false}, grpc: {enabled: false}}}
exporters: {file: {path: /tmp/x}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [file]}}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    assert [str(e) for e in raised.value.errors] == ["receivers.otlp: enable at least one of grpc and http"]


LOKI_WITH_ENV = """
receivers: {otlp: {}}
exporters:
  loki:
    endpoint: http://loki:3100/loki/api/v1/push
    headers:
      authorization: "${env:TOKEN}"
      x-scope: ${env:TOKEN}
    timeout: ${env:TIMEOUT}
service: {pipelines: {logs: {receivers: [otlp], exporters: [loki]}}}
"""


@pytest.mark.parametrize("token", ["0123", "1.10", "12:30", "abc #1", "yes", "null", "2024-01-01", "~", "[x"])
def test_a_string_field_given_by_an_env_variable_gets_its_exact_text(token: str) -> None:
    """Not the text read as YAML: 0123 is not octal 83, `abc #1` is not `abc` and a comment."""
    config = load_text(LOKI_WITH_ENV, environ={"TOKEN": token, "TIMEOUT": "5s"})
    assert config.exporters["loki"].config.headers == {"authorization": token, "x-scope": token}


@pytest.mark.parametrize("written", ["0123", "007", "1.10", "0x1F", "1_000", "12"])
def test_a_number_written_in_the_file_is_its_text_to_a_string_field(written: str) -> None:
    """YAML 1.1 reads 0123 as octal 83, 1.10 as 1.1 and 1:30 as 90: a tenant id or an attribute value to match
    was silently rewritten, so logs went to another tenant and a rule never matched (pass 111)."""
    text = f"""
receivers: {{otlp: {{}}}}
processors:
  tail_sampling:
    policies:
      attributes: [{{name: v, key: app.version, values: [{written}], retention_class: standard}}]
exporters:
  loki: {{endpoint: "http://loki:3100/loki/api/v1/push", tenant_id: {written}}}
service: {{pipelines: {{logs: {{receivers: [otlp], processors: [tail_sampling], exporters: [loki]}}}}}}
"""
    config = load_text(text)
    assert config.exporters["loki"].config.tenant_id == written
    assert config.processors["tail_sampling"].config.policies.attributes[0].values == [written]
    effective = yaml.safe_dump(config.effective())  # the numbers YAML made are plain ones once parsed
    assert f"tenant_id: '{written}'" in effective
    sexagesimal = load_text(text.replace(f"[{written}]", "[1:30]").replace(f"tenant_id: {written}", "tenant_id: t"))
    assert sexagesimal.processors["tail_sampling"].config.policies.attributes[0].values == ["1:30"]  # not 90


def test_a_number_yaml_reads_as_text_says_so() -> None:
    text = """
receivers: {otlp: {}}
processors: {tail_sampling: {max_traces: 1e5, max_buffered_bytes: 2.5e8}}
exporters: {loki: {endpoint: "http://loki:3100/loki/api/v1/push"}}
service: {pipelines: {logs: {receivers: [otlp], processors: [tail_sampling], exporters: [loki]}}}
"""
    with pytest.raises(ConfigInvalid) as caught:
        load_text(text)
    message = str(caught.value)
    assert (
        "processors.tail_sampling.max_traces: must be an integer, got '1e5' (YAML reads it as text: write 100000)"
        in message
    )


@pytest.mark.parametrize("token", ["[0-9]", "{team-a}", "Basic: abc", "[a, b]", "{a: 1}", "- x"])
def test_text_that_reads_as_a_yaml_list_or_mapping_is_still_exact_text_to_string_fields(token: str) -> None:
    """A regex like [0-9], a header like `Basic: abc`, a path like {team-a}: text to a string field (alone, as an
    optional string, as a map value or a list item), not the list or mapping YAML would make of it."""
    text = """
receivers: {otlp: {}}
processors:
  tail_sampling:
    policies:
      attributes:
        - {name: tenants, key: tenant.id, regex: "${env:V}", retention_class: standard}
      critical_services: {services: ["${env:V}"]}
exporters:
  loki:
    endpoint: http://loki/loki/api/v1/push
    headers: {authorization: "${env:V}"}
  file: {path: "${env:V}"}
service: {pipelines: {logs: {receivers: [otlp], processors: [tail_sampling], exporters: [loki, file]}}}
"""
    config = load_text(text, environ={"V": token})
    assert config.exporters["loki"].config.headers == {"authorization": token}
    assert config.exporters["file"].config.path == token
    policies = config.processors["tail_sampling"].config.policies
    assert policies.attributes[0].regex == token
    assert policies.critical_services.services == [token]


def test_a_list_or_mapping_from_an_env_variable_still_fills_a_list_field_or_a_whole_section() -> None:
    text = """
receivers: {otlp: "${env:OTLP}"}
processors:
  redaction: {allow_keys: "${env:KEYS}", value_patterns: "${env:PATTERNS}"}
exporters: "${env:EXPORTERS}"
service: {pipelines: {traces: {receivers: [otlp], processors: [redaction], exporters: [nop]}}}
"""
    environ = {
        "OTLP": "{protocols: {grpc: {endpoint: '127.0.0.1:6317'}}}",
        "KEYS": "[a, b]",
        "PATTERNS": "{token: 'tok_[0-9]+'}",
        "EXPORTERS": "{nop: {}}",
    }
    config = load_text(text, environ=environ)
    otlp = config.receivers["otlp"].config
    assert (otlp.grpc.endpoint, otlp.http.enabled) == ("127.0.0.1:6317", False)
    redaction = config.processors["redaction"].config
    assert (redaction.allow_keys, redaction.value_patterns) == (["a", "b"], {"token": "tok_[0-9]+"})
    assert list(config.exporters) == ["nop"]


def test_an_env_variable_still_gives_numbers_bools_and_lists_to_fields_of_those_types() -> None:
    text = """
receivers:
  otlp:
    grpc:
      max_recv_msg_size_mib: ${env:SIZE}
      enabled: "${env:ON}"
    retry_after: ${env:RETRY}
processors:
  redaction: {allow_keys: "${env:KEYS}"}
exporters: {nop: {}}
service: {pipelines: {traces: {receivers: [otlp], processors: [redaction], exporters: [nop]}}}
"""
    config = load_text(text, environ={"SIZE": "0032", "ON": "true", "RETRY": "2.5", "KEYS": "[a, b]"})
    grpc = config.receivers["otlp"].config.grpc
    assert (grpc.max_recv_msg_size_mib, grpc.enabled) == (32, True)
    assert config.receivers["otlp"].config.retry_after == 2.5
    octal_looking = load_text(text, environ={"SIZE": "1", "ON": "true", "RETRY": "010", "KEYS": "[]"})
    assert octal_looking.receivers["otlp"].config.retry_after == 10.0  # decimal, not YAML 1.1 octal
    assert config.processors["redaction"].config.allow_keys == ["a", "b"]


def test_a_key_written_twice_in_one_mapping_is_an_error_naming_both_lines() -> None:
    text = """receivers: {otlp: {}}
exporters:
  file: {path: /tmp/a}
  file: {path: /tmp/b}
service: {pipelines: {traces: {receivers: [otlp], exporters: [file]}}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    assert [str(e) for e in raised.value.errors] == [
        "exporters.file: written twice in one mapping (lines 3 and 4); a key may appear once"
    ]


def test_a_key_written_twice_is_listed_with_the_configs_other_problems() -> None:
    """Reported alone as a YAML error, it hid every other problem until it was fixed (pass 89)."""
    text = """receivers: {otlp: {}}
processors:
  tail_sampling:
    max_traces: 1000
    policies: {probabilistic: {percentage: .nan}}
    max_traces: 2000
exporters: {nop: {}}
service: {pipelines: {traces: {receivers: [otlp], processors: [tail_sampling], exporters: [nop]}}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    assert [str(e) for e in raised.value.errors] == [
        "processors.tail_sampling.max_traces: written twice in one mapping (lines 4 and 6); a key may appear once",
        "processors.tail_sampling.policies.probabilistic.percentage: must be a finite number, got nan",
    ]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_not_a_number_and_infinity_are_refused_by_number_fields(value: str) -> None:
    text = f"""
receivers: {{otlp: {{retry_after: {value}}}}}
exporters: {{nop: {{}}}}
service: {{pipelines: {{traces: {{receivers: [otlp], exporters: [nop]}}}}}}
"""
    with pytest.raises(ConfigInvalid, match=r"receivers\.otlp\.retry_after: must be a finite number"):
        load_text(text, environ={})


def test_a_nan_sampling_percentage_is_refused_at_load_not_when_the_agent_starts() -> None:
    text = """
receivers: {otlp: {}}
processors: {tail_sampling: {policies: {probabilistic: {percentage: .nan}}}}
exporters: {nop: {}}
service: {pipelines: {traces: {receivers: [otlp], processors: [tail_sampling], exporters: [nop]}}}
"""
    with pytest.raises(ConfigInvalid, match=r"probabilistic\.percentage: must be a finite number"):
        load_text(text, environ={})


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("250us", 0.00025), ("250µs", 0.00025), ("10ns", 1e-8)])
def test_go_durations_zero_and_sub_millisecond_units_parse(text: str, seconds: float) -> None:
    assert Duration.parse(text) == pytest.approx(seconds)


def test_a_bare_zero_duration_is_no_time_as_the_docs_say() -> None:
    text = """
receivers: {otlp: {}}
exporters: {otlp: {endpoint: "jaeger:4317", tls: {insecure: true}, retry_on_failure: {max_elapsed_time: 0}}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [otlp]}}}
"""
    config = load_text(text, environ={})
    assert config.exporters["otlp"].config.retry_on_failure.max_elapsed_time == 0.0


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://user:p4ss@logs.example.net/loki/api/v1/push", "https://user:p4ss@logs.example.net/loki/api/v1/push"),
        ("http://[::1]:3100/loki/api/v1/push", "http://[::1]:3100/loki/api/v1/push"),
        ("HTTP://loki:3100/loki/api/v1/push", "http://loki:3100/loki/api/v1/push"),
    ],
)
def test_urls_with_basic_auth_ipv6_hosts_or_an_upper_case_scheme_are_taken(url: str, kept: str) -> None:
    from agent.config.schema import Url

    assert Url.parse(url) == kept


def test_a_refused_url_is_shown_in_the_error_without_its_password() -> None:
    from agent.config.schema import Url

    with pytest.raises(ValueError, match=r"must be a URL .*'ftp://\[REDACTED\]@loki/push'") as raised:
        Url.parse("ftp://u:hunter2@loki/push")
    assert "hunter2" not in str(raised.value)


def test_a_pipeline_id_with_a_slash_needs_a_name_after_it() -> None:
    text = """
receivers: {otlp: {}}
exporters: {nop: {}}
service: {pipelines: {traces/: {receivers: [otlp], exporters: [nop]}}}
"""
    with pytest.raises(ConfigInvalid, match=r"service\.pipelines\.traces/: pipeline id must be signal or signal/name"):
        load_text(text, environ={})


def test_the_collectors_protocols_level_in_the_otlp_receiver_is_taken() -> None:
    text = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:14317"}
exporters: {nop: {}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [nop]}}}
"""
    otlp = load_text(text, environ={}).receivers["otlp"].config
    assert (otlp.grpc.enabled, str(otlp.grpc.endpoint), otlp.http.enabled) == (True, "127.0.0.1:14317", False)
    both = load_text(text.replace('grpc: {endpoint: "127.0.0.1:14317"}', "{grpc: , http: }"), environ={})
    assert both.receivers["otlp"].config.grpc.enabled and both.receivers["otlp"].config.http.enabled
    # What protocols: holds and is no protocol is named under it, not blamed on protocols (pass 111).
    with pytest.raises(ConfigInvalid, match=r"receivers\.otlp\.protocols\.htp: unknown protocol; did you mean http\?"):
        load_text(text.replace("grpc: {", "htp: {}\n      grpc: {"), environ={})
    twice = text.replace("    protocols:", '    grpc: {endpoint: "127.0.0.1:14318"}\n    protocols:')
    with pytest.raises(ConfigInvalid) as caught:
        load_text(twice, environ={})
    assert [str(e) for e in caught.value.errors] == [
        "receivers.otlp.protocols.grpc: grpc is given both under protocols: and beside it; keep one"
    ]
    with pytest.raises(ConfigInvalid) as caught:
        load_text(text.replace('\n      grpc: {endpoint: "127.0.0.1:14317"}', " 5"), environ={})
    assert [str(e) for e in caught.value.errors] == [
        "receivers.otlp.protocols: must be a mapping holding grpc and/or http, got a number"  # not 'YamlInt'
    ]


def test_a_key_written_twice_on_one_line_is_an_error_too() -> None:
    text = """receivers: {otlp: {}}
exporters: {file: {path: /tmp/a}, file/b: {path: /tmp/b}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [file], exporters: [file/b]}}}
"""
    with pytest.raises(
        ConfigInvalid, match=r"service\.pipelines\.traces\.exporters: written twice .*\(lines 3 and 3\)"
    ):
        load_text(text, environ={})


def test_yaml_merge_keys_still_share_settings_and_may_be_overridden() -> None:
    text = """receivers: {otlp: {}}
exporters:
  file: &common {path: /tmp/a, rotation: {max_megabytes: 5}}
  file/b: {<<: *common, path: /tmp/b}
service: {pipelines: {traces: {receivers: [otlp], exporters: [file, file/b]}}}
"""
    exporters = load_text(text, environ={}).exporters
    assert exporters["file/b"].config.path == "/tmp/b"
    assert exporters["file/b"].config.rotation.max_megabytes == 5


@pytest.mark.parametrize(
    "url",
    [
        "https://123456:glc_eyJrIjoi/ab+cd=@logs-prod.grafana.net/loki/api/v1/push",  # a / in a base64 token
        "https://user:p@ss@logs.example.net/loki/api/v1/push",  # an @ in the password
        # Pass 140: a #, ? or space ended the masked part, and the rest of the password was shown.
        "https://user:pa#ss@logs.example.net:99999/loki/api/v1/push",
        "https://user:pa?ss@logs.example.net:99999/loki/api/v1/push",
        "https://user:pa ss@logs.example.net/loki/api/v1/push",
    ],
)
def test_a_password_with_a_slash_or_an_at_sign_is_masked_whole(url: str) -> None:
    from agent.config.schema import Url, without_credentials

    password = url.split("://")[1].rsplit("@", 1)[0].split(":", 1)[1]
    assert without_credentials(url) == "https://[REDACTED]@" + url.rsplit("@", 1)[1]
    try:
        Url.parse(url)
    except ValueError as refused:  # a / in the password is not a URL; the error must not show it either
        assert password not in str(refused) and "%2F" in str(refused)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://loki/loki/api/v1/push?api_key=LEAKKEY", "http://loki/loki/api/v1/push?api_key=[REDACTED]"),
        ("user:LEAKPW@collector:4317", "[REDACTED]@collector:4317"),  # a gRPC endpoint has no scheme
        ("jaeger-collector:4317", "jaeger-collector:4317"),
        ("token(?!s|izer)", "token(?!s|izer)"),  # not a URL: a pattern in the redaction config
    ],
)
def test_credentials_in_a_query_string_or_a_schemeless_endpoint_are_masked_when_shown(text: str, shown: str) -> None:
    from agent.config.schema import without_credentials

    assert without_credentials(text) == shown


def test_print_config_and_validation_errors_mask_a_url_query_and_a_schemeless_password() -> None:
    text = """
receivers: {otlp: {}}
exporters:
  loki: {endpoint: "http://loki:3100/loki/api/v1/push?api_key=LEAKLOKIKEY"}
service: {pipelines: {logs: {receivers: [otlp], exporters: [loki]}}}
"""
    assert "LEAKLOKIKEY" not in yaml.safe_dump(load_text(text, environ={}).effective())
    broken = text.replace("exporters:\n", 'exporters:\n  otlp: {endpoint: "user:LEAKGRPCPW@collector:4317"}\n')
    with pytest.raises(ConfigInvalid) as raised:
        load_text(broken, environ={})
    assert "LEAKGRPCPW" not in str(raised.value) and "[REDACTED]@collector:4317" in str(raised.value)


@pytest.mark.parametrize("written", ["", "retry_on_failure: {max_elapsed_time: 15m}", "retry_on_failure: {}"])
def test_the_loadbalancing_exporter_waits_1s_before_its_first_retry_whatever_of_the_section_is_written(
    written: str,
) -> None:
    """Its own default (a gateway's traces should move soon), whether retry_on_failure is absent, empty or
    partly written, and the reference says so."""
    from agent.config.schema import describe_fields
    from agent.exporters.loadbalancing.config import LoadBalancingExporterConfig

    text = f"""
receivers: {{otlp: {{}}}}
exporters:
  loadbalancing:
    resolver: {{static: {{hostnames: ["gw:4317"]}}}}
    {written}
service: {{pipelines: {{traces: {{receivers: [otlp], exporters: [loadbalancing]}}}}}}
"""
    config = load_text(text, environ={})
    retry = config.exporters["loadbalancing"].config.retry_on_failure
    assert retry.initial_interval == 1.0
    assert config.effective()["exporters"]["loadbalancing"]["retry_on_failure"]["initial_interval"] == "1s"
    documented = {path: default for path, _, default, _ in describe_fields(LoadBalancingExporterConfig)}
    assert documented["retry_on_failure.initial_interval"] == "`1s`"


def test_a_nested_section_left_out_has_the_same_defaults_as_one_written_empty() -> None:
    """A component's default for a nested section (a default_factory) must be what building `{}` gives, or the
    default would change as soon as any key of the section is written. Give such a default by a subclass of the
    section's class with its own field default."""
    import dataclasses
    import typing

    from agent.registry import FACTORIES

    def mismatches(cls: type, prefix: str) -> list[str]:
        found = []
        hints = typing.get_type_hints(cls)
        for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
            tp, path = hints[spec.name], f"{prefix}.{spec.name}"
            if not dataclasses.is_dataclass(tp):
                continue
            found += mismatches(tp, path)  # type: ignore[arg-type]
            if spec.default_factory is dataclasses.MISSING:
                continue
            errors: list[ConfigError] = []
            built = build(tp, {}, path, errors)  # type: ignore[type-var]
            if not errors and built != spec.default_factory():
                found.append(path)
        return found

    classes = [(f.config_class, f"{f.kind.section}.{f.type}") for f in FACTORIES] + [(ServiceConfig, "service")]
    assert [path for cls, prefix in classes for path in mismatches(cls, prefix)] == []


def test_a_sections_own_checks_still_run_beside_a_wrong_field_but_not_about_it() -> None:
    """``validate()`` runs on the fields that parsed: a problem there is listed too, while one that names the wrong
    field is left out (it would be about that field's default, not what was written)."""
    from agent.processors.tail_sampling.config import TailSamplingConfig

    def problems(raw: dict[str, Any]) -> list[str]:
        errors: list[ConfigError] = []
        build(TailSamplingConfig, raw, "processors.tail_sampling", errors)
        return [str(e) for e in errors]

    assert problems({"decision_wait": "10s", "decision_wait_after_root": "40s", "tick_interval": "0s"}) == [
        "processors.tail_sampling.tick_interval: must be longer than 0s",
        "processors.tail_sampling.decision_wait_after_root: must not exceed decision_wait",
    ]
    assert problems({"decision_wait": "soon", "decision_wait_after_root": "40s", "tick_interval": "0s"}) == [
        "processors.tail_sampling.decision_wait: must be a duration like '10s', '500ms' or '2m', got 'soon'",
        "processors.tail_sampling.tick_interval: must be longer than 0s",
    ]


def test_a_yaml_alias_bomb_is_refused_at_once_not_expanded() -> None:
    """Nine levels of ten aliases are a few lines of YAML and 10**9 values to walk: the agent must say so, not
    hang with gigabytes of memory."""
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 9)]
    with pytest.raises(ConfigInvalid, match="holds more than 100000 values, counting each use of a YAML alias"):
        load_text("\n".join(levels))
    bomb = "\n".join(levels).replace("\n", "\n  ")
    with pytest.raises(ConfigInvalid):  # the same from an environment variable: taken as text, not expanded
        load_text("receivers: ${env:BOMB}", environ={"BOMB": "{" + bomb.replace("\n  ", ", ") + "}"})


def test_a_mistake_elsewhere_under_service_does_not_hide_the_pipelines_undefined_components() -> None:
    text = """
receivers: {otlp: {}}
exporters: {nop: {}}
service:
  shutdown_timeout: 20
  pipelines:
    traces: {receivers: [otlp], exporters: [nop, otlp/jaeger]}
    logs: {receivers: [otlp], exporters: [nop, nop]}
    bogus: {receivers: [otlp], exporters: [nop]}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    assert sorted(str(e) for e in raised.value.errors) == [
        "service.pipelines.bogus: pipeline id must start with traces, metrics or logs",
        "service.pipelines.logs.exporters: names nop more than once",
        "service.pipelines.traces.exporters[1]: exporter otlp/jaeger is not defined under exporters or connectors",
        "service.shutdown_timeout: must be a duration like '10s', '500ms' or '2m', got 20",
    ]


def test_references_nested_deeper_than_python_recurses_are_a_config_error_not_a_traceback() -> None:
    value = "${env:A:-" * 1000 + "x" + "}" * 1000
    text = f'receivers: {{otlp: {{}}}}\nexporters: {{file: {{path: "{value}"}}}}\n'
    text += "service: {pipelines: {traces: {receivers: [otlp], exporters: [file]}}}\n"
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    assert [str(e) for e in raised.value.errors] == ["exporters.file.path: references nested too deeply"]


def test_one_receivers_grpc_and_http_may_not_share_an_endpoint_unless_it_is_port_0() -> None:
    text = """
receivers: {otlp: {grpc: {endpoint: '127.0.0.1:14317'}, http: {endpoint: '127.0.0.1:14317'}}}
exporters: {nop: {}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [nop]}}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    assert "receivers.otlp.http.endpoint: must differ from grpc.endpoint" in [str(e) for e in raised.value.errors]
    assert "otlp" in load_text(text.replace("14317", "0"), environ={}).receivers


def test_a_value_from_an_environment_variable_names_the_variable_in_its_error() -> None:
    """An operator who set only OTEL_SIDECAR_CRITICAL_SERVICES=payments (the README asks for a YAML list) was told
    a setting path they never wrote (pass 89)."""
    text = """receivers: {otlp: {}}
processors:
  tail_sampling:
    policies: {critical_services: {services: "${env:OTEL_SIDECAR_CRITICAL_SERVICES:-[]}"}}
exporters: {otlp: {endpoint: "jaeger:4317", timeout: "${env:TIMEOUT}s", tls: {insecure: true}}}
service: {pipelines: {traces: {receivers: [otlp], processors: [tail_sampling], exporters: [otlp]}}}
"""
    environ = {"OTEL_SIDECAR_CRITICAL_SERVICES": "payments", "TIMEOUT": "ten"}
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ=environ)
    assert [str(e) for e in raised.value.errors] == [
        "processors.tail_sampling.policies.critical_services.services: must be a list, got a string "
        "(the value comes from ${env:OTEL_SIDECAR_CRITICAL_SERVICES})",
        "exporters.otlp.timeout: must be a duration like '10s', '500ms' or '2m', got 'tens' "
        "(the value comes from ${env:TIMEOUT})",
    ]
    # A default used, or a value written in the file, is the file's: nothing to name.
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text.replace("${env:TIMEOUT}s", "tens"), environ={})
    assert [str(e) for e in raised.value.errors] == [
        "exporters.otlp.timeout: must be a duration like '10s', '500ms' or '2m', got 'tens'"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Keys YAML builds alike: 1, 0x1 and true are one key of a Python dict.
        ("exporters:\n  nop:\n    1: a\n    0x1: b\n", "exporters.nop.1: written twice in one mapping (lines 3 and 4)"),
        (
            "exporters:\n  nop:\n    1: a\n    true: b\n",
            "exporters.nop.True: written twice in one mapping (lines 3 and 4)",
        ),
        # An alias of a key written before: the composed node is the anchored one.
        ("exporters:\n  nop:\n    &k a: 1\n    *k : 2\n", "exporters.nop.a: written twice in one mapping (line 3, and"),
        # Found where the anchor is, not where an alias repeats it.
        ("exporters:\n  nop: &n {a: 1, a: 2}\n  nop/2: *n\n", "exporters.nop.a: written twice in one mapping (lines 2"),
    ],
)
def test_keys_written_twice_are_compared_as_yaml_builds_them(text: str, expected: str) -> None:
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    assert next(str(e) for e in raised.value.errors if "written twice" in str(e)).startswith(expected)


@pytest.mark.parametrize("key", ["[a, b]", "? {a: 1}\n  "])
def test_a_list_or_mapping_as_a_key_is_a_config_error_not_a_crash(key: str) -> None:
    with pytest.raises(ConfigInvalid, match=r"(?s)not valid YAML: .*found unhashable key"):
        load_text(f"receivers:\n  {key}: 1\n", environ={})


def test_only_variables_a_wrong_value_really_took_are_named() -> None:
    """Named before: a set variable written as a literal (`$${env:HOME}`), one in a default that was not used,
    and a sibling key's whose name is a prefix of the wrong key's with a dot (pass 92)."""
    text = """receivers: {otlp: {}}
exporters:
  otlp:
    endpoint: "jaeger:4317"
    tls: {insecure: true}
    headers:
      x-tenant: "${env:TENANT}"
      x-tenant.sig-bin: "abc"
      x-note: "$${env:HOME} \\u0007"
    timeout: "${env:TIMEOUT:-${env:FALLBACK}}"
service: {pipelines: {traces: {receivers: [otlp], exporters: [otlp]}}}
"""
    environ = {"TENANT": "t1", "HOME": "/root", "TIMEOUT": "ten", "FALLBACK": "5s"}
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ=environ)
    named = {e.path: e.message for e in raised.value.errors}
    assert "(the value comes from" not in named["exporters.otlp.headers.x-tenant.sig-bin"]
    assert "(the value comes from" not in named["exporters.otlp.headers.x-note"]
    assert named["exporters.otlp.timeout"].endswith("(the value comes from ${env:TIMEOUT})")


def test_a_tagged_value_yaml_cannot_read_is_a_config_error_not_a_crash() -> None:
    with pytest.raises(ConfigInvalid, match="not valid YAML"):
        load_text("receivers: {otlp: {grpc: {enabled: !!bool maybe}}}\n", environ={})


def test_an_undefined_component_in_a_pipeline_is_told_the_id_it_most_likely_meant() -> None:
    text = """
receivers: {otlp: {}}
processors: {tail_sampling: {}}
exporters: {nop: {}, otlp/jaeger: {endpoint: "jaeger:4317", tls: {insecure: true}}}
service: {pipelines: {traces: {receivers: [otlp], processors: [tail_samplng], exporters: [nopp, "otlp/jaeger "]}}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    assert [str(e) for e in raised.value.errors] == [
        "service.pipelines.traces.processors[0]: processor tail_samplng is not defined under processors; "
        "did you mean tail_sampling?",
        "service.pipelines.traces.exporters[0]: exporter nopp is not defined under exporters or connectors; "
        "did you mean nop?",
        "service.pipelines.traces.exporters[1]: exporter 'otlp/jaeger ' is not defined under exporters or "
        "connectors; did you mean otlp/jaeger?",
    ]


def test_a_config_file_too_large_to_be_a_config_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """A 9 MB file took 34 s and 550 MB to parse before being refused (pass 111)."""
    huge = tmp_path / "huge.yaml"
    huge.write_text("receivers: {otlp: {}}\n" + "# padding\n" * 500_000)
    with pytest.raises(
        ConfigInvalid, match=r"config file .*huge\.yaml is 5_000_022 bytes; at most 4_194_304 \(4 MiB\) are read"
    ):
        load_path(huge)


def test_a_collector_configs_extensions_are_explained_not_just_unknown() -> None:
    text = """
extensions: {health_check: {}}
receivers: {otlp: {}}
exporters: {nop: {}}
service: {extensions: [health_check], pipelines: {traces: {receivers: [otlp], exporters: [nop]}}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    told = "the agent has no extensions: its health endpoints and own metrics are served at service.telemetry.admin"
    assert [str(e) for e in raised.value.errors] == [
        f"extensions: {told}; remove it",
        f"service.extensions: {told}; remove it",
    ]


def test_a_collector_configs_usual_components_say_what_serves_them_here() -> None:
    """A Collector config's batch processor, debug exporter and otlphttp exporter were only "unknown" (pass 150)."""
    text = """
receivers: {otlp: {}}
processors: {batch: {}, probabilistic_sampler: {}}
exporters: {debug: {}, logging: {}, otlphttp: {endpoint: "http://jaeger:4318"}}
service: {pipelines: {traces: {receivers: [otlp], processors: [batch], exporters: [debug]}}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    told = {str(e).split(";")[0]: str(e).rsplit("; ", 1)[1] for e in raised.value.errors if "unknown" in str(e)}
    assert told == {
        "processors.batch: unknown processor type 'batch'": "batching is each exporter's own here, in "
        "exporters.<id>.batch (min_size, max_size, flush_timeout): remove this processor and its pipeline entries",
        "processors.probabilistic_sampler: unknown processor type 'probabilistic_sampler'": "sampling is "
        "tail_sampling's: its probabilistic policy keeps a share of normal traces, consistent by trace id",
        "exporters.debug: unknown exporter type 'debug'": "to see what goes out, use the file exporter "
        "(OTLP/JSON lines), or nop to discard",
        "exporters.logging: unknown exporter type 'logging'": "to see what goes out, use the file exporter "
        "(OTLP/JSON lines), or nop to discard",
        "exporters.otlphttp: unknown exporter type 'otlphttp'": "use otlp with protocol: http/protobuf and a base "
        "URL such as http://jaeger:4318",
    }


def test_a_refused_value_holding_a_bare_dollar_name_says_how_to_write_the_variable() -> None:
    """`$JAEGER_EP`, the Collector's old way, was refused as "must be host:port or a URL" with no word of the
    variable (pass 150). A value accepted with one stays as written: a password may hold a $, and $$ is a $."""
    text = """
receivers: {otlp: {}}
exporters:
  otlp: {endpoint: "$JAEGER_EP"}
  otlp/b: {endpoint: "jaeger:4317", headers: {authorization: "Basic pa$word"}, tls: {insecure: true}}
  otlp/c: {endpoint: "$$JAEGER_EP"}
service: {pipelines: {traces: {receivers: [otlp], exporters: [otlp, otlp/b, otlp/c]}}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={"JAEGER_EP": "jaeger:4317"})
    assert [str(e) for e in raised.value.errors] == [
        "exporters.otlp.endpoint: must be host:port or a URL, got '$JAEGER_EP' ($JAEGER_EP is taken as text: write "
        "${env:JAEGER_EP} for the environment variable)",
        "exporters.otlp/c.endpoint: must be host:port or a URL, got '$JAEGER_EP'",
    ]


@pytest.mark.parametrize("value", ["!!bool maybe", "!!int ''", "!!float ''", "!!timestamp x"])
def test_a_tagged_value_yaml_cannot_read_is_an_error_not_a_crash(value: str) -> None:
    with pytest.raises(ConfigInvalid, match="not valid YAML: a tagged value it cannot read"):
        load_text(f"receivers: {{otlp: {{}}}}\nservice: {{shutdown_timeout: {value}}}\n", environ={})


@pytest.mark.parametrize(
    ("value", "told"), [("2024-01-01", "a date"), ("!!binary aGk=", "binary data"), ("!!set {a}", "a set")]
)
def test_yaml_values_are_named_in_the_writers_words(value: str, told: str) -> None:
    with pytest.raises(ConfigInvalid, match=f"receivers.otlp: must be a mapping, got {told}"):
        load_text(f"receivers: {{otlp: {value}}}\nexporters: {{nop: {{}}}}\n", environ={})


def test_a_config_file_of_exactly_the_size_limit_is_read_and_one_byte_more_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "receivers: {otlp: {}}\nexporters: {nop: {}}\n"
    text += "service: {pipelines: {traces: {receivers: [otlp], exporters: [nop]}}}\n"
    monkeypatch.setattr(loader, "MAX_CONFIG_BYTES", len(text) + 1)
    at_limit = tmp_path / "at_limit.yaml"
    at_limit.write_text(text + "#")
    assert "otlp" in load_path(at_limit).receivers
    over = tmp_path / "over.yaml"
    over.write_text(text + "##")
    with pytest.raises(ConfigInvalid, match=rf"is {len(text) + 2} bytes; at most {len(text) + 1} "):
        load_path(over)


def test_the_value_budget_takes_exactly_its_count_of_values_and_refuses_one_more() -> None:
    assert not expands_past({"a": [1, 2], "b": 3}, 5)  # the mapping, its list, 1, 2 and 3: five values
    assert expands_past({"a": [1, 2], "b": 3}, 4)
    assert expands_past({"a": [1, 2, 3], "b": 3}, 5)


def test_an_environment_variable_set_but_empty_is_empty_text_to_a_number_field_not_nothing() -> None:
    text = """receivers: {otlp: {grpc: {max_recv_msg_size_mib: "${env:SIZE}"}}}
exporters: {nop: {}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [nop]}}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={"SIZE": ""})
    assert [str(e) for e in raised.value.errors] == [
        "receivers.otlp.grpc.max_recv_msg_size_mib: must be an integer, got '' (the value comes from ${env:SIZE})"
    ]


def test_a_key_written_three_times_is_reported_against_the_one_before_each_time() -> None:
    with pytest.raises(ConfigInvalid) as raised:
        load_text("exporters:\n  nop:\n    a: 1\n    a: 2\n    a: 3\n", environ={})
    twice = [str(e) for e in raised.value.errors if "written twice" in str(e)]
    assert twice == [
        "exporters.nop.a: written twice in one mapping (lines 3 and 4); a key may appear once",
        "exporters.nop.a: written twice in one mapping (lines 4 and 5); a key may appear once",
    ]


def test_an_environment_variable_holding_null_leaves_an_optional_number_unset() -> None:
    text = """receivers: {otlp: {}}
processors:
  tail_sampling:
    policies:
      attributes: [{name: big, key: tenant.size, min_value: "${env:MIN}", max_value: "${env:MAX}"}]
exporters: {nop: {}}
service: {pipelines: {traces: {receivers: [otlp], processors: [tail_sampling], exporters: [nop]}}}
"""
    config = load_text(text, environ={"MIN": "~", "MAX": "10"})
    [rule] = config.processors["tail_sampling"].config.policies.attributes
    assert (rule.min_value, rule.max_value) == (None, 10.0)


def test_an_unknown_retention_class_is_said_before_the_class_no_exporter_takes() -> None:
    """The unknown class is the cause of the class none takes: validate lists it first."""
    text = """
receivers: {otlp: {}}
exporters:
  otlp/archive: {endpoint: "jaeger:4317", retention_classes: [eror]}
  otlp: {endpoint: "jaeger:4317", retention_classes: [standard]}
service:
  pipelines: {traces: {receivers: [otlp], exporters: [otlp/archive, otlp]}}
  retention: {classes: {error: 30d, standard: 7d}}
"""
    with pytest.raises(ConfigInvalid) as raised:
        load_text(text, environ={})
    said = [str(e) for e in raised.value.errors]
    assert [e.split(":", 1)[0] for e in said] == [
        "exporters.otlp/archive.retention_classes[0]",
        "service.pipelines.traces.exporters",
    ], said
