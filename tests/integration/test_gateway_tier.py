"""Sidecars route by trace id to a gateway tier of tail samplers: separate agent processes on 127.0.0.x.

Two "pods" each have a sidecar: one sees the orchestrator's spans of every trace, the other the spans of the
LLM gateway, vector store and tools. Gateways are found through DNS (a tiny DNS server the test controls
stands in for a Kubernetes headless Service) and decide traces with the tail sampler.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from agent.exporters.loadbalancing.ring import HashRing
from agent.otlp.probability import is_sampled, threshold_for
from agent.testing.dns_server import DnsServer
from agent.testing.workload import TraceTruth, Workload, to_request
from tests.helpers import AgentProcess, free_port, output_spans, self_signed_certificate, wait_until

GATEWAY_NAME = "otel-gateway-headless.observability.svc.cluster.local"
TEN_PERCENT = threshold_for(0.1)
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
POD_A_SERVICES = {"orchestrator"}


@dataclass
class TierTls:
    """Mutual TLS between the tiers: gateways present a certificate for the Service's name (not for pod IPs,
    which change at every rollout) and accept only sidecars presenting the client certificate."""

    gateway_cert: Path
    gateway_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def made_in(cls, directory: Path) -> TierTls:
        directory.mkdir()
        gateway_cert, gateway_key = self_signed_certificate(directory, "gateway", host=GATEWAY_NAME, ip=None)
        client_cert, client_key = self_signed_certificate(directory, "sidecar", host="otel-sidecar")
        return cls(gateway_cert, gateway_key, client_cert, client_key)

    def receiver(self) -> dict[str, str]:
        return {
            "cert_file": str(self.gateway_cert),
            "key_file": str(self.gateway_key),
            "client_ca_file": str(self.client_cert),
        }

    def exporter(self) -> dict[str, str]:
        return {
            "ca_file": str(self.gateway_cert),
            "cert_file": str(self.client_cert),
            "key_file": str(self.client_key),
            "server_name_override": GATEWAY_NAME,
        }


@dataclass
class Tier:
    gateway_port: int
    gateways: dict[str, AgentProcess]
    sidecars: list[AgentProcess]
    dns: DnsServer
    workdir: Path
    tls: TierTls | None = None

    def add_gateway(self, ip: str) -> None:
        config = gateway_config(ip, self.gateway_port, self.workdir / f"gw-{ip}", self.tls)
        (self.workdir / ip).mkdir(exist_ok=True)
        self.gateways[ip] = AgentProcess(config, self.workdir / ip).start()

    def stop_all(self) -> None:
        for agent in [*self.sidecars, *self.gateways.values()]:
            agent.stop()

    def spans_by_gateway(self) -> dict[str, dict[bytes, set[bytes]]]:
        """For each gateway: trace id → span ids it wrote."""
        found: dict[str, dict[bytes, set[bytes]]] = {}
        for ip, agent in self.gateways.items():
            traces: dict[bytes, set[bytes]] = {}
            for _resource, _scope, span in output_spans(agent.out_dir):
                traces.setdefault(span.trace_id, set()).add(span.span_id)
            found[ip] = traces
        return found


def gateway_config(ip: str, port: int, out: Path, tls: TierTls | None = None) -> dict[str, Any]:
    grpc_server: dict[str, Any] = {"endpoint": f"{ip}:{port}"}
    if tls is not None:
        grpc_server["tls"] = tls.receiver()
    return {
        "receivers": {"otlp": {"grpc": grpc_server, "http": {"enabled": False}}},
        "processors": {"tail_sampling": {"decision_wait": "3s", "decision_wait_after_root": "3s"}},
        "exporters": {"file": {"path": str(out)}},
        "service": {
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["tail_sampling"], "exporters": ["file"]}},
            "telemetry": {"admin": {"endpoint": f"{ip}:{free_port()}"}},
            "shutdown_timeout": "10s",
        },
    }


def sidecar_config(port: int, dns: DnsServer, workdir: Path, tls: TierTls | None = None) -> dict[str, Any]:
    return {
        "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{free_port()}"}, "http": {"enabled": False}}},
        "exporters": {
            "loadbalancing": {
                "protocol": {"tls": tls.exporter() if tls else {"insecure": True}, "timeout": "2s"},
                "resolver": {
                    "dns": {"hostname": GATEWAY_NAME, "port": port, "interval": "200ms", "nameservers": [dns.address]}
                },
                "backend_cooldown": "30s",
                "retry_on_failure": {"initial_interval": "200ms", "max_interval": "1s"},
            },
            "file": {"path": str(workdir / "unused")},
        },
        "service": {
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["loadbalancing"]}},
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{free_port()}"}},
            "shutdown_timeout": "10s",
        },
    }


@contextlib.contextmanager
def gateway_tier(tmp_path: Path, gateway_ips: list[str], tls: TierTls | None = None) -> Iterator[Tier]:
    port = free_port()
    with DnsServer(GATEWAY_NAME, gateway_ips) as dns:
        tier = Tier(port, {}, [], dns, tmp_path, tls)
        try:
            for ip in gateway_ips:
                tier.add_gateway(ip)
            for name in ("pod-a", "pod-b"):
                (tmp_path / name).mkdir()
                config = sidecar_config(port, dns, tmp_path / name, tls)
                tier.sidecars.append(AgentProcess(config, tmp_path / name).start())
            yield tier
        finally:
            for agent in [*tier.sidecars, *tier.gateways.values()]:
                agent.kill()


def cross_pod_traces(count: int, seed: int) -> list[tuple[dict[str, list[Span]], TraceTruth]]:
    """Traces whose error, when they have one, is in one pod only (alternately the orchestrator's or the LLM's)."""
    workload = Workload(seed=seed, error_rate=0.1)
    traces = []
    for index in range(count):
        spans, truth = workload.trace()
        if truth.error:
            healthy_pod = POD_A_SERVICES if index % 2 else set(spans) - POD_A_SERVICES
            for service in healthy_pod:
                for span in spans.get(service, []):
                    span.status.CopyFrom(Status())
                    del span.attributes[:]
        traces.append((spans, truth))
    return traces


def send(tier: Tier, traces: list[tuple[dict[str, list[Span]], TraceTruth]]) -> None:
    """Each pod's sidecar gets its own services' spans of every trace, as separate SDK batches of 20 traces."""
    for pod, sidecar in enumerate(tier.sidecars):
        channel = grpc.insecure_channel(sidecar.grpc_endpoint)
        export = channel.unary_unary(EXPORT)
        for start in range(0, len(traces), 20):
            batch: dict[str, list[Span]] = {}
            for spans, _ in traces[start : start + 20]:
                for service, service_spans in spans.items():
                    if (service in POD_A_SERVICES) == (pod == 0):
                        batch.setdefault(service, []).extend(service_spans)
            export(to_request(batch).SerializeToString(), timeout=10)
        channel.close()


def wait_until_routed(tier: Tier) -> None:
    """Until each sidecar has delivered everything it accepted: ``send`` returns once the sidecars have queued the
    spans, and they pick a gateway only when their exporter splits the batch."""
    wait_until(
        lambda: all(
            s.metric("otel_sidecar_loadbalancer_routed_items_total")
            == s.metric("otel_sidecar_receiver_accepted_items_total")
            for s in tier.sidecars
        )
    )


def check_complete_and_whole(tier: Tier, traces: list[tuple[dict[str, list[Span]], TraceTruth]]) -> dict[bytes, str]:
    """Every kept trace on exactly one gateway with all its spans; return where each kept trace went."""
    by_gateway = tier.spans_by_gateway()
    placement: dict[bytes, str] = {}
    for ip, found in by_gateway.items():
        for trace_id in found:
            assert trace_id not in placement, f"trace {trace_id.hex()} split across {placement.get(trace_id)} and {ip}"
            placement[trace_id] = ip
    for spans, truth in traces:
        expected = {span.span_id for service_spans in spans.values() for span in service_spans}
        should_keep = truth.error or is_sampled(truth.trace_id, TEN_PERCENT)
        if should_keep:
            assert truth.trace_id in placement, f"{'error' if truth.error else 'sampled'} trace lost"
            assert by_gateway[placement[truth.trace_id]][truth.trace_id] == expected, "trace incomplete"
        else:
            assert truth.trace_id not in placement
    ours = {truth.trace_id for _, truth in traces}
    return {trace_id: ip for trace_id, ip in placement.items() if trace_id in ours}


def test_error_traces_whose_error_is_in_one_pod_come_out_whole_on_one_gateway(tmp_path: Path) -> None:
    traces = cross_pod_traces(400, seed=21)
    with gateway_tier(tmp_path, ["127.0.0.2", "127.0.0.3", "127.0.0.4"]) as tier:
        send(tier, traces)
        time.sleep(1.0)
        tier.stop_all()
        placement = check_complete_and_whole(tier, traces)
    errors = [t for _, t in traces if t.error]
    assert len(errors) >= 20
    assert len(set(placement.values())) == 3  # all gateways took part
    ring = HashRing([f"{ip}:{tier.gateway_port}" for ip in tier.gateways])
    assert all(ring.owner(tid).startswith(ip + ":") for tid, ip in placement.items())


def test_sidecars_reach_their_gateways_over_mutual_tls_checked_against_the_service_name(tmp_path: Path) -> None:
    """Gateways are dialled by pod IP and verified by the Service's name (``server_name_override``); each takes
    only the sidecars' client certificate. Every trace still comes out whole on the gateway that owns it."""
    traces = cross_pod_traces(200, seed=23)
    with gateway_tier(tmp_path, ["127.0.0.2", "127.0.0.3"], TierTls.made_in(tmp_path / "certs")) as tier:
        send(tier, traces)
        time.sleep(1.0)
        tier.stop_all()
        placement = check_complete_and_whole(tier, traces)
        assert all('"tls": true' in gw.log() for gw in tier.gateways.values())  # not plain text by mistake
    assert len(set(placement.values())) == 2
    assert any(t.error for _, t in traces)


