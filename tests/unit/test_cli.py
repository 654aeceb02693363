"""The command line's answers when the agent cannot start: a log line and an exit code, never a bare traceback."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

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


FILE_EXPORTER = """
receivers: {otlp: {}}
exporters: {file: {path: "%s"}}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [file]}
  telemetry:
    admin: {endpoint: "127.0.0.1:0"}
"""


def test_validate_check_files_reports_a_file_exporter_path_the_exporter_could_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new user's OTEL_SIDECAR_FILE_PATH naming a file: validate said the files were usable, and the start
    failed with "File exists" (pass 150)."""
    config = tmp_path / "agent.yaml"
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    config.write_text(FILE_EXPORTER % a_file)
    assert cli.main(["validate", "--check-files", "--config", str(config)]) == cli.EXIT_INVALID_CONFIG
    assert (
        capsys.readouterr().err
        == f"{config}: cannot start: exporters.file.path: {a_file} is not a writable directory\n"
    )
    config.write_text(FILE_EXPORTER % (tmp_path / "out"))
    assert cli.main(["validate", "--check-files", "--config", str(config)]) == cli.EXIT_OK
    assert not (tmp_path / "out").exists()  # checked, not made


def test_a_directory_root_may_write_by_its_permissions_but_cannot_make_is_reported() -> None:
    """os.access says yes to root everywhere; /proc takes no new directory (pass 150: validate passed
    storage.directory: /proc/nope/queue, and the start failed)."""
    assert cli._directory_problem(Path("/proc/nope/queue")) == "cannot be made in /proc: No such file or directory"


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


class _RecordingAgent:
    def __init__(self, config: object, ran: list[object]) -> None:
        self.config, self.ran = config, ran

    async def run(self) -> None:
        self.ran.append(self.config)


def test_a_config_given_without_a_command_is_run_as_otelcol_runs_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`otel-sidecar --config X` runs the agent (the default command), not only checks the config."""
    config = tmp_path / "agent.yaml"
    config.write_text(UNUSED % (tmp_path / "out"))
    ran: list[object] = []
    monkeypatch.setattr(app, "Agent", lambda config, **_: _RecordingAgent(config, ran))
    assert cli.main(["--config", str(config)]) == cli.EXIT_OK
    logging.shutdown()
    assert len(ran) == 1


def test_print_config_keeps_the_sections_in_the_config_order(capsys: pytest.CaptureFixture[str]) -> None:
    """Receivers first, the service last, as a Collector config reads: not sorted alphabetically."""
    assert cli.main(["print-config"]) == cli.EXIT_OK
    printed = yaml.safe_load(capsys.readouterr().out)
    assert list(printed) == ["receivers", "processors", "connectors", "exporters", "service"]
    assert list(printed["service"])[:2] == ["pipelines", "telemetry"]


ADMIN_TLS_FILES_MISSING = FILE_EXPORTER.replace(
    'admin: {endpoint: "127.0.0.1:0"}', 'admin: {endpoint: "127.0.0.1:0", tls: {cert_file: "%s", key_file: "%s"}}'
)


def test_validate_check_files_reads_the_admin_endpoints_tls_files_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The admin endpoint is built at start like the pipelines: its missing certificate fails the start."""
    cert, key = tmp_path / "admin.crt", tmp_path / "admin.key"
    config = tmp_path / "agent.yaml"
    config.write_text(ADMIN_TLS_FILES_MISSING % (tmp_path / "out", cert, key))
    assert cli.main(["validate", "--config", str(config)]) == cli.EXIT_OK
    capsys.readouterr()
    assert cli.main(["validate", "--check-files", "--config", str(config)]) == cli.EXIT_INVALID_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"{config}: cannot start: service.telemetry.admin.tls: ")
    assert str(cert) in err


