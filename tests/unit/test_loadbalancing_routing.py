from __future__ import annotations

import asyncio
import collections
import logging
import os

import dns.resolver
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.exporters.loadbalancing.resolver import DnsResolver
from agent.exporters.loadbalancing.ring import HashRing
from agent.exporters.loadbalancing.split import split_logs, split_traces
from agent.telemetry.logs import RateLimitedLog
from agent.testing.dns_server import DnsServer
from agent.testing.workload import Workload

IDS = [os.urandom(16) for _ in range(20000)]


def test_trace_ids_spread_evenly_over_backends() -> None:
    ring = HashRing(["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"])
    counts = collections.Counter(ring.owner(trace_id) for trace_id in IDS)
    assert all(abs(count / len(IDS) - 1 / 3) < 0.05 for count in counts.values())


def test_adding_a_fourth_backend_moves_about_a_quarter_of_the_traces_and_only_to_it() -> None:
    before = HashRing(["a:1", "b:1", "c:1"])
    after = HashRing(["a:1", "b:1", "c:1", "d:1"])
    moved = [trace_id for trace_id in IDS if before.owner(trace_id) != after.owner(trace_id)]
    assert 0.18 < len(moved) / len(IDS) < 0.32
    assert {after.owner(trace_id) for trace_id in moved} == {"d:1"}


def test_removing_a_backend_moves_only_its_own_traces() -> None:
    before = HashRing(["a:1", "b:1", "c:1"])
    after = before.without("b:1")
    for trace_id in IDS[:5000]:
        if before.owner(trace_id) != "b:1":
            assert after.owner(trace_id) == before.owner(trace_id)


def test_a_trace_id_hashing_past_the_last_ring_point_belongs_to_the_first_point_s_owner() -> None:
    """The ring wraps around: past its last point, the first point owns (pass 143: the last one's did)."""
    from agent.exporters.loadbalancing.ring import _hash

    # Backends whose first and last ring points have different owners, so that the two readings differ.
    ring = next(
        ring
        for ring in (HashRing([f"gw{n}-{i}:4317" for i in range(3)]) for n in range(100))
        if ring._owners[0] != ring._owners[-1]
    )
    past_the_end = [trace_id for trace_id in IDS if _hash(trace_id) > ring._positions[-1]]
    assert past_the_end, "no trace id hashed past the last point"
    assert all(ring.owner(trace_id) == ring._owners[0] for trace_id in past_the_end)


def test_every_sidecar_computes_the_same_owner_whatever_the_order_it_learned_backends_in() -> None:
    assert all(HashRing(["a:1", "b:1", "c:1"]).owner(i) == HashRing(["c:1", "a:1", "b:1"]).owner(i) for i in IDS[:500])


