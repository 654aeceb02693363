"""The agent's log stream: one format for its own records and for the libraries it runs on."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest

from agent.telemetry.logs import JsonFormatter, RateLimitedLog, Throttle, configure


@pytest.fixture
def restore_logging():  # type: ignore[no-untyped-def]
    root, agent = logging.getLogger(), logging.getLogger("otel_sidecar")
    saved = (root.handlers[:], root.level, agent.handlers[:], agent.level, agent.propagate)
    yield
    root.handlers[:], agent.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    agent.setLevel(saved[3])
    agent.propagate = saved[4]


def test_a_librarys_error_with_a_traceback_is_one_json_line_like_the_agents_own(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("info", "json")
    logging.getLogger("otel_sidecar.receiver").warning("own record")
    try:
        raise ValueError("broken stream")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    logging.getLogger("aiohttp.access").info("below warning: not shown")
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert [r["message"] for r in records] == ["own record", "Error handling request"]
    assert "ValueError: broken stream" in records[1]["exception"]


def test_a_library_repeating_one_error_is_logged_once_per_interval(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("info", "json")
    for _ in range(1000):  # as asyncio logs every failed accept() when file descriptors run out
        logging.getLogger("asyncio").error("socket.accept() out of system resource")
    logging.getLogger("asyncio").error("another problem")
    messages = [json.loads(line)["message"] for line in capsys.readouterr().out.splitlines()]
    assert messages == ["socket.accept() out of system resource", "another problem"]


def test_a_message_is_due_when_it_would_be_written_and_asking_counts_nothing() -> None:
    throttle = Throttle(interval=60)
    assert throttle.due("key") and throttle.due("key")  # asking admits nothing
    assert throttle.admit("key") == 0
    assert not throttle.due("key") and throttle.due("other")
    assert throttle.admit("key") is None
    assert not throttle.due("key")


def test_a_rate_limited_warning_says_how_many_were_suppressed_since_the_last(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from agent.telemetry import logs

    now = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    log = RateLimitedLog(logging.getLogger("test.rate"), interval=10.0)
    for _ in range(3):
        log.warning("export", "export failed")  # the first is written, two are suppressed
    now[0] += 10.0
    log.warning("export", "export failed")
    first, second = caplog.records
    assert not hasattr(first, "suppressed_since_last")
    assert second.suppressed_since_last == 2  # type: ignore[attr-defined]


def test_the_cli_s_records_on_the_bare_otel_sidecar_logger_are_the_agent_component() -> None:
    record = logging.LogRecord("otel_sidecar", logging.INFO, __file__, 1, "invalid configuration", None, None)
    assert json.loads(JsonFormatter().format(record))["component"] == "agent"


_FAILED_HANDSHAKE = """
import agent  # first, as the agent's entry points are: it quiets gRPC's core
import grpc
from concurrent import futures

server = grpc.server(futures.ThreadPoolExecutor(1))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials())
try:
    channel.unary_unary("/x.Y/Z")(b"", timeout=2)
except grpc.RpcError as exc:
    print(exc.code().name)
"""


@pytest.mark.parametrize(("verbosity", "core_lines"), [(None, False), ("INFO", True)])
def test_grpc_core_writes_nothing_below_error_to_stderr_unless_asked(verbosity: str | None, core_lines: bool) -> None:
    """gRPC's core logged "Handshake failed with error SSL_ERROR_SSL" (at INFO) on stderr at every reconnect of an
    exporter using TLS against a plain-text backend: lines outside the agent's JSON log, every few seconds, long
    after the batches were given up (pass 150). The agent's own warning carries the status; GRPC_VERBOSITY still
    wins. Its errors stay (grpcio 1.65, the floor, logs that failure as one)."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    if verbosity:
        env["GRPC_VERBOSITY"] = verbosity
    result = subprocess.run(
        [sys.executable, "-c", _FAILED_HANDSHAKE], capture_output=True, text=True, timeout=60, env=env, check=True
    )
    assert result.stdout.strip() == "UNAVAILABLE"
    below_error = re.compile(r"^[DIW]\d{4} ", re.MULTILINE)  # absl's prefix: level letter, month and day
    assert bool(below_error.search(result.stderr)) is core_lines, result.stderr
