"""A stand-in for a Kubernetes API server that answers only what ``helm install`` asks before it renders.

No cluster can run on the test machine. Helm learns ``.Capabilities.KubeVersion`` from the API server's
``/version`` and its API groups from discovery (``/api``, ``/apis``, ``/api/v1``), and looks for an existing
release among the namespace's Secrets; this server answers those as a cluster of the given version would
(Kubernetes API conventions: ``version.Info``, ``APIVersions``, ``APIGroupList``, ``APIResourceList``,
``SecretList``) and refuses every write with a 403 ``Status``. A chart whose templates render therefore fails
afterwards, at building objects (no ``apps/v1`` group here) or at its first write; a template ``fail`` fails
before any of that, with its own message.
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

_CORE_RESOURCES = [("secrets", "Secret"), ("configmaps", "ConfigMap"), ("services", "Service")]


class FakeKubeApi:
    def __init__(self, version: str) -> None:
        self.version = version  # "1.28"
        self.requests: list[str] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeKubeApi:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def kubeconfig(self, namespace: str = "default") -> str:
        return (
            "apiVersion: v1\nkind: Config\n"
            f'clusters: [{{name: test, cluster: {{server: "{self.url}"}}}}]\n'
            "users: [{name: test, user: {token: test}}]\n"
            f"contexts: [{{name: test, context: {{cluster: test, user: test, namespace: {namespace}}}}}]\n"
            "current-context: test\n"
        )

    def answer(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        self.requests.append(f"{method} {path}")
        if method != "GET":
            return 403, _status(403, "Forbidden", "writes are refused by this test API server")
        path = path.split("?", 1)[0]
        major, minor = self.version.split(".")
        if path == "/version":
            return 200, {"major": major, "minor": minor, "gitVersion": f"v{self.version}.0", "platform": "linux/amd64"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        if path == "/api/v1":
            resources = [
                {"name": name, "singularName": "", "namespaced": True, "kind": kind, "verbs": ["get", "list", "create"]}
                for name, kind in _CORE_RESOURCES
            ]
            return 200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources}
        if path.endswith("/secrets"):
            return 200, {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []}
        return 404, _status(404, "NotFound", f"{path} not found")

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self) -> None:
                code, body = api.answer(self.command, self.path)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _reply

            def log_message(self, *args: object) -> None:
                return None

        return Handler


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