@given(st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=5))
def test_splitting_a_batch_keeps_every_span_once_and_each_trace_on_one_backend(traces: int, backends: int) -> None:
    request = ExportTraceServiceRequest()
    for part, _ in Workload(seed=traces).requests(traces):
        request.resource_spans.extend(part.resource_spans)
    ring = HashRing([f"gw{i}:4317" for i in range(backends)])
    parts = split_traces(request, ring.owner)
    seen: dict[bytes, str] = {}
    span_ids = []
    for backend, part in parts.items():
        for rs in part.resource_spans:
            assert rs.resource.attributes  # resources travel with their spans
            for ss in rs.scope_spans:
                for span in ss.spans:
                    assert seen.setdefault(span.trace_id, backend) == backend
                    assert ring.owner(span.trace_id) == backend
                    span_ids.append(span.span_id)
    expected = [s.span_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert sorted(span_ids) == sorted(expected)


def test_a_split_batch_keeps_the_schema_urls_of_its_resources_and_scopes() -> None:
    request = ExportTraceServiceRequest()
    for part, _ in Workload(seed=5).requests(30):
        request.resource_spans.extend(part.resource_spans)
    for rs in request.resource_spans:
        rs.schema_url = "https://opentelemetry.io/schemas/1.21.0"
        for ss in rs.scope_spans:
            ss.schema_url = "https://opentelemetry.io/schemas/1.24.0"
    parts = split_traces(request, HashRing(["gw0:4317", "gw1:4317", "gw2:4317"]).owner)
    assert len(parts) == 3
    for part in parts.values():
        assert {rs.schema_url for rs in part.resource_spans} == {"https://opentelemetry.io/schemas/1.21.0"}
        assert {ss.schema_url for rs in part.resource_spans for ss in rs.scope_spans} == {
            "https://opentelemetry.io/schemas/1.24.0"
        }


GATEWAY_NAME = "gateways.observability.svc.cluster.local"


async def follow_dns(answers: list[list[str]]) -> tuple[list[list[str]], list[str]]:
    """Run a DnsResolver (every 0.1 s) against a DNS server answering each of ``answers`` in turn for 0.5 s;
    return the gateway lists it reported and the lookup outcomes."""
    changes: list[list[str]] = []
    results: list[str] = []

    async def on_change(endpoints: list[str]) -> None:
        changes.append(endpoints)

    with DnsServer(GATEWAY_NAME, answers[0]) as server:
        resolver = DnsResolver(
            GATEWAY_NAME,
            4317,
            interval=0.1,
            timeout=1.0,
            nameservers=[server.address],
            log=RateLimitedLog(logging.getLogger("t")),
            on_result=results.append,
        )
        await resolver.start(on_change)
        for addresses in answers[1:]:
            server.addresses = addresses
            await asyncio.sleep(0.5)
        await resolver.shutdown()
    return changes, results


async def test_the_dns_resolver_follows_the_answer_and_keeps_the_last_members_when_lookups_fail() -> None:
    changes, results = await follow_dns([["127.0.0.2", "127.0.0.3"], ["127.0.0.3", "127.0.0.4"], []])
    assert changes == [["127.0.0.2:4317", "127.0.0.3:4317"], ["127.0.0.3:4317", "127.0.0.4:4317"]]
    assert "failure" in results and "success" in results


async def test_the_dns_resolver_takes_aaaa_records_too_for_ipv6_and_dual_stack_services() -> None:
    # IPv6 only at the end: the A lookup answers nothing, which is not a failure.
    changes, results = await follow_dns([["fd00::2", "127.0.0.2"], ["fd00::3"]])
    assert changes == [["127.0.0.2:4317", "[fd00::2]:4317"], ["[fd00::3]:4317"]]
    assert "failure" not in results


def dns_resolver(results: list[str], interval: float = 10.0) -> DnsResolver:
    return DnsResolver(
        GATEWAY_NAME,
        4317,
        interval=interval,
        timeout=1.0,
        nameservers=["127.0.0.1"],
        log=RateLimitedLog(logging.getLogger("t")),
        on_result=results.append,
    )


@pytest.mark.parametrize("family", ["A", "AAAA"])
async def test_a_lookup_of_one_address_family_failing_keeps_the_last_gateways(family: str) -> None:
    """A dual-stack Service whose A (or AAAA) lookup times out once would otherwise shrink to its other members on
    this sidecar alone, moving half of the traces to other gateways than the other sidecars use."""
    from agent.exporters.loadbalancing.resolver import _LookupFailed

    results: list[str] = []
    changes: list[list[str]] = []
    failing: set[str] = set()
    resolver = dns_resolver(results)

    async def addresses(record_type: str) -> list[str]:
        if record_type in failing:
            raise _LookupFailed(f"{record_type}: timed out")
        return {"A": ["127.0.0.2"], "AAAA": ["fd00::2"]}[record_type]

    async def on_change(endpoints: list[str]) -> None:
        changes.append(endpoints)

    resolver._addresses = addresses  # type: ignore[method-assign]
    await resolver._refresh(on_change)
    failing.add(family)
    await resolver._refresh(on_change)
    assert changes == [["127.0.0.2:4317", "[fd00::2]:4317"]]
    assert results == ["success", "failure"]


async def test_a_short_service_name_is_looked_up_with_the_pods_search_domains() -> None:
    asked: list[dict[str, object]] = []
    resolver = dns_resolver([])

    async def resolve(name: str, record_type: str, **options: object) -> list[object]:
        asked.append(options)
        raise dns.resolver.NoAnswer()

    resolver._resolver.resolve = resolve  # type: ignore[method-assign]
    await resolver._addresses("A")
    assert asked == [{"search": True}]


def test_records_with_an_all_zero_trace_id_are_spread_like_records_without_one() -> None:
    ring = HashRing([f"10.0.0.{n}:4317" for n in range(1, 5)])
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for _ in range(50):
        records.add(trace_id=bytes(16)).body.string_value = "no trace"
    owners = [next(iter(split_logs(request, ring.owner))) for _ in range(40)]  # one random gateway per batch
    assert len(set(owners)) > 1


async def test_a_family_the_ring_has_no_member_of_may_fail_without_freezing_the_ring() -> None:
    """A DNS server failing every AAAA lookup of an IPv4-only cluster: the A answers still drive the ring."""
    from agent.exporters.loadbalancing.resolver import _LookupFailed

    results: list[str] = []
    changes: list[list[str]] = []
    a_records = ["127.0.0.2"]
    resolver = dns_resolver(results)

    async def addresses(record_type: str) -> list[str]:
        if record_type == "AAAA":
            raise _LookupFailed("AAAA: SERVFAIL")
        return list(a_records)

    async def on_change(endpoints: list[str]) -> None:
        changes.append(endpoints)

    resolver._addresses = addresses  # type: ignore[method-assign]
    await resolver._refresh(on_change)
    a_records.append("127.0.0.3")  # the gateways scaled out
    await resolver._refresh(on_change)
    assert changes == [["127.0.0.2:4317"], ["127.0.0.2:4317", "127.0.0.3:4317"]]


async def test_an_answer_that_could_not_be_applied_is_applied_again_at_the_next_lookup_though_unchanged() -> None:
    """Applying the gateways fails once (a transport that cannot start): the same answer next time must not be
    taken as already applied, or the ring would keep the old gateways until DNS changes again."""
    records = ["127.0.0.2"]
    changes: list[list[str]] = []
    failures = 1
    applied_again = asyncio.Event()
    resolver = dns_resolver([], interval=0.01)

    async def addresses(record_type: str) -> list[str]:
        return list(records) if record_type == "A" else []

    async def on_change(endpoints: list[str]) -> None:
        nonlocal failures
        changes.append(endpoints)
        if endpoints == ["127.0.0.3:4317"] and failures:
            failures -= 1
            raise RuntimeError("cannot start the transport")
        if len(changes) == 3:
            applied_again.set()

    resolver._addresses = addresses  # type: ignore[method-assign]
    await resolver.start(on_change)
    records[:] = ["127.0.0.3"]  # the next lookups all answer this
    try:
        await asyncio.wait_for(applied_again.wait(), 5)
    finally:
        await resolver.shutdown()
    assert changes == [["127.0.0.2:4317"], ["127.0.0.3:4317"], ["127.0.0.3:4317"]]
