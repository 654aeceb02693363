"""``make demo`` as a user runs it (``python -m agent.demo``): it completes, reports what the agent did, and does
not depend on the embedded config's ports being free (another agent or a Collector may hold them)."""

from __future__ import annotations

import ast
import contextlib
import re
import socket
import subprocess
import sys
from collections.abc import Iterator

from tests.helpers import REPO


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