def test_membership_changes_move_only_the_expected_share_and_lose_nothing(tmp_path: Path) -> None:
    phases = [cross_pod_traces(300, seed=s) for s in (31, 32, 33)]
    with gateway_tier(tmp_path, ["127.0.0.2", "127.0.0.3", "127.0.0.4"]) as tier:
        port = tier.gateway_port
        send(tier, phases[0])
        wait_until_routed(tier)  # a batch still being split when DNS changes is split across both rings
        tier.add_gateway("127.0.0.5")
        tier.dns.addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
        wait_until(lambda: all(s.metric("otel_sidecar_loadbalancer_backends") == 4 for s in tier.sidecars))
        send(tier, phases[1])
        wait_until_routed(tier)
        tier.dns.addresses = ["127.0.0.3", "127.0.0.4", "127.0.0.5"]
        wait_until(lambda: all(s.metric("otel_sidecar_loadbalancer_backends") == 3 for s in tier.sidecars))
        send(tier, phases[2])
        time.sleep(1.0)
        tier.stop_all()
        placements = [check_complete_and_whole(tier, phase) for phase in phases]
    rings = [HashRing(f"127.0.0.{n}:{port}" for n in hosts) for hosts in ((2, 3, 4), (2, 3, 4, 5), (3, 4, 5))]
    for placement, ring in zip(placements, rings, strict=True):
        assert all(ring.owner(tid) == f"{ip}:{port}" for tid, ip in placement.items())
    # The share that moves is the ring's business (tested in unit tests); with ~60 kept traces a share asserted on
    # the sample would fail now and then. Here: the ring gives the newcomer about a quarter for this very port,
    # and the traces that moved went to it and nowhere else.
    probe = random.Random(7)
    ids = [probe.randbytes(16) for _ in range(20_000)]
    assert 0.15 < sum(rings[0].owner(i) != rings[1].owner(i) for i in ids) / len(ids) < 0.35
    added = [tid for tid in placements[1] if rings[0].owner(tid) != rings[1].owner(tid)]
    assert {placements[1][tid] for tid in added} == {"127.0.0.5"}
    removed = [tid for tid in placements[2] if rings[1].owner(tid) != rings[2].owner(tid)]
    assert all(rings[1].owner(tid) == f"127.0.0.2:{port}" for tid in removed)


@pytest.mark.parametrize("victim", ["127.0.0.3"])
def test_a_gateway_killed_mid_run_is_routed_around_and_nothing_sent_after_is_lost(tmp_path: Path, victim: str) -> None:
    before, after = cross_pod_traces(200, seed=41), cross_pod_traces(300, seed=42)
    with gateway_tier(tmp_path, ["127.0.0.2", "127.0.0.3", "127.0.0.4"]) as tier:
        send(tier, before)
        tier.gateways[victim].kill()  # SIGKILL: its undecided traces die with it; the sidecars must notice
        send(tier, after)
        wait_until(lambda: all(s.metric("otel_sidecar_exporter_queue_size") == 0 for s in tier.sidecars), timeout=30)
        rerouted = sum(s.metric("otel_sidecar_loadbalancer_rerouted_items_total") for s in tier.sidecars)
        time.sleep(1.0)
        del tier.gateways[victim]
        tier.stop_all()
        placement = check_complete_and_whole(tier, after)
    assert victim not in set(placement.values())
    assert rerouted > 0
