"""The command line's answers when the agent cannot start: a log line and an exit code, never a bare traceback."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest

from agent import app, cli
from agent.config.schema import ConfigError, ConfigInvalid


class _FailingAgent:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def run(self) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (ValueError("nameserver 'x' is not an IP address"), cli.EXIT_START_FAILED, "agent failed to start"),
        (OSError("address already in use"), cli.EXIT_START_FAILED, "agent failed to start"),
        (ConfigInvalid([ConfigError("service.pipelines", "connectors form a cycle")]), cli.EXIT_INVALID_CONFIG, ""),
    ],
)
def test_an_agent_that_cannot_start_exits_with_a_code_and_a_logged_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception, code: int, message: str
) -> None:
    monkeypatch.setattr(app, "Agent", lambda config, **_: _FailingAgent(error))
    assert cli.main(["run"]) == code
    logging.shutdown()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    logged = {line["message"]: line for line in lines}
    if code == cli.EXIT_INVALID_CONFIG:
        assert logged["invalid configuration"]["errors"] == ["service.pipelines: connectors form a cycle"]
    else:
        assert str(error) in logged[message]["error"]


def test_sighup_is_handled_unless_the_process_was_started_to_ignore_it() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # whatever the test run itself was started with
    try:
        assert signal.SIGHUP in app.handled_signals()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts it
        assert app.handled_signals() == [signal.SIGTERM, signal.SIGINT]
    finally:
        signal.signal(signal.SIGHUP, previous)


TLS_FILES_MISSING = """
receivers:
  otlp: {grpc: {endpoint: "127.0.0.1:0"}, http: {endpoint: "127.0.0.1:0"}}
exporters:
  otlp/jaeger: {endpoint: "https://jaeger:4317", tls: {ca_file: "%s"}}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [otlp/jaeger]}
  telemetry:
    admin: {endpoint: "127.0.0.1:0"}
"""


def test_validate_checks_the_config_and_with_check_files_also_reads_its_tls_files_as_a_start_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the flag the config alone is checked (CI has no pod's certificates); with it, a missing CA file
    that would fail the start fails validate too, naming the setting and the file."""
    missing = tmp_path / "absent-ca.pem"
    config = tmp_path / "agent.yaml"
    config.write_text(TLS_FILES_MISSING % missing)
    assert cli.main(["validate", "--config", str(config)]) == cli.EXIT_OK
    assert capsys.readouterr().out == f"{config}: valid\n"
    assert cli.main(["validate", "--check-files", "--config", str(config)]) == cli.EXIT_INVALID_CONFIG
    assert capsys.readouterr().err == (
        f"{config}: cannot start: exporters.otlp/jaeger.tls: TLS file(s) not found: {missing}\n"
    )
    assert cli.main(["validate", "--check-files"]) == cli.EXIT_OK  # the packaged default names no files
    assert capsys.readouterr().out == "default config: valid, and its files and queue directories are usable\n"


QUEUE_ON_DISK = """
receivers: {otlp: {}}
exporters:
  otlp/jaeger: {endpoint: "jaeger:4317", sending_queue: {storage: {directory: "%s"}}}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [otlp/jaeger]}
  telemetry:
    admin: {endpoint: "127.0.0.1:0"}
"""


def test_validate_check_files_reports_a_queue_directory_the_exporter_could_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The start would fail making it (found by a new user: validate said usable, the start failed)."""
    config = tmp_path / "agent.yaml"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config.write_text(QUEUE_ON_DISK % (blocker / "queue"))
    assert cli.main(["validate", "--check-files", "--config", str(config)]) == cli.EXIT_INVALID_CONFIG
    assert capsys.readouterr().err == (
        f"{config}: cannot start: exporters.otlp/jaeger.sending_queue.storage.directory: "
        f"{blocker / 'queue' / 'otlp__jaeger'} cannot be made in {blocker}\n"
    )
    # The exporter's own subdirectory is what it makes: a file there fails the start too.
    root = tmp_path / "queues"
    root.mkdir()
    (root / "otlp__jaeger").write_text("")
    config.write_text(QUEUE_ON_DISK % root)
    assert cli.main(["validate", "--check-files", "--config", str(config)]) == cli.EXIT_INVALID_CONFIG
    assert "otlp__jaeger is not a writable directory" in capsys.readouterr().err
    config.write_text(QUEUE_ON_DISK % (tmp_path / "not" / "yet" / "there"))
    assert cli.main(["validate", "--check-files", "--config", str(config)]) == cli.EXIT_OK
    assert not (tmp_path / "not").exists()  # checked, not made


UNUSED = """
receivers: {otlp: {}}
processors: {tail_sampling: {}, redaction: {}}
exporters: {file: {path: "%s"}, loki: {endpoint: "http://loki:3100/loki/api/v1/push"}, otlp: {endpoint: "jaeger:4317"}}
service: {pipelines: {traces: {receivers: [otlp], processors: [tail_sampling], exporters: [file]}}}
"""


def test_validate_warns_of_components_no_pipeline_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """They are never built, as in the Collector; a redaction processor forgotten in the pipelines means secrets
    go out, so it must not pass in silence (pass 111). Per section: the receiver ``otlp`` in a pipeline does not
    make the exporter ``otlp`` used (pass 127)."""
    config = tmp_path / "config.yaml"
    config.write_text(UNUSED % (tmp_path / "out"))
    assert cli.main(["--config", str(config), "validate"]) == cli.EXIT_OK
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{config}: warning: processors.redaction: defined but used by no pipeline (it does nothing)",
        f"{config}: warning: exporters.loki: defined but used by no pipeline (it does nothing)",
        f"{config}: warning: exporters.otlp: defined but used by no pipeline (it does nothing)",
    ]
    config.write_text((UNUSED % (tmp_path / "out")).replace("tail_sampling]", "tail_sampling, redaction]"))
    config.write_text(config.read_text().replace("exporters: [file]", "exporters: [file, loki, otlp]"))
    assert cli.main(["--config", str(config), "validate"]) == cli.EXIT_OK
    assert capsys.readouterr().err == ""


def test_a_queue_directory_under_a_parent_that_may_not_be_searched_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's Path.exists raises for EACCES (a root-owned 0700 parent, the agent not root)."""

    def denied(self: Path, *args: object, **kwargs: object) -> bool:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "exists", denied)
    assert cli._directory_problem(tmp_path / "locked" / "q") == "cannot be reached: Permission denied"


@pytest.mark.parametrize("denied", [os.W_OK, os.X_OK])
def test_validate_reports_a_queue_directory_the_agent_may_not_write_or_enter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], denied: int
) -> None:
    """The tests run as root, for whom every directory is writable: the permission is denied through os.access,
    as a non-root agent would meet it."""
    config = tmp_path / "agent.yaml"
    root = tmp_path / "queues"
    (root / "otlp__jaeger").mkdir(parents=True)
    config.write_text(QUEUE_ON_DISK % root)
    monkeypatch.setattr(cli.os, "access", lambda path, mode, **_: not mode & denied)
    assert cli.main(["validate", "--check-files", "--config", str(config)]) == cli.EXIT_INVALID_CONFIG
    assert f"{root / 'otlp__jaeger'} is not a writable directory" in capsys.readouterr().err
