"""``helm install`` of a chart through the Helm library in helm-sdkpy (run it in the Helm tool venv).

    .tools/helm-venv/bin/python tests/tools/helm_install.py CHART KUBECONFIG_FILE VALUES_JSON

Prints ``{"ok": true}`` or ``{"ok": false, "error": "<Helm's message>"}`` as JSON; the tests point it at
``tests/tools/fake_kube_api.py`` to see what Helm does against a cluster of a given version.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path


def main() -> int:
    import helm_sdkpy

    chart, kubeconfig, values = sys.argv[1], Path(sys.argv[2]).read_text(), json.loads(sys.argv[3])
    config = helm_sdkpy.Configuration(namespace="default", kubeconfig=kubeconfig)
    try:
        asyncio.run(helm_sdkpy.Install(config).run("probe", chart, values=values, wait=False, timeout=30))
    except Exception as exc:  # Helm's error is the result
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 0
    print(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
