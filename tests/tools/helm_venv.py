"""The Helm tool environment: a Python >= 3.12 venv at ``.tools/helm-venv`` with ``helm-sdkpy`` (which bundles Helm).

The agent's own venv is Python 3.11 and helm-sdkpy needs 3.12, so Helm lives in a separate tool venv. It is
created on first use from a ``python3.12`` on PATH or one pyenv installed; run ``python tests/tools/helm_venv.py``
to create it by hand (it prints the venv's python).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".tools" / "helm-venv"
# Pinned so every machine lints with the same Helm; bump deliberately.
REQUIREMENTS = ("helm-sdkpy==0.1.32", "pyyaml>=6.0")
_STAMP = VENV / ".installed"


class HelmVenvError(RuntimeError):
    pass


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_helm_venv() -> Path:
    """Create the tool venv if needed and return its python."""
    python = venv_python()
    wanted = "\n".join(REQUIREMENTS)
    if python.exists() and _STAMP.exists() and _STAMP.read_text() == wanted:
        return python
    base = find_python312()
    if not python.exists():
        _run([str(base), "-m", "venv", str(VENV)], "create the Helm tool venv")
    _run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], "install helm-sdkpy into the tool venv")
    _STAMP.write_text(wanted)
    return python


def find_python312() -> Path:
    """A Python >= 3.12 interpreter: python3.13/python3.12 on PATH, else one installed by pyenv."""
    candidates: list[str] = []
    for name in ("python3.12", "python3.13"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    for root in pyenv_roots():
        candidates.extend(sorted(glob.glob(str(root / "versions" / "3.1[2-9]*" / "bin" / "python3"))))
    for candidate in candidates:
        if _is_python312_or_newer(candidate):
            return Path(candidate)
    raise HelmVenvError(
        "helm-sdkpy needs Python >= 3.12 and none was found (looked for python3.12/python3.13 on PATH and "
        "pyenv versions 3.12+). Install one, e.g. `pyenv install 3.12`, then rerun."
    )


def pyenv_roots() -> list[Path]:
    roots = []
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    pyenv = shutil.which("pyenv")
    if pyenv:
        result = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout.strip():
            roots.append(Path(result.stdout.strip()))
    roots.append(Path.home() / ".pyenv")
    return roots


def _is_python312_or_newer(python: str) -> bool:
    probe = "import sys; print(int(sys.version_info >= (3, 12)))"
    try:
        result = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return False
    return result.returncode == 0 and result.stdout.strip() == "1"


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HelmVenvError(f"could not {what}: {' '.join(command)}\n{result.stdout}\n{result.stderr}")


if __name__ == "__main__":
    try:
        print(ensure_helm_venv())
    except HelmVenvError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
