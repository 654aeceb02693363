"""``make demo`` as a user runs it (``python -m agent.demo``): it completes, reports what the agent did, and does
not depend on the embedded config's ports being free (another agent or a Collector may hold them)."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO, free_port


@contextlib.contextmanager
def port_in_use(port: int) -> Iterator[None]:
    """Hold ``port`` on 127.0.0.1, unless something else holds it already (busy either way)."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", port))
        holder.listen()
    except OSError:
        pass
    try:
        yield
    finally:
        holder.close()


def test_the_demo_runs_and_reports_even_when_the_default_ports_are_taken() -> None:
    with port_in_use(4317), port_in_use(13133):
        done = subprocess.run(
            [sys.executable, "-m", "agent.demo", "--traces", "60"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "note: port 4317 is in use" in out and "note: port 13133 is in use" in out
    sent = re.search(r"traces sent: 60 \((\d+) with an error\); kept by retention class: (\{.*\})", out)
    assert sent is not None, out
    kept = ast.literal_eval(sent.group(2))  # the demo prints a dict of class name to trace count
    assert kept.get("error", 0) == int(sent.group(1))  # every error trace kept, in the error class
    assert re.search(r"^\s+\d+ spans over grpc$", out, re.MULTILINE), out
    assert "agent exit code: 0" in out
    # What it sent is what the agent says it received and derived from 100% of the spans.
    sent_line = re.search(r"^sent: 60 workflow traces, (\d+) spans over OTLP/gRPC", out, re.MULTILINE)
    assert sent_line is not None, out
    assert re.search(rf"^\s+{sent_line.group(1)} spans over grpc$", out, re.MULTILINE), out
    assert "sent: 20 log records over OTLP/HTTP (JSON)" in out
    assert re.search(r"^\s+20 log records over http$", out, re.MULTILINE), out
    assert re.search(r"logs\.jsonl: \d+ export requests, 20 log records$", out, re.MULTILINE), out
    runs = re.findall(r"^\s+(\d+) workflow runs\s+\S+\s+(success|failure)$", out, re.MULTILINE)
    assert sum(int(count) for count, _ in runs) == 60, out
    assert sum(int(count) for count, status in runs if status == "failure") == int(sent.group(1)), out
    decisions = re.findall(r"^\s+(\d+) (keep|drop)\s+by policy", out, re.MULTILINE)
    assert sum(int(count) for count, _ in decisions) == 60, out  # every trace decided before the stop


def test_the_demo_takes_the_port_it_prefers_when_free_and_another_when_not() -> None:
    from agent.demo import _free_port

    port = free_port()
    assert _free_port(port) == port
    with port_in_use(port):
        assert _free_port(port) != port


def test_the_demo_fails_showing_the_agents_log_when_the_agent_cannot_start(tmp_path: Path) -> None:
    """An environment the embedded config refuses: the demo says so, prints why, and exits 1."""
    done = subprocess.run(
        [sys.executable, "-m", "agent.demo", "--traces", "5", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OTEL_SIDECAR_CAPTURE_CONTENT": "perhaps"},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"the agent did not become ready; its log ({tmp_path / 'agent.log'}):" in done.stdout
    assert "processors.redaction.capture_content: must be true or false, got 'perhaps'" in done.stdout
