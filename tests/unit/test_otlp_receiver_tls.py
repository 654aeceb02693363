"""The OTLP receiver over TLS and mutual TLS, with real gRPC and aiohttp clients and certificates made by openssl."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from agent.component import CreateSettings, Kind, Signal
from agent.config.schema import HostPort
from agent.config.service import ServiceConfig
from agent.receivers.otlp import GrpcConfig, HttpConfig, OtlpReceiver, OtlpReceiverConfig
from agent.server_tls import TlsServerConfig
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.sinks import BatchSink
from agent.testing.workload import Workload
from tests.helpers import free_port, metric_value, self_signed_certificate, status_after_handshake

TRACES_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
HANDSHAKE_FAILURES = "otel_sidecar_tls_handshake_failures_total"


@asynccontextmanager
async def tls_receiver(
    tls: TlsServerConfig, sink: BatchSink, metrics: SelfMetrics | None = None
) -> AsyncIterator[tuple[int, int]]:
    """A receiver serving both protocols with ``tls``; yields its gRPC and HTTP ports."""
    grpc_port, http_port = free_port(), free_port()
    config = OtlpReceiverConfig(
        grpc=GrpcConfig(endpoint=HostPort(f"127.0.0.1:{grpc_port}"), tls=tls),
        http=HttpConfig(endpoint=HostPort(f"127.0.0.1:{http_port}"), tls=tls),
    )
    metrics = metrics or SelfMetrics()
    settings = CreateSettings("otlp", Kind.RECEIVER, logging.getLogger("test"), metrics, ServiceConfig(), {})
    receiver = OtlpReceiver(config, settings, {Signal.TRACES: sink})
    await receiver.start()
    try:
        yield grpc_port, http_port
    finally:
        await receiver.shutdown(time.monotonic() + 2)


def request_body(seed: int = 1) -> bytes:
    request, _ = next(Workload(seed=seed).requests(1))
    return request.SerializeToString()


async def grpc_export(port: int, credentials: grpc.ChannelCredentials | None) -> ExportTraceServiceResponse:
    target = f"localhost:{port}"  # the name the test certificates are made for
    channel = grpc.aio.insecure_channel(target) if credentials is None else grpc.aio.secure_channel(target, credentials)
    try:
        answer = await channel.unary_unary(TRACES_METHOD)(request_body(), timeout=5)
    finally:
        await channel.close()
    return ExportTraceServiceResponse.FromString(answer)


async def http_export(url: str, context: ssl.SSLContext | None) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url,
            data=request_body(),
            headers={"Content-Type": "application/x-protobuf"},
            ssl=context if context is not None else False,
            timeout=aiohttp.ClientTimeout(total=5),
        ) as response,
    ):
        return response.status


def client_context(server_cert: Path, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server_cert))
    if client is not None:
        context.load_cert_chain(*map(str, client))
    return context


async def test_clients_that_trust_the_certificate_export_over_both_protocols(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    sink = BatchSink()
    async with tls_receiver(TlsServerConfig(cert_file=str(cert), key_file=str(key)), sink) as (grpc_port, http_port):
        await grpc_export(grpc_port, grpc.ssl_channel_credentials(root_certificates=cert.read_bytes()))
        assert await http_export(f"https://localhost:{http_port}/v1/traces", client_context(cert)) == 200
    assert len(sink.batches) == 2


async def test_plain_text_clients_are_not_served_by_a_tls_receiver(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    sink = BatchSink()
    async with tls_receiver(TlsServerConfig(cert_file=str(cert), key_file=str(key)), sink) as (grpc_port, http_port):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await grpc_export(grpc_port, None)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(aiohttp.ClientError):
            await http_export(f"http://localhost:{http_port}/v1/traces", None)
    assert sink.batches == []


async def test_mutual_tls_serves_only_clients_with_a_certificate_the_client_ca_signed(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    client_cert, client_key = self_signed_certificate(tmp_path, "client")  # self-signed: its own CA
    stranger_cert, stranger_key = self_signed_certificate(tmp_path, "stranger")
    tls = TlsServerConfig(cert_file=str(cert), key_file=str(key), client_ca_file=str(client_cert))
    sink = BatchSink()
    async with tls_receiver(tls, sink) as (grpc_port, http_port):
        url = f"https://localhost:{http_port}/v1/traces"
        trusted = (client_cert, client_key)
        credentials = grpc.ssl_channel_credentials(cert.read_bytes(), client_key.read_bytes(), client_cert.read_bytes())
        await grpc_export(grpc_port, credentials)
        assert await http_export(url, client_context(cert, trusted)) == 200
        assert len(sink.batches) == 2

        for identity in (None, (stranger_cert, stranger_key)):
            pair = (identity[1].read_bytes(), identity[0].read_bytes()) if identity else (None, None)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await grpc_export(grpc_port, grpc.ssl_channel_credentials(cert.read_bytes(), *pair))
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
            with pytest.raises(aiohttp.ClientError):
                await http_export(url, client_context(cert, identity))
        assert len(sink.batches) == 2  # nothing more got in


def refuse_the_servers_certificate(port: int) -> None:
    """A blocking client trusting only the system's CAs: it refuses the agent's self-signed certificate and says so
    with a TLS alert (asyncio's clients close without one)."""
    context = ssl.create_default_context()
    with socket.create_connection(("localhost", port)) as raw, pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(raw, server_hostname="localhost")


async def test_the_https_receivers_failed_handshakes_are_counted_by_reason(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    client = self_signed_certificate(tmp_path, "client")
    tls = TlsServerConfig(cert_file=str(cert), key_file=str(key), client_ca_file=str(client[0]))
    metrics = SelfMetrics()

    def failures() -> dict[str, float]:
        text = metrics.render().decode()
        reasons = ("peer_did_not_return_a_certificate", "http_request", "tlsv1_alert_unknown_ca")
        return {r: metric_value(text, HANDSHAKE_FAILURES, server="receivers.otlp.http", reason=r) for r in reasons}

    async with tls_receiver(tls, BatchSink(), metrics) as (_, http_port):
        url = f"https://localhost:{http_port}/v1/traces"
        assert await http_export(url, client_context(cert, client)) == 200  # a handshake that succeeds: not counted
        with pytest.raises(aiohttp.ClientError):
            await http_export(url, client_context(cert))  # no client certificate
        with pytest.raises(aiohttp.ClientError):
            await http_export(f"http://localhost:{http_port}/v1/traces", None)  # plain HTTP to the TLS port
        await asyncio.to_thread(refuse_the_servers_certificate, http_port)
        deadline = time.monotonic() + 5
        while sum(failures().values()) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # the alert is read by the server after the client has gone
        assert failures() == {"peer_did_not_return_a_certificate": 1, "http_request": 1, "tlsv1_alert_unknown_ca": 1}
        assert metric_value(metrics.render().decode(), HANDSHAKE_FAILURES) == 3


def handshake_offering_tls_1_1_at_most(port: int) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # what this client is for
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.0 and 1.1 at security level 0 only
    with socket.create_connection(("localhost", port)) as raw, pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="localhost")


async def test_a_client_offering_only_tls_older_than_1_2_is_refused_for_its_version(tmp_path: Path) -> None:
    """TLS 1.2 is the oldest version the receiver accepts; the refusal is counted as what it is."""
    cert, key = self_signed_certificate(tmp_path)
    metrics = SelfMetrics()
    async with tls_receiver(TlsServerConfig(cert_file=str(cert), key_file=str(key)), BatchSink(), metrics) as ports:
        await asyncio.to_thread(handshake_offering_tls_1_1_at_most, ports[1])
        deadline = time.monotonic() + 5
        while metric_value(metrics.render().decode(), HANDSHAKE_FAILURES) < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    text = metrics.render().decode()
    assert metric_value(text, HANDSHAKE_FAILURES, server="receivers.otlp.http", reason="unsupported_protocol") == 1
    assert metric_value(text, HANDSHAKE_FAILURES) == 1


def export_request(body: bytes) -> bytes:
    head = "POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n"
    return (head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def test_a_stopped_receiver_takes_nothing_from_a_connection_whose_handshake_ends_after_its_stop(
    tmp_path: Path,
) -> None:
    """asyncio hands aiohttp a TLS connection only once its handshake is done: one accepted before a reload stopped
    the receiver was served after, by the stopped pipeline, verified with the client CAs the reload rotated away."""
    cert, key = self_signed_certificate(tmp_path)
    client_cert, client_key = self_signed_certificate(tmp_path, "client")
    tls = TlsServerConfig(cert_file=str(cert), key_file=str(key), client_ca_file=str(client_cert))
    sink = BatchSink()
    async with tls_receiver(tls, sink) as (_, http_port):
        raw = socket.create_connection(("127.0.0.1", http_port), timeout=10)  # accepted; no ClientHello yet
        await asyncio.sleep(0.2)
    with raw:
        context = client_context(cert, (client_cert, client_key))
        answer = await asyncio.to_thread(status_after_handshake, raw, context, export_request(request_body()))
    assert answer is None, answer
    assert sink.batches == []


def encrypted_key_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "enc.pem", directory / "enc.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=localhost",
         "-passout", "pass:secret", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_missing_or_unusable_tls_files_are_refused_when_the_receiver_is_built_naming_them(
    tmp_path: Path, protocol: str
) -> None:
    """Before anything binds, and before a reload stops the running pipelines (which then go on). An encrypted key
    must not make OpenSSL ask for its passphrase on the terminal: with one (a foreground run, ``docker run -it``)
    the start, or a reload, would wait there for good."""
    cert, key = self_signed_certificate(tmp_path)
    other_cert, _ = self_signed_certificate(tmp_path, "other")
    encrypted_cert, encrypted_key = encrypted_key_certificate(tmp_path)
    not_a_certificate = tmp_path / "empty.pem"
    not_a_certificate.write_text("no certificate here\n")
    absent, directory = tmp_path / "absent.pem", tmp_path / "a-directory"
    directory.mkdir()
    cases = [  # (settings, what the error says, the file it names)
        (TlsServerConfig(cert_file=str(absent), key_file=str(key)), "TLS file not found", absent),
        (TlsServerConfig(cert_file=str(cert), key_file=str(directory)), "TLS file not found", directory),
        (TlsServerConfig(cert_file=str(other_cert), key_file=str(key)), "TLS file(s) not usable", other_cert),
        (
            TlsServerConfig(cert_file=str(cert), key_file=str(key), client_ca_file=str(not_a_certificate)),
            "TLS file(s) not usable",
            not_a_certificate,
        ),
        (
            TlsServerConfig(cert_file=str(encrypted_cert), key_file=str(encrypted_key)),
            "TLS key is encrypted",
            encrypted_key,
        ),
    ]
    for tls, message, named in cases:
        endpoint = HostPort(f"127.0.0.1:{free_port()}")
        config = OtlpReceiverConfig(
            grpc=GrpcConfig(endpoint=endpoint, tls=tls, enabled=protocol == "grpc"),
            http=HttpConfig(endpoint=endpoint, tls=tls, enabled=protocol == "http"),
        )
        settings = CreateSettings("otlp", Kind.RECEIVER, logging.getLogger("t"), SelfMetrics(), ServiceConfig(), {})
        with pytest.raises(RuntimeError) as raised:
            OtlpReceiver(config, settings, {Signal.TRACES: BatchSink()})
        told = str(raised.value)
        assert told.startswith(f"receivers.otlp.{protocol}.tls: {message}") and str(named) in told, told


def test_files_rotated_while_being_read_are_read_again_and_never_handed_to_grpc_half_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC gets the bytes read, Python's ssl checks the files: a rotation between the two must not give gRPC a
    pair that was never checked. The files are read again until two reads agree (or it gives up, naming them)."""
    cert, key = self_signed_certificate(tmp_path)
    tls = TlsServerConfig(cert_file=str(cert), key_file=str(key))
    reads = iter(range(100))
    real_read = TlsServerConfig._read

    def changing(self: TlsServerConfig) -> tuple[bytes, bytes, bytes | None]:
        key_bytes, cert_bytes, ca = real_read(self)
        return key_bytes + str(next(reads)).encode(), cert_bytes, ca  # a different key at every read

    monkeypatch.setattr(TlsServerConfig, "_read", changing)
    with pytest.raises(ValueError, match="TLS files keep changing while being read"):
        tls.load("receivers.otlp.grpc.tls")
    monkeypatch.setattr(TlsServerConfig, "_read", real_read)
    assert tls.load("receivers.otlp.grpc.tls").ssl_context is not None  # still, once they are still
    rotating = iter([True])  # the first read finds a rotation under way; the next ones agree

    def rotated_once(self: TlsServerConfig) -> tuple[bytes, bytes, bytes | None]:
        key_bytes, cert_bytes, ca = real_read(self)
        return (b"old" if next(rotating, False) else key_bytes), cert_bytes, ca

    monkeypatch.setattr(TlsServerConfig, "_read", rotated_once)
    assert tls.load("receivers.otlp.grpc.tls").ssl_context is not None


def test_a_certificate_or_key_file_that_is_not_one_is_named_with_what_it_lacks(tmp_path: Path) -> None:
    """OpenSSL said "[SSL] PEM lib" for a YAML file given as cert_file, naming no file and no reason (pass 150)."""
    import ssl

    from agent.server_tls import load_key_pair

    cert, key = self_signed_certificate(tmp_path)
    other_cert, _ = self_signed_certificate(tmp_path, "other")
    not_pem = tmp_path / "my.yaml"
    not_pem.write_text("receivers: {otlp: {}}\n")
    cases = [
        (not_pem, key, f"cert_file {not_pem} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        (cert, not_pem, f"key_file {not_pem} holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)"),
        (other_cert, key, f"the key in {key} is not the key of the certificate in {other_cert}"),
    ]
    for cert_file, key_file, message in cases:
        with pytest.raises(ValueError) as refused:
            load_key_pair(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), str(cert_file), str(key_file))
        assert str(refused.value) == message
