"""``helm lint --strict`` for the chart, with the Helm library bundled in helm-sdkpy (run it in the Helm tool venv).

    .tools/helm-venv/bin/python tests/tools/helm_lint.py helm/otel-sidecar [--values FILE ...] [--json]

Lints the chart with its own values, then once per ``ci/*.yaml`` (or per ``--values`` file given). helm-sdkpy's
lint cannot take extra values, so each case lints a copy of the chart whose values.yaml is the chart's values with
the case's file merged in the way Helm merges ``-f`` files (maps key by key, lists and scalars replaced, ``null``
deletes). The library reports each message's severity (1 info, 2 warning, 3 error) and file but not its text, so
this prints those; template ``fail`` calls, which lint mode only logs, are captured from the library's stderr and
count as errors. Exit status 1 when any case has a warning, an error or a fail message: the strict reading.

``--render`` prints what Helm renders for each case instead (JSON: template file -> manifest text, and the
NOTES.txt text apart). The library
has no ``helm template``, so the copy gets one extra template that includes every template of the chart and hands
the result to ``fail``, whose message lint mode logs: real Helm rendering, with lint mode's leniency (``required``
and ``fail`` do not stop it, ``lookup`` finds nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

SEVERITY_NAMES = {1: "info", 2: "warning", 3: "error"}
STRICT_FAILING_SEVERITY = 2


def merge_values(base: Any, override: Any) -> Any:
    """Helm's coalescing of a ``-f`` file over chart values."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


RENDER_TEMPLATE = "zz-render-for-tests.yaml"
RENDER_MARKER = "RENDERED:"


def chart_copy(chart: Path, values_file: Path | None, workdir: Path) -> Path:
    """A copy of ``chart`` whose values.yaml has ``values_file`` merged in, as ``helm -f values_file`` would."""
    target = workdir / (values_file.stem if values_file else "default") / chart.name
    shutil.copytree(chart, target)
    if values_file is not None:
        values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
        values = merge_values(values, yaml.safe_load(values_file.read_text()) or {})
        (target / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    return target


def lint_case(chart: Path, values_file: Path | None, workdir: Path) -> dict[str, Any]:
    """Lint a copy of ``chart`` with ``values_file`` merged into its values."""
    name = values_file.name if values_file else "values.yaml"
    target = chart_copy(chart, values_file, workdir)
    result, fail_messages = _lint_capturing_stderr(target, workdir / "stderr.log")
    messages = []
    for message in result.get("Messages") or []:
        severity = message.get("Severity", 0)
        messages.append({"severity": severity, "level": SEVERITY_NAMES.get(severity, "?"), "path": message.get("Path")})
    failed = any(m["severity"] >= STRICT_FAILING_SEVERITY for m in messages) or bool(fail_messages)
    return {"case": name, "ok": not failed, "messages": messages, "fail_messages": fail_messages}


def render_case(chart: Path, values_file: Path | None, workdir: Path) -> dict[str, Any]:
    """What Helm renders from each template of ``chart`` with ``values_file`` merged into its values."""
    target = chart_copy(chart, values_file, workdir)
    notes = ["NOTES.txt"] if (target / "templates" / "NOTES.txt").exists() else []
    names = [*sorted(p.name for p in (target / "templates").glob("*.yaml")), *notes]
    quoted = " ".join(json.dumps(n) for n in names)
    (target / "templates" / RENDER_TEMPLATE).write_text(
        "{{- $out := dict }}\n"
        f"{{{{- range $name := list {quoted} }}}}\n"
        '{{- $_ := set $out $name (include (print $.Template.BasePath "/" $name) $) }}\n'
        "{{- end }}\n"
        f'{{{{- fail (printf "{RENDER_MARKER}%s" ($out | toJson | b64enc)) }}}}\n'
    )
    _, fail_messages = _lint_capturing_stderr(target, workdir / "stderr.log")
    rendered = [m for m in fail_messages if RENDER_MARKER in m]
    if len(rendered) != 1:
        raise RuntimeError(f"rendering {chart.name} with {values_file}: no output; fail messages: {fail_messages}")
    encoded = rendered[0].split(RENDER_MARKER, 1)[1].split('"', 1)[0].strip()
    manifests = json.loads(base64.b64decode(encoded))
    notes = manifests.pop("NOTES.txt", "")  # text for the user, not a manifest
    other_fails = [m for m in fail_messages if RENDER_MARKER not in m]
    case = values_file.name if values_file else "values.yaml"
    return {"case": case, "manifests": manifests, "notes": notes, "fails": other_fails}


def _lint_capturing_stderr(chart: Path, log_path: Path) -> tuple[dict[str, Any], list[str]]:
    """Run the library's lint; its Go side logs template ``fail`` messages to fd 2, which we redirect to a file."""
    import helm_sdkpy

    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(chart)))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        logged = log.read().decode(errors="replace")
    fails = [line.strip() for line in logged.splitlines() if "fail" in line and "message=" in line]
    return result, fails


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chart", type=Path)
    parser.add_argument("--values", type=Path, action="append", default=[], help="lint with this values file")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--render", action="store_true", help="print the rendered templates (JSON) instead")
    args = parser.parse_args(argv)
    chart = args.chart.resolve()
    cases: list[Path | None] = list(args.values) or [None, *sorted((chart / "ci").glob("*.yaml"))]
    with tempfile.TemporaryDirectory(prefix="helm-lint-") as tmp:
        if args.render:
            print(json.dumps([render_case(chart, case, Path(tmp)) for case in cases], indent=1))
            return 0
        results = [lint_case(chart, case, Path(tmp)) for case in cases]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for result in results:
            status = "ok" if result["ok"] else "FAILED"
            print(f"{chart.name} with {result['case']}: {status}")
            for message in result["messages"]:
                print(f"  [{message['level']}] {message['path']}")
            for fail in result["fail_messages"]:
                print(f"  [fail] {fail}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
