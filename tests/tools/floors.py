"""Print the dependency floors of pyproject.toml as pip constraints (``name==version`` for each ``name>=version``).

``make test-floors`` installs them together and runs the unit tests on them: a floor is a claim that the agent
works with that version, and it goes stale silently when code starts using something newer.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
_FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+?)\s*>=\s*([0-9][^,;\s]*)\s*$")


def floors(requirements: list[str]) -> list[str]:
    """``name==version`` for every requirement that is a plain floor; any other form is an error, not skipped."""
    constraints = []
    for requirement in requirements:
        match = _FLOOR.match(requirement)
        if match is None:
            raise SystemExit(f"pyproject.toml: {requirement!r} is not a plain floor (name>=version)")
        name = match.group(1).split("[", 1)[0]  # constraints may not carry extras
        constraints.append(f"{name}=={match.group(2)}")
    return constraints


def main() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    sys.stdout.write("".join(f"{line}\n" for line in floors(project["dependencies"])))


if __name__ == "__main__":
    main()
