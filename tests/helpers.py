"""Helpers for tests that run the agent as a real process on real ports."""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.otlp import json_codec
from agent.receivers.otlp import OtlpReceiver

if TYPE_CHECKING:
    import pytest

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = "/usr/bin/prometheus"  # the Debian package, which `make test` installs


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port that is free now, chosen below the ephemeral range so outgoing connections do not take it meanwhile,
    and never one this process handed out before: a config takes several before any is bound, and two random picks
    alike (a birthday collision, about 1 in 1,200 for a config of five ports) failed its load as a shared address."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port found")


def reassign_listen_ports(config: dict[str, Any]) -> None:
    """Give the agent's own listeners new free ports (after another process took one between pick and bind)."""
    for receiver in config.get("receivers", {}).values():
        for protocol in ("grpc", "http"):
            if isinstance(receiver, dict) and isinstance(receiver.get(protocol), dict):
                receiver[protocol]["endpoint"] = f"127.0.0.1:{free_port()}"
    for exporter_id, exporter in config.get("exporters", {}).items():
        if exporter_id.split("/")[0] == "prometheus" and isinstance(exporter, dict):
            exporter["endpoint"] = f"127.0.0.1:{free_port()}"
    config["service"]["telemetry"]["admin"]["endpoint"] = f"127.0.0.1:{free_port()}"


def rotel_command(*args: str) -> list[str]:
    """The command line of rotel (PyPI ``rotel``, a Rust OTLP collector): the third-party OTLP peer of the tests
    and of the benchmark. Run it with ``env=rotel_environment()``."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or spec.origin is None:
        raise AssertionError("rotel is not installed: `make test` installs it (the test extra of pyproject.toml)")
    return [str(Path(spec.origin).parent / "rotel-agent"), *args]


def rotel_environment() -> dict[str, str]:
    """rotel-agent links to the libpython of the Python its wheel is for. The loader finds a system package's
    copy only: an interpreter installed apart (pyenv, built from source) keeps its own in its LIBDIR, which is
    looked in first here so that rotel runs beside any interpreter that has one."""
    library_dir = sysconfig.get_config_var("LIBDIR") or ""
    inherited = os.environ.get("LD_LIBRARY_PATH")
    return {**os.environ, "LD_LIBRARY_PATH": f"{library_dir}:{inherited}" if inherited else library_dir}


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(
    url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers; status 0 when no answer came (refused, reset, a failed TLS handshake)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)
    except OSError:
        return 0, b"", {}


def http_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def base_config(out_dir: Path) -> dict[str, Any]:
    """A config on free ports writing to ``out_dir``; tests add to it."""
    return {
        "receivers": {
            "otlp": {
                "grpc": {"endpoint": f"127.0.0.1:{free_port()}"},
                "http": {"endpoint": f"127.0.0.1:{free_port()}"},
            }
        },
        "exporters": {"file": {"path": str(out_dir)}},
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "exporters": ["file"]},
                "metrics": {"receivers": ["otlp"], "exporters": ["file"]},
                "logs": {"receivers": ["otlp"], "exporters": ["file"]},
            },
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{free_port()}"}, "logs": {"level": "info"}},
            "shutdown_timeout": "10s",
        },
    }


@dataclass
class AgentProcess:
    config: dict[str, Any]
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    admin_ssl: ssl.SSLContext | None = None  # how to reach an admin endpoint served over TLS
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "agent.log"

    @property
    def grpc_endpoint(self) -> str:
        return str(self.config["receivers"]["otlp"]["grpc"]["endpoint"])

    @property
    def http_url(self) -> str:
        return "http://" + str(self.config["receivers"]["otlp"]["http"]["endpoint"])

    @property
    def admin_url(self) -> str:
        scheme = "https://" if self.admin_ssl is not None else "http://"
        return scheme + str(self.config["service"]["telemetry"]["admin"]["endpoint"])

    @property
    def out_dir(self) -> Path:
        return Path(self.config["exporters"]["file"]["path"])

    def start(self, wait_ready: bool = True) -> AgentProcess:
        for _attempt in range(3):
            self._spawn()
            if not wait_ready:
                return self
            try:
                wait_until(self.ready, timeout=20, what=f"agent ready (log: {self.log_path})")
                return self
            except AssertionError:
                if "address already in use" not in self.log():
                    raise
                reassign_listen_ports(self.config)  # a port picked as free was taken meanwhile: try new ones
        raise AssertionError(f"agent could not bind its ports:\n{self.log()}")

    def _spawn(self) -> None:
        config_path = self.workdir / "agent.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        with open(self.log_path, "ab") as log:  # the process has its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"agent exited with {self.process.returncode}:\n{self.log()}")
        return http_get(self.admin_url + "/health/ready", context=self.admin_ssl)[0] == 200

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def metrics(self) -> str:
        return http_get(self.admin_url + "/metrics", context=self.admin_ssl)[1].decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return metric_value(self.metrics(), name, **labels)

    def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class FakeClock:
    """A ``time.monotonic`` that moves only when a test says so (call it for the time)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``; 0 when there are none, but an error when no
    family declares ``name`` (a misspelt name must not make an ``== 0`` assertion pass)."""
    if not _declared(text, name):
        raise AssertionError(f"no metric family declares {name} in this exposition")
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        series, _, label_text = head.partition("{")
        if series != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


def _declared(text: str, name: str) -> bool:
    """Whether a ``# TYPE`` line declares ``name``, or the family its ``_bucket``, ``_sum``, ``_count`` or ``_total``
    sample belongs to."""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split(" ", 3)[2]
            if name == family or (name.startswith(family + "_") and name[len(family) + 1 :] in _SAMPLE_SUFFIXES):
                return True
    return False


_SAMPLE_SUFFIXES = frozenset({"bucket", "sum", "count", "total", "created", "info"})


@contextlib.contextmanager
def running_agent(tmp_path: Path, config: dict[str, Any] | None = None) -> Iterator[AgentProcess]:
    agent = AgentProcess(config or base_config(tmp_path / "out"), tmp_path)
    agent.start()
    try:
        yield agent
    finally:
        agent.kill()


_REQUEST_TYPES: dict[str, type[Message]] = {
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
}


def read_output(out_dir: Path, signal_name: str) -> list[Any]:
    """Every export request the file exporter wrote for a signal, decoded back to protobuf."""
    path = out_dir / f"{signal_name}.jsonl"
    if not path.exists():
        return []
    request_type = _REQUEST_TYPES[signal_name]
    return [json_codec.decode(line.encode(), request_type) for line in path.read_text().splitlines() if line]


def output_spans(out_dir: Path) -> list[tuple[Any, Any, Any]]:
    """``(resource, scope, span)`` for every span written, flattened."""
    found = []
    for request in read_output(out_dir, "traces"):
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                found.extend((rs.resource, ss.scope, span) for span in ss.spans)
    return found


def self_signed_certificate(
    directory: Path, name: str = "server", host: str = "localhost", ip: str | None = "127.0.0.1"
) -> tuple[Path, Path]:
    """A certificate and key (PEM) for ``host`` (and ``ip``), signed by themselves: their own CA."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    names = f"DNS:{host}" + (f",IP:{ip}" if ip else "")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={host}",
         "-addext", f"subjectAltName={names}", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def dated_certificate(
    directory: Path, name: str, not_before: datetime.datetime, not_after: datetime.datetime
) -> tuple[Path, Path]:
    """A self-signed certificate for localhost valid from ``not_before`` to ``not_after`` (either may be past: an
    expired certificate loads, as OpenSSL checks dates at the handshake), and its key; PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class MountedSecret:
    """A directory the way the kubelet mounts a Secret: ``tls.crt`` and ``tls.key`` are symlinks through ``..data``,
    a symlink to the current version's directory, swapped in one rename at each update."""

    root: Path
    versions: int = 0

    @property
    def cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls.key"

    def update(self, not_after: datetime.datetime, *, key_of: int | None = None) -> None:
        """A new version valid from yesterday to ``not_after``; with ``key_of``, the key of that earlier version
        instead of its own (a broken update)."""
        self.versions += 1
        version = self.root / f"..v{self.versions}"
        version.mkdir(parents=True)
        yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        dated_certificate(version, "tls", yesterday, not_after)
        (version / "tls.pem").rename(version / "tls.crt")
        if key_of is not None:
            (version / "tls.key").write_bytes((self.root / f"..v{key_of}" / "tls.key").read_bytes())
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.root / "..data")
        for name in ("tls.crt", "tls.key"):
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")


