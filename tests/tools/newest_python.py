"""Print the newest Python 3 release this machine has, on PATH or installed by pyenv, for ``make test-newest``
(run as ``python -m tests.tools.newest_python`` from the repository).

``pyproject.toml`` asks for Python >= 3.11 and sets no upper bound: that the agent runs on the newest release is
a claim as much as its dependency floors are, and goes stale as silently when a release changes something. Fails,
saying so, when nothing newer than 3.11 is found: CI never skips the check.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

from tests.tools.helm_venv import pyenv_roots

_OLDEST_NEWER = (3, 12)
_PROBE = "import sys; v = sys.version_info; print(v.major, v.minor, v.micro, v.releaselevel)"


def candidates() -> list[str]:
    found = [shutil.which(f"python3.{minor}") for minor in range(_OLDEST_NEWER[1], 40)]
    paths = [path for path in found if path]
    for root in pyenv_roots():
        paths.extend(sorted(glob.glob(str(root / "versions" / "3.*" / "bin" / "python3"))))
    return paths


def version(python: str) -> tuple[int, int, int] | None:
    """The interpreter's release, or None when it does not run (a pyenv shim of a version not selected) or is a
    pre-release."""
    try:
        result = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = result.stdout.split()
    if result.returncode != 0 or len(fields) != 4 or fields[3] != "final":
        return None
    return int(fields[0]), int(fields[1]), int(fields[2])


def newest_python() -> Path:
    releases = [(found, path) for path in candidates() if (found := version(path)) is not None]
    if not releases or max(releases)[0][:2] < _OLDEST_NEWER:
        raise SystemExit(
            "test-newest: no Python 3.12 or newer was found (looked for python3.12 and later on PATH and in pyenv "
            "versions); install one, e.g. `pyenv install 3.13`, then rerun"
        )
    return Path(max(releases)[1])


if __name__ == "__main__":
    print(newest_python())
