"""Where the gateways are: a static list, or DNS (a Kubernetes headless Service: every A or AAAA record is a
gateway, so IPv4, IPv6 and dual-stack clusters all work).

The DNS resolver re-resolves every ``interval`` and reports changes; a failed lookup keeps the last known
members (a DNS hiccup must not empty the ring) and is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from agent.exporters.loadbalancing.config import parse_nameserver
from agent.telemetry.logs import RateLimitedLog

OnChange = Callable[[list[str]], Awaitable[None]]


class _LookupFailed(Exception):
    pass


class Resolver(Protocol):
    async def start(self, on_change: OnChange) -> None: ...

    async def shutdown(self) -> None: ...


class StaticResolver:
    def __init__(self, endpoints: list[str]) -> None:
        self._endpoints = sorted(set(endpoints))

    async def start(self, on_change: OnChange) -> None:
        await on_change(self._endpoints)

    async def shutdown(self) -> None:
        return None


class DnsResolver:
    """Resolves ``hostname`` to its A and AAAA records and joins each with ``port`` (``[address]:port`` for IPv6)."""

    def __init__(
        self,
        hostname: str,
        port: int,
        interval: float,
        timeout: float,
        nameservers: list[str],
        log: RateLimitedLog,
        on_result: Callable[[str], None],
    ) -> None:
        self._hostname = hostname
        self._port = port
        self._interval = interval
        self._timeout = timeout
        self._log = log
        self._on_result = on_result
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(nameserver)) for nameserver in nameservers
            ]
        self._resolver.lifetime = timeout
        self._task: asyncio.Task[None] | None = None
        self._current: list[str] | None = None

    async def start(self, on_change: OnChange) -> None:
        await self._refresh(on_change)
        self._task = asyncio.create_task(self._loop(on_change))

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self, on_change: OnChange) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._refresh(on_change)
            except Exception as exc:  # a failure to apply one answer must not stop resolving for good
                self._current = None  # apply the next answer even if it is the same
                self._log.warning("apply", f"cannot apply the gateways of {self._hostname}: {exc!r}")

    async def _addresses(self, record_type: str) -> list[str]:
        """The addresses of one record type; none (not an error) when the name has only the other family."""
        try:
            # search: a short name (otel-gateway-headless.observability.svc) takes the pod's search domains, as
            # glibc and Go resolve it.
            answer = await self._resolver.resolve(self._hostname, record_type, search=True)
        except dns.resolver.NoAnswer:
            return []
        except (dns.exception.DNSException, OSError) as exc:
            raise _LookupFailed(f"{record_type}: {exc}") from None
        return [record.address for record in answer]

    def _loses_a_family(self, answers: Sequence[list[str] | BaseException]) -> bool:
        current = self._current or []
        has_ipv4 = any(not endpoint.startswith("[") for endpoint in current)
        has_ipv6 = any(endpoint.startswith("[") for endpoint in current)
        a_failed, aaaa_failed = (isinstance(answer, BaseException) for answer in answers)
        return (a_failed and has_ipv4) or (aaaa_failed and has_ipv6)

    async def _refresh(self, on_change: OnChange) -> None:
        answers = await asyncio.gather(self._addresses("A"), self._addresses("AAAA"), return_exceptions=True)
        addresses = sorted({address for answer in answers if isinstance(answer, list) for address in answer})
        failed = next((a for a in answers if isinstance(a, BaseException)), None)
        if not addresses or self._loses_a_family(answers):
            # No record of either family, or the lookup of a family the ring has members of failed: an empty or
            # half answer (a dual-stack Service's A records timing out) must not change the ring on this sidecar
            # alone. A family the ring has none of may fail (a DNS server failing AAAA lookups of an IPv4-only
            # cluster): what did answer is used.
            error = failed or "no A or AAAA records"
            self._on_result("failure")
            self._log.warning("dns", f"cannot resolve {self._hostname}; keeping the last known gateways: {error}")
            return
        self._on_result("success")
        endpoints = [f"[{a}]:{self._port}" if ":" in a else f"{a}:{self._port}" for a in addresses]
        if endpoints != self._current:
            self._current = endpoints
            await on_change(endpoints)
