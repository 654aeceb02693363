"""The memory limiter: limits from the config and the container, refusing above the soft limit, recovering below."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from agent.component import CreateSettings, Kind, Refused, Signal
from agent.config.schema import ConfigError, Duration, build
from agent.config.service import ServiceConfig
from agent.otlp.signals import count_spans
from agent.processors.memory_limiter import memory
from agent.processors.memory_limiter.config import MemoryLimiterConfig
from agent.processors.memory_limiter.limiter import Limits, MemoryLimiter, limits_for
from agent.processors.memory_limiter.processor import create
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.sinks import BatchSink
from agent.testing.workload import Workload
from tests.helpers import metric_value

MIB = 1024 * 1024


def settings(metrics: SelfMetrics, shared: dict[str, object] | None = None) -> CreateSettings:
    return CreateSettings(
        "memory_limiter",
        Kind.PROCESSOR,
        logging.getLogger("t"),
        metrics,
        ServiceConfig(),
        {} if shared is None else shared,
    )


class FakeMemory:
    """Resident memory the test sets; ``release`` frees what the allocator kept (``reclaimable``). The next reading
    fails once when ``fail`` is set; ``readings`` counts them."""

    def __init__(self, resident: int, reclaimable: int = 0) -> None:
        self.resident = resident
        self.reclaimable = reclaimable
        self.releases = 0
        self.fail = False
        self.readings = 0

    def read(self) -> int:
        self.readings += 1
        if self.fail:
            self.fail = False
            raise OSError("cannot read /proc/self/statm")
        return self.resident

    def release(self) -> None:
        self.releases += 1
        self.resident -= self.reclaimable
        self.reclaimable = 0


def limiter_with(fake: FakeMemory, metrics: SelfMetrics, **config: Any) -> MemoryLimiter:
    return MemoryLimiter(
        MemoryLimiterConfig(**config),
        settings(metrics),
        resident=fake.read,
        total=lambda: 1000 * MIB,
        release=fake.release,
    )


def test_a_mib_limit_without_spike_limit_leaves_a_fifth_as_headroom() -> None:
    assert limits_for(MemoryLimiterConfig(limit_mib=500), lambda: None) == Limits(500 * MIB, 400 * MIB)
    assert limits_for(MemoryLimiterConfig(limit_mib=500, spike_limit_mib=100), lambda: None) == Limits(
        500 * MIB, 400 * MIB
    )
    assert limits_for(MemoryLimiterConfig(limit_mib=500, spike_limit_mib=50), lambda: None).soft == 450 * MIB


def test_percentages_are_of_the_container_limit() -> None:
    limits = limits_for(MemoryLimiterConfig(limit_percentage=80, spike_limit_percentage=25), lambda: 1000 * MIB)
    assert limits == Limits(800 * MIB, 550 * MIB)  # the soft limit is 80% - 25% of the total, as in the Collector


def test_a_percentage_without_a_known_total_is_an_error_at_start() -> None:
    with pytest.raises(RuntimeError, match="set limit_mib"):
        limits_for(MemoryLimiterConfig(limit_percentage=80), lambda: None)


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({}, "limit_mib", "set limit_mib or limit_percentage"),
        ({"limit_mib": 100, "limit_percentage": 50}, "limit_mib", "not both"),
        ({"limit_mib": 100, "spike_limit_mib": 100}, "spike_limit_mib", "smaller than limit_mib"),
        ({"limit_percentage": 50, "spike_limit_percentage": 60}, "spike_limit_percentage", "smaller"),
        ({"limit_percentage": 50, "spike_limit_mib": 10}, "spike_limit_mib", "use spike_limit_percentage"),
    ],
)
def test_inconsistent_limits_are_refused_with_their_path(config: dict[str, int], path: str, message: str) -> None:
    problems = dict(MemoryLimiterConfig(**config).validate())  # type: ignore[arg-type]
    assert message in problems[path]


def test_a_zero_check_interval_is_refused_with_the_limits_problem_beside_it() -> None:
    errors: list[ConfigError] = []
    build(MemoryLimiterConfig, {"check_interval": "0s", "limit_percentage": 50, "spike_limit_mib": 10}, "m", errors)
    assert [str(e) for e in errors] == [
        "m.check_interval: must be longer than 0s",
        "m.spike_limit_mib: applies to limit_mib; with limit_percentage use spike_limit_percentage",
    ]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_cgroup_v2_limit_of_the_process_is_found(tmp_path: Path) -> None:
    proc = write(tmp_path / "cgroup", "0::/kubepods/pod1/c1\n")
    write(tmp_path / "fs/kubepods/pod1/c1/memory.max", f"{512 * MIB}\n")
    assert memory.container_limit_bytes(proc, tmp_path / "fs") == 512 * MIB


def test_inside_a_container_the_cgroup_v2_limit_is_at_the_mount_root(tmp_path: Path) -> None:
    proc = write(tmp_path / "cgroup", "0::/\n")
    write(tmp_path / "fs/memory.max", f"{256 * MIB}\n")
    assert memory.container_limit_bytes(proc, tmp_path / "fs") == 256 * MIB


def test_no_limit_is_none_in_both_cgroup_versions(tmp_path: Path) -> None:
    proc = write(tmp_path / "cgroup", "4:memory:/a\n0::/\n")
    write(tmp_path / "fs/memory.max", "max\n")
    write(tmp_path / "fs/memory/a/memory.limit_in_bytes", "9223372036854771712\n")
    assert memory.container_limit_bytes(proc, tmp_path / "fs") is None


def test_the_cgroup_v1_limit_is_found(tmp_path: Path) -> None:
    proc = write(tmp_path / "cgroup", "9:name=systemd:/\n4:memory:/a/b\n3:cpuset:/\n")
    write(tmp_path / "fs/memory/a/b/memory.limit_in_bytes", f"{300 * MIB}\n")
    assert memory.container_limit_bytes(proc, tmp_path / "fs") == 300 * MIB


def test_of_two_cgroup_limits_the_smaller_one_is_the_limit(tmp_path: Path) -> None:
    """The cgroup's own limit and its parent's (at the mount root) both hold: the kernel enforces the lower."""
    proc = write(tmp_path / "cgroup", "0::/kubepods/pod1/c1\n")
    write(tmp_path / "fs/kubepods/pod1/c1/memory.max", f"{512 * MIB}\n")
    write(tmp_path / "fs/memory.max", f"{256 * MIB}\n")
    assert memory.container_limit_bytes(proc, tmp_path / "fs") == 256 * MIB


def test_the_resident_size_is_read_from_proc() -> None:
    # A real reading: a live Python process holds more than a few MiB and less than the machine.
    assert 4 * MIB < memory.resident_bytes() < memory.machine_bytes()


async def test_above_the_soft_limit_data_is_refused_and_below_it_accepted_again() -> None:
    metrics = SelfMetrics()
    fake = FakeMemory(resident=300 * MIB)
    limiter = limiter_with(fake, metrics, limit_mib=500)  # soft limit 400 MiB
    await limiter.start()
    try:
        assert not limiter.refusing
        fake.resident = 450 * MIB
        limiter.check()
        assert limiter.refusing
        assert metric_value(metrics.render().decode(), "otel_sidecar_memory_limiter_refusing") == 1
        fake.resident = 390 * MIB
        limiter.check()
        assert not limiter.refusing
        assert metric_value(metrics.render().decode(), "otel_sidecar_memory_limiter_refusing") == 0
        fake.resident = 400 * MIB  # at the soft limit, not above it
        limiter.check()
        assert not limiter.refusing
        text = metrics.render().decode()
        assert metric_value(text, "otel_sidecar_memory_limiter_limit_bytes", limit="hard") == 500 * MIB
        assert metric_value(text, "otel_sidecar_memory_limiter_limit_bytes", limit="soft") == 400 * MIB
    finally:
        await limiter.shutdown(0)


async def test_memory_is_measured_every_check_interval() -> None:
    """At a 10 ms interval, many readings in well under a second (a fixed 1 s check would make one, at start)."""
    fake = FakeMemory(300 * MIB)
    limiter = checking_every_10ms(fake)
    await limiter.start()
    try:
        for _ in range(90):  # up to 0.9 s
            if fake.readings >= 5:
                break
            await asyncio.sleep(0.01)
    finally:
        await limiter.shutdown(0)
    assert fake.readings >= 5


async def test_memory_the_allocator_kept_is_released_before_deciding_to_refuse() -> None:
    fake = FakeMemory(resident=450 * MIB, reclaimable=100 * MIB)
    limiter = limiter_with(fake, SelfMetrics(), limit_mib=500)
    await limiter.start()
    try:
        assert fake.releases == 1
        assert not limiter.refusing  # 350 MiB once the freed heap went back to the OS
        limiter.check()
        assert fake.releases == 1  # below the soft limit: nothing to release
    finally:
        await limiter.shutdown(0)


async def test_an_agent_already_over_its_limit_refuses_from_the_first_request() -> None:
    fake = FakeMemory(resident=600 * MIB)
    limiter = limiter_with(fake, SelfMetrics(), limit_mib=500)
    await limiter.start()
    await limiter.shutdown(0)
    assert limiter.refusing


def checking_every_10ms(fake: FakeMemory) -> MemoryLimiter:
    return limiter_with(fake, SelfMetrics(), check_interval=Duration(0.01), limit_mib=500)


async def test_a_check_that_fails_does_not_stop_the_checks_after_it() -> None:
    resident = FakeMemory(300 * MIB)
    limiter = checking_every_10ms(resident)
    await limiter.start()
    try:
        resident.fail = True
        resident.resident = 450 * MIB
        for _ in range(200):  # up to 2 s: the failed check, then one that measures 450 MiB
            if limiter.refusing:
                break
            await asyncio.sleep(0.01)
        assert not resident.fail  # the failure happened
        assert limiter.refusing
    finally:
        await limiter.shutdown(0)


async def test_once_told_to_stop_refusing_a_check_at_high_memory_does_not_refuse_again() -> None:
    """At shutdown, what was accepted must pass to be flushed, however high memory is."""
    fake = FakeMemory(resident=450 * MIB)
    limiter = limiter_with(fake, SelfMetrics(), limit_mib=500)
    await limiter.start()
    try:
        assert limiter.refusing
        limiter.stop_refusing("the receivers have stopped")
        assert not limiter.refusing
        fake.resident = 480 * MIB
        limiter.check()
        assert not limiter.refusing
    finally:
        await limiter.shutdown(0)


async def test_a_limiter_started_by_two_pipelines_stops_checking_at_shutdown() -> None:
    resident = FakeMemory(300 * MIB)
    limiter = checking_every_10ms(resident)
    await limiter.start()
    await limiter.start()  # its instance in a second pipeline
    await limiter.shutdown(0)
    readings = resident.readings
    await asyncio.sleep(0.1)  # ten check intervals
    assert resident.readings == readings


async def test_the_processor_refuses_retryably_counts_what_it_refused_and_passes_the_rest() -> None:
    metrics = SelfMetrics()
    sink = BatchSink()
    shared: dict[str, object] = {}
    processor = create(MemoryLimiterConfig(limit_mib=500), settings(metrics, shared), Signal.TRACES, sink)
    fake = FakeMemory(resident=100 * MIB)
    processor.limiter = limiter_with(fake, metrics, limit_mib=500)
    await processor.start()
    first, second = (request for request, _ in Workload(seed=1).requests(2))
    processor.consume(first)
    fake.resident = 480 * MIB
    processor.limiter.check()
    with pytest.raises(Refused, match="high memory usage"):
        processor.consume_sized(second, second.ByteSize())
    await processor.shutdown(0)
    assert sink.batches == [first]
    refused = metric_value(
        metrics.render().decode(), "otel_sidecar_memory_limiter_refused_items_total", signal="traces"
    )
    assert refused == count_spans(second)


async def test_a_batch_offered_again_and_again_is_counted_as_refused_once() -> None:
    metrics = SelfMetrics()
    sink = BatchSink()
    processor = create(MemoryLimiterConfig(limit_mib=500), settings(metrics), Signal.TRACES, sink)
    processor.limiter = limiter_with(FakeMemory(resident=480 * MIB), metrics, limit_mib=500)
    await processor.start()
    batch = next(iter(Workload(seed=2).requests(1)))[0]
    for _ in range(20):  # the ingest queue's retries, every 50 ms
        with pytest.raises(Refused):
            processor.consume(batch)
    await processor.shutdown(0)
    refused = metric_value(metrics.render().decode(), "otel_sidecar_memory_limiter_refused_items_total")
    assert refused == count_spans(batch)


async def test_refused_batches_are_not_held_once_memory_is_back_under_the_limit() -> None:
    """A connector offers fresh batches: remembering them (to count each once) must not keep their memory."""
    metrics = SelfMetrics()
    processor = create(MemoryLimiterConfig(limit_mib=500), settings(metrics), Signal.TRACES, BatchSink())
    fake = FakeMemory(resident=480 * MIB)
    processor.limiter = limiter_with(fake, metrics, limit_mib=500)
    await processor.start()
    for batch, _ in Workload(seed=4).requests(10):
        with pytest.raises(Refused):
            processor.consume(batch)
    fake.resident = 100 * MIB
    processor.limiter.check()
    processor.consume(next(iter(Workload(seed=5).requests(1)))[0])
    await processor.shutdown(0)
    assert not processor._refused_ids


def test_one_limiter_serves_the_component_in_every_pipeline() -> None:
    shared: dict[str, object] = {}
    metrics = SelfMetrics()
    config = MemoryLimiterConfig(limit_mib=500)
    traces = create(config, settings(metrics, shared), Signal.TRACES, BatchSink())
    logs = create(config, settings(metrics, shared), Signal.LOGS, BatchSink())
    assert traces.limiter is logs.limiter
    traces.limiter.refusing = True  # memory is the process's: every pipeline refuses, and says it is process-wide
    spans = next(iter(Workload(seed=6).requests(1)))[0]
    for processor, batch in ((traces, spans), (logs, ExportLogsServiceRequest())):
        with pytest.raises(Refused, match="high memory usage") as refused:
            processor.consume(batch)
        assert refused.value.process_wide