def test_validate_check_files_lists_every_file_problem_it_can_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator fixing a pod's mounts should not find them one run at a time: the pipelines' first problem,
    the admin endpoint's and every directory's are listed together."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cert, key, ca = tmp_path / "admin.crt", tmp_path / "admin.key", tmp_path / "absent-ca.pem"
    config = tmp_path / "agent.yaml"
    text = ADMIN_TLS_FILES_MISSING % (a_file, cert, key)
    text = text.replace(
        "exporters: {file: {path:",
        f'exporters: {{otlp/jaeger: {{endpoint: "https://jaeger:4317", tls: {{ca_file: "{ca}"}}, '
        f'sending_queue: {{storage: {{directory: "{a_file / "queue"}"}}}}}}, file: {{path:',
    ).replace("exporters: [file]", "exporters: [file, otlp/jaeger]")
    config.write_text(text)
    assert cli.main(["validate", "--check-files", "--config", str(config)]) == cli.EXIT_INVALID_CONFIG
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"{config}: cannot start (4 problems):"
    assert [line.split(":", 1)[0] for line in lines[1:]] == [
        "  exporters.otlp/jaeger.tls",
        "  service.telemetry.admin.tls",
        "  exporters.otlp/jaeger.sending_queue.storage.directory",
        "  exporters.file.path",
    ]


def test_validate_check_files_reports_an_executable_file_where_the_queue_directory_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file is no directory even when its mode lets the agent write and search it (0755, or root)."""
    config = tmp_path / "agent.yaml"
    root = tmp_path / "queues"
    root.mkdir()
    (root / "otlp__jaeger").write_text("")
    (root / "otlp__jaeger").chmod(0o755)
    config.write_text(QUEUE_ON_DISK % root)
    assert cli.main(["validate", "--check-files", "--config", str(config)]) == cli.EXIT_INVALID_CONFIG
    assert f"{root / 'otlp__jaeger'} is not a writable directory" in capsys.readouterr().err


def test_an_invalid_config_is_reported_with_the_number_of_its_problems_and_each_of_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "receivers: {otlp: {grpc: {endpoint: nowhere}}}\n"
        "exporters: {file: {path: /tmp/x, rotation: daily}}\n"
        "service: {pipelines: {traces: {receivers: [otlp], exporters: [file]}}}\n"
    )
    assert cli.main(["validate", "--config", str(config)]) == cli.EXIT_INVALID_CONFIG
    first, *problems = capsys.readouterr().err.splitlines()
    assert first == f"{config}: invalid configuration (2 problem(s)):"
    assert problems == [
        "  receivers.otlp.grpc.endpoint: must be host:port, got 'nowhere'",
        "  exporters.file.rotation: must be a mapping, got a string",
    ]


def test_threads_that_end_within_the_grace_period_are_not_reported_as_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write finishing while the process exits is waited for: only one still running after the grace period
    makes the agent exit without the interpreter's shutdown. Each wait of the check lets the thread finish here."""
    release = threading.Event()
    writer = threading.Thread(target=release.wait, name="otel-sidecar-io-test")
    writer.start()

    def the_write_finishes(seconds: float) -> None:
        release.set()
        writer.join()

    monkeypatch.setattr(cli, "time", SimpleNamespace(monotonic=time.monotonic, sleep=the_write_finishes))
    try:
        assert "otel-sidecar-io-test" not in cli._threads_still_blocked(cli.EXECUTOR_GRACE_SECONDS)
    finally:
        release.set()
        writer.join()


def test_a_failed_start_leaving_a_call_blocked_still_exits_with_the_failures_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process then exits without the interpreter's shutdown (os._exit), but with the code of the failure."""
    release = threading.Event()
    blocked = threading.Thread(target=release.wait, name="otel-sidecar-io_0")

    class _BlockedThenFailing:
        async def run(self) -> None:
            blocked.start()  # a file write that never returns, as on a hung disk
            raise OSError("address already in use")

    exits: list[int] = []
    monkeypatch.setattr(app, "Agent", lambda config, **_: _BlockedThenFailing())
    monkeypatch.setattr(cli, "EXECUTOR_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(cli.os, "_exit", exits.append)
    try:
        assert cli.main(["run"]) == cli.EXIT_START_FAILED
    finally:
        release.set()
        blocked.join()
    assert exits == [cli.EXIT_START_FAILED]