def receiver_port_taken_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next start of an OTLP receiver fails as a port another process took would; the ones after start: a
    reload's new pipelines fail, and the running config starts again."""
    start = OtlpReceiver.start
    failures = [OSError(98, "address already in use")]

    async def taken_once(self: OtlpReceiver) -> None:
        if failures:
            raise failures.pop()
        await start(self)

    monkeypatch.setattr(OtlpReceiver, "start", taken_once)


class PrometheusServer:
    """A real Prometheus (the Debian package) with ``config`` as its configuration file; its HTTP API on a free
    port of 127.0.0.1. ``flags`` are added to its command line (``--enable-feature=exemplar-storage``)."""

    def __init__(self, workdir: Path, config: dict[str, Any], *flags: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._command = [
            PROMETHEUS,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
            *flags,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.ready, timeout=30, what=f"Prometheus ready (log: {self.log_path})")
        return self

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log_path.read_text()}")
        return http_get(self.url + "/-/ready")[0] == 200

    def api(self, path: str, **params: str) -> Any:
        """``data`` of an answer of the HTTP API at ``/api/v1/<path>``; fails the test on an error answer."""
        status, body, _ = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        payload = json.loads(body) if body else {"status": "error", "error": f"HTTP {status}"}
        assert payload.get("status") == "success", f"{path} {params}: {payload}"
        return payload["data"]

    def vector(self, query: str, *labels: str) -> dict[tuple[str, ...], float]:
        """An instant query's samples, keyed by the values of ``labels``."""
        data = self.api("query", query=query)
        return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1]) for r in data["result"]}

    def scalar(self, query: str) -> float:
        return self.vector(query).get((), 0.0)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 15)


def status_after_handshake(raw: socket.socket, context: ssl.SSLContext, request: bytes) -> bytes | None:
    """The status line answered to ``request`` (a whole HTTP/1.1 request) on ``raw``, a connection made earlier,
    after a TLS handshake started only now; None when the handshake or the request failed."""
    try:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(request)
            return tls.recv(4096).split(b"\r\n", 1)[0] or None
    except (ssl.SSLError, ConnectionError):
        return None


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM ``process`` if it still runs, and SIGKILL it if it has not exited within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
