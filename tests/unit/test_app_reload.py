"""The config reload (SIGHUP) in process, for the paths a real process reaches only by chance: a failed fallback,
the admin endpoint left where it listens. tests/integration/test_agent_process.py drives it by signals."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from agent.app import Agent
from agent.component import Kind
from agent.config.loader import AgentConfig, load_text
from agent.exporters._helper.queue import SendingQueueConfig
from agent.receivers.otlp import OtlpReceiver
from tests.helpers import base_config, free_port, metric_value


def load(config: dict[str, Any]) -> AgentConfig:
    return load_text(yaml.safe_dump(config))


class Reloadable:
    """An agent whose config file is ``self.config``, changed by the test before each reload."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = base_config(tmp_path / "out")
        self.agent = Agent(load(self.config), load_config=lambda: load(self.config))

    @property
    def admin_url(self) -> str:
        return f"http://{self.agent.config.service.telemetry.admin.endpoint}"


@pytest.fixture
async def reloadable(tmp_path: Path) -> AsyncIterator[Reloadable]:
    running = Reloadable(tmp_path)
    await running.agent.start()
    yield running
    await running.agent.stop()


async def admin_answers(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url + "/health/live") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def test_when_neither_config_can_start_the_reload_says_so_and_releases_what_runs(
    reloadable: Reloadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = reloadable.admin_url

    async def taken(self: OtlpReceiver) -> None:
        raise OSError(98, "address already in use")

    monkeypatch.setattr(OtlpReceiver, "start", taken)
    with pytest.raises(RuntimeError, match="neither the new nor the previous config could start"):
        await reloadable.agent.reload()
    assert not await admin_answers(url)  # released, not left serving a dead agent
    assert reloadable.agent.graph.receivers_started is False


async def admin_status(url: str, path: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url + path) as response:
        return response.status


async def test_a_reload_a_sigterm_interrupted_leaves_the_agent_not_ready_until_it_stops(
    reloadable: Reloadable, tmp_path: Path
) -> None:
    """The receivers stopped for the flush and the new config is not started: nothing listens, so neither the
    probe nor the gauge may say ready while the agent goes on to stop."""
    reloadable.config["exporters"]["file"]["path"] = str(tmp_path / "out-after")
    reloadable.agent.request_stop(signal.SIGTERM)  # the first one: it asks for the stop, the loop does it
    assert not await reloadable.agent.reload()
    assert await admin_status(reloadable.admin_url, "/health/ready") == 503
    assert metric_value(reloadable.agent.metrics.render().decode(), "otel_sidecar_ready") == 0
    assert not (tmp_path / "out-after").exists()


async def test_a_start_that_fails_releases_what_had_started(tmp_path: Path) -> None:
    """The gRPC server starts before the HTTP one: when the HTTP port is taken, the gRPC port and the admin
    endpoint are free again for whatever starts next (the process, or a test, going on)."""
    config = base_config(tmp_path / "out")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        config["receivers"]["otlp"]["http"]["endpoint"] = f"127.0.0.1:{taken.getsockname()[1]}"
        agent = Agent(load(config))
        with pytest.raises(RuntimeError, match=r"receivers\.otlp: failed to start"):
            await agent.start()
    finally:
        taken.close()
    for endpoint in (
        config["receivers"]["otlp"]["grpc"]["endpoint"],
        config["service"]["telemetry"]["admin"]["endpoint"],
    ):
        host, port = endpoint.rsplit(":", 1)
        with socket.socket() as probe:
            probe.bind((host, int(port)))  # raises OSError while something still listens there


async def test_the_admin_endpoint_warning_compares_with_where_it_listens(
    reloadable: Reloadable, caplog: pytest.LogCaptureFixture
) -> None:
    listening = reloadable.config["service"]["telemetry"]["admin"]["endpoint"]
    elsewhere = f"127.0.0.1:{free_port()}"
    warned = []
    for endpoint in (elsewhere, elsewhere, listening):
        caplog.clear()
        reloadable.config["service"]["telemetry"]["admin"]["endpoint"] = endpoint
        assert await reloadable.agent.reload()
        warned.append(any("takes a restart" in r.getMessage() for r in caplog.records))
    assert warned == [True, True, False]
    assert await admin_answers(f"http://{listening}")


async def test_a_reload_removes_the_series_of_components_it_removed(reloadable: Reloadable) -> None:
    reloadable.config["exporters"] = {"file/renamed": reloadable.config["exporters"]["file"]}
    for pipeline in reloadable.config["service"]["pipelines"].values():
        pipeline["exporters"] = ["file/renamed"]
    assert await reloadable.agent.reload()
    text = reloadable.agent.metrics.render().decode()
    assert 'exporter="file/renamed"' in text
    assert 'exporter="file"' not in text


async def test_a_reload_removes_every_series_of_a_removed_processor_the_decision_latency_histogram_too(
    tmp_path: Path,
) -> None:
    """README "Reloading the config": the agent's own series of components the new config no longer has are
    removed. The sampler's decision-latency histogram is a custom collector outside SelfMetrics' families."""
    running = Reloadable(tmp_path)
    running.config["processors"] = {"tail_sampling": {}}
    running.config["service"]["pipelines"]["traces"]["processors"] = ["tail_sampling"]
    running.agent = Agent(load(running.config), load_config=lambda: load(running.config))
    await running.agent.start()
    try:
        assert 'processor="tail_sampling"' in running.agent.metrics.render().decode()
        del running.config["processors"]
        del running.config["service"]["pipelines"]["traces"]["processors"]
        assert await running.agent.reload()
        text = running.agent.metrics.render().decode()
        left = [line for line in text.splitlines() if 'processor="tail_sampling"' in line]
        assert left == []
    finally:
        await running.agent.stop()


async def test_a_reload_refused_at_build_leaves_no_series_of_the_components_it_built(reloadable: Reloadable) -> None:
    """Review pass 68: since 415d173 a receiver's TLS files are read when the graph is built, so a half-rotated
    certificate makes the reload *refused* (not *failed*), and the refused path never calls forget_components:
    the series the new graph's constructors made (its ingest queue, a new tail sampler) stay for good."""
    config = reloadable.config
    config["receivers"]["otlp/gw"] = {
        "grpc": {"endpoint": f"127.0.0.1:{free_port()}", "tls": {"cert_file": "/nonexistent.pem", "key_file": "/k"}},
        "http": {"enabled": False},
    }
    config["processors"] = {"tail_sampling/new": {}}
    config["service"]["pipelines"]["traces"]["receivers"] = ["otlp", "otlp/gw"]
    config["service"]["pipelines"]["traces"]["processors"] = ["tail_sampling/new"]
    assert not await reloadable.agent.reload()
    text = reloadable.agent.metrics.render().decode()
    left = [line for line in text.splitlines() if "otlp/gw" in line or "tail_sampling/new" in line]
    assert left == []


async def test_a_fallback_whose_tls_files_are_gone_says_neither_config_could_start_and_releases_the_admin_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new config (certificates moved to a new path) builds, its start fails (a port taken), and the previous
    config is built again: since 415d173 that *build* reads the old, deleted files and raises outside the try of
    Agent._start_instead, so the admin endpoint stays open and the 'neither ... could start' message is lost."""
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    from tests.helpers import self_signed_certificate

    old_cert, old_key = self_signed_certificate(old_dir)
    new_cert, new_key = self_signed_certificate(new_dir)
    running = Reloadable(tmp_path)
    running.config["receivers"]["otlp"]["grpc"]["tls"] = {"cert_file": str(old_cert), "key_file": str(old_key)}
    running.agent = Agent(load(running.config), load_config=lambda: load(running.config))
    await running.agent.start()
    url = running.admin_url
    try:
        running.config["receivers"]["otlp"]["grpc"]["tls"] = {"cert_file": str(new_cert), "key_file": str(new_key)}
        old_cert.unlink()
        old_key.unlink()

        async def taken(self: OtlpReceiver) -> None:
            raise OSError(98, "address already in use")

        monkeypatch.setattr(OtlpReceiver, "start", taken)
        with pytest.raises(RuntimeError, match="neither the new nor the previous config could start"):
            await running.agent.reload()
        assert not await admin_answers(url)
    finally:
        await running.agent.admin.shutdown()


async def test_a_refused_reload_leaves_the_running_exporters_gauges_alone(tmp_path: Path) -> None:
    """A reload builds its components before it knows it can use them: the loadbalancing exporter's constructor
    used to bind the healthy-gateways gauge to its own (empty) state, and reset the known-gateways gauge, so after
    a refused reload both read 0 for the exporter still running."""
    running = Reloadable(tmp_path)
    gateways = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    running.config["exporters"]["loadbalancing"] = {
        "protocol": {"tls": {"insecure": True}},
        "resolver": {"static": {"hostnames": gateways}},
    }
    running.config["service"]["pipelines"]["traces"]["exporters"] = ["loadbalancing"]
    running.agent = Agent(load(running.config), load_config=lambda: load(running.config))
    await running.agent.start()
    try:

        def gauge(name: str) -> float:
            return metric_value(running.agent.metrics.render().decode(), f"otel_sidecar_loadbalancer_{name}")

        assert (gauge("backends"), gauge("healthy_backends")) == (2, 2)
        tls = {"cert_file": str(tmp_path / "absent.pem"), "key_file": str(tmp_path / "absent.key")}
        running.config["receivers"]["otlp"]["grpc"]["tls"] = tls  # refused when the new graph is built
        assert not await running.agent.reload()
        assert (gauge("backends"), gauge("healthy_backends")) == (2, 2)
    finally:
        await running.agent.stop()


async def test_a_counter_restarted_by_a_reload_rises_from_zero_though_scraped_only_after_it(tmp_path: Path) -> None:
    """A reload rebuilds the span-metrics connector, whose counters start again. A count of 1 scraped before the
    reload and 2 after, first scraped after, read 1 → 2 in Prometheus: no reset, and one count lost from
    increase(). The new exporter takes the previous one's last scrape, so the restarted series rises from zero;
    and its series' starts, so an application's counter that did not restart keeps its value (a zero would read
    as a reset, and increase() would count it twice)."""
    metrics_endpoint = f"127.0.0.1:{free_port()}"
    config = base_config(tmp_path / "out")
    config["exporters"]["prometheus"] = {"endpoint": metrics_endpoint}
    config["service"]["pipelines"]["metrics"]["exporters"] = ["prometheus"]
    agent = Agent(load(config), load_config=lambda: load(config))
    await agent.start()
    try:
        http = f"http://{config['receivers']['otlp']['http']['endpoint']}/v1/metrics"

        app_start = time.time_ns()  # an application's counter, running through the reload

        async def push_and_scrape(session: aiohttp.ClientSession, value: int, app_value: int) -> tuple[float, float]:
            start = time.time_ns()  # each run of the span counter starts now, as the rebuilt connector's do
            metrics = [counter("spans.failed", value, start), counter("jobs.done", app_value, app_start)]
            body = ExportMetricsServiceRequest(resource_metrics=[{"scope_metrics": [{"metrics": metrics}]}])
            headers = {"Content-Type": "application/x-protobuf"}
            async with session.post(http, data=body.SerializeToString(), headers=headers) as answer:
                assert answer.status == 200
            await wait_for(lambda: agent.graph.component("prometheus").accumulator.pending == 0)
            async with session.get(f"http://{metrics_endpoint}/metrics") as scrape:
                text = await scrape.text()
            return metric_value(text, "spans_failed_total"), metric_value(text, "jobs_done_total")

        async with aiohttp.ClientSession() as session:
            assert await push_and_scrape(session, 1, 5) == (1, 5)  # before any scrape: values (the agent may be new)
            assert await agent.reload()
            assert await push_and_scrape(session, 2, 6) == (0, 6)  # the restarted one from zero; the other goes on
    finally:
        await agent.stop()


async def test_span_metrics_go_on_through_a_reload_with_their_counts(tmp_path: Path) -> None:
    """Spans counted before a SIGHUP and still unscraped were lost: the reload built a new connector counting from
    zero (pass 91). The new one takes the old one's series, so the scrape after the reload shows every span."""
    from agent.testing.workload import Workload

    metrics_endpoint = f"127.0.0.1:{free_port()}"
    config = base_config(tmp_path / "out")
    config["connectors"] = {"spanmetrics": {"metrics_flush_interval": "50ms"}}
    config["exporters"]["prometheus"] = {"endpoint": metrics_endpoint, "new_series_at_zero_for": "0s"}
    config["service"]["pipelines"]["traces"]["exporters"] = ["file", "spanmetrics"]
    config["service"]["pipelines"]["metrics"] = {"receivers": ["spanmetrics"], "exporters": ["prometheus"]}
    agent = Agent(load(config), load_config=lambda: load(config))
    await agent.start()
    try:
        http = f"http://{config['receivers']['otlp']['http']['endpoint']}/v1/traces"
        requests = [request for request, _ in Workload(seed=3).requests(4)]
        spans = [sum(len(ss.spans) for rs in r.resource_spans for ss in rs.scope_spans) for r in requests]

        async def send_and_scrape(session: aiohttp.ClientSession, request: Any, expected: int) -> None:
            headers = {"Content-Type": "application/x-protobuf"}
            async with session.post(http, data=request.SerializeToString(), headers=headers) as answer:
                assert answer.status == 200
            deadline = time.monotonic() + 5
            while True:
                async with session.get(f"http://{metrics_endpoint}/metrics") as scrape:
                    text = await scrape.text()
                total = metric_value(text, "orchestrator_spans_total") if "orchestrator_spans_total" in text else 0
                if total == expected or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert total == expected

        async with aiohttp.ClientSession() as session:
            await send_and_scrape(session, requests[0], spans[0])
            async with session.post(http, data=requests[1].SerializeToString(),
                                    headers={"Content-Type": "application/x-protobuf"}) as answer:  # fmt: skip
                assert answer.status == 200  # counted, not scraped before the reload
            await asyncio.sleep(0.2)
            assert await agent.reload()
            await send_and_scrape(session, requests[2], sum(spans[:3]))
    finally:
        await agent.stop()


async def test_an_applications_series_and_delta_sums_go_on_through_a_reload(tmp_path: Path) -> None:
    """A reload built a new, empty exporter state: applications' gauges and counters were missing from the
    scrape until they pushed again (a minute, with the SDKs' default), and a delta counter's sum restarted, losing
    what it had counted since the last scrape (pass 93). The new exporter now takes the state whole."""
    metrics_endpoint = f"127.0.0.1:{free_port()}"
    config = base_config(tmp_path / "out")
    config["exporters"]["prometheus"] = {"endpoint": metrics_endpoint, "new_series_at_zero_for": "0s"}
    config["service"]["pipelines"]["metrics"]["exporters"] = ["prometheus"]
    agent = Agent(load(config), load_config=lambda: load(config))
    await agent.start()
    try:
        http = f"http://{config['receivers']['otlp']['http']['endpoint']}/v1/metrics"
        start = time.time_ns() - 10**9

        async def push(session: aiohttp.ClientSession, *metrics: Metric) -> None:
            body = ExportMetricsServiceRequest(resource_metrics=[{"scope_metrics": [{"metrics": list(metrics)}]}])
            headers = {"Content-Type": "application/x-protobuf"}
            async with session.post(http, data=body.SerializeToString(), headers=headers) as answer:
                assert answer.status == 200
            await wait_for(lambda: agent.graph.component("prometheus").accumulator.pending == 0)

        async def scrape(session: aiohttp.ClientSession) -> str:
            async with session.get(f"http://{metrics_endpoint}/metrics") as answer:
                return await answer.text()

        async with aiohttp.ClientSession() as session:
            await push(session, gauge("queue.depth", 7, start), delta("errors", 1, start))
            assert metric_value(await scrape(session), "queue_depth") == 7
            await push(session, delta("errors", 1, start + 10**6))  # counted after the last scrape
            assert await agent.reload()
            text = await scrape(session)
            assert metric_value(text, "queue_depth") == 7  # still there: no push since the reload
            assert metric_value(text, "errors_total") == 2
    finally:
        await agent.stop()


async def test_a_failed_reloads_fallback_keeps_the_exporters_state_when_the_new_one_took_none(tmp_path: Path) -> None:
    """The new config's Prometheus endpoint was taken: the new exporter (another endpoint) took nothing over, and
    the fallback took over from it rather than from the stopped one, losing the gauges and delta sums the reload
    was meant to keep (pass 96)."""
    import socket

    metrics_endpoint, taken = f"127.0.0.1:{free_port()}", free_port()
    config = base_config(tmp_path / "out")
    config["exporters"]["prometheus"] = {"endpoint": metrics_endpoint, "new_series_at_zero_for": "0s"}
    config["service"]["pipelines"]["metrics"]["exporters"] = ["prometheus"]
    agent = Agent(load(config), load_config=lambda: load(config))
    await agent.start()
    busy = socket.socket()
    busy.bind(("127.0.0.1", taken))
    busy.listen()
    try:
        http = f"http://{config['receivers']['otlp']['http']['endpoint']}/v1/metrics"
        start = time.time_ns() - 10**9
        async with aiohttp.ClientSession() as session:
            body = ExportMetricsServiceRequest(
                resource_metrics=[
                    {"scope_metrics": [{"metrics": [gauge("queue.depth", 7, start), delta("errors", 2, start)]}]}
                ]
            )
            headers = {"Content-Type": "application/x-protobuf"}
            async with session.post(http, data=body.SerializeToString(), headers=headers) as answer:
                assert answer.status == 200
            await wait_for(lambda: agent.graph.component("prometheus").accumulator.pending == 0)
            config["exporters"]["prometheus"]["endpoint"] = f"127.0.0.1:{taken}"  # the new graph cannot bind
            assert not await agent.reload()
            async with session.get(f"http://{metrics_endpoint}/metrics") as scrape:
                text = await scrape.text()
        assert (metric_value(text, "queue_depth"), metric_value(text, "errors_total")) == (7, 2)
    finally:
        busy.close()
        await agent.stop()


def gauge(name: str, value: int, time_ns: int) -> Metric:
    metric = Metric(name=name)
    metric.gauge.data_points.add(as_int=value, time_unix_nano=time_ns)
    return metric


def delta(name: str, value: int, start_ns: int) -> Metric:
    metric = Metric(name=name)
    metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    metric.sum.is_monotonic = True
    metric.sum.data_points.add(as_int=value, start_time_unix_nano=start_ns, time_unix_nano=start_ns + 10**6)
    return metric


def counter(name: str, value: int, start_ns: int) -> Metric:
    metric = Metric(name=name)
    metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    metric.sum.is_monotonic = True
    metric.sum.data_points.add(as_int=value, start_time_unix_nano=start_ns, time_unix_nano=start_ns + 1)
    return metric


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def queue_left_on_disk(root: Path, exporter_id: str) -> None:
    """A batch an exporter ``exporter_id`` queued under ``root`` and never delivered."""
    from agent.component import Signal
    from agent.exporters._helper.queue import SendingQueue
    from agent.exporters._helper.retry import RetryableError, RetryConfig
    from agent.testing.workload import Workload
    from tests.delivery_doubles import build_config, make_settings

    async def down(signal: Signal, batch: Any) -> None:
        raise RetryableError("backend down", reason="unavailable")

    storage = {"storage": {"directory": str(root), "sync_interval": "0s"}}
    queue = SendingQueue(
        make_settings(exporter_id),
        build_config(SendingQueueConfig, storage),
        down,
        retry=RetryConfig(max_elapsed_time=0),
    )
    await queue.start()
    queue.offer(Signal.TRACES, next(iter(Workload(seed=1).requests(1)))[0])
    await queue.shutdown(time.monotonic() + 0.5)


def with_disk_queued_otlp(running: Reloadable, root: Path, exporter_id: str = "otlp") -> None:
    running.config["exporters"][exporter_id] = {
        "endpoint": f"127.0.0.1:{free_port()}",
        "tls": {"insecure": True},
        "sending_queue": {"storage": {"directory": str(root), "sync_interval": "0s"}},
    }
    running.config["service"]["pipelines"]["traces"]["exporters"] = [exporter_id]


def abandoned_bytes(running: Reloadable) -> dict[str, float]:
    text = running.agent.metrics.render().decode()
    family = "otel_sidecar_persistent_queue_abandoned_bytes{"
    return {
        line.split('directory="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(family)
    }


async def test_a_queue_directory_no_exporter_reads_is_reported_until_an_exporter_reads_it_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An exporter renamed by a reload left its persistent queue, accepted data, on disk with nothing to send it
    and nothing saying so (pass 90). The agent now reports such a directory, at start and after each reload."""
    root = tmp_path / "queue"
    await queue_left_on_disk(root, "otlp/old")
    running = Reloadable(tmp_path)
    with_disk_queued_otlp(running, root)
    running.agent = Agent(load(running.config), load_config=lambda: load(running.config))
    caplog.set_level(logging.WARNING)
    await running.agent.start()
    try:
        abandoned = str(root / "otlp__old")
        assert list(abandoned_bytes(running)) == [abandoned]
        assert [r.directory for r in caplog.records if "no exporter of this config sends" in r.getMessage()] == [
            abandoned
        ]
        # Renamed back: the exporter reads its directory again, and the report is gone.
        running.config["exporters"]["otlp/old"] = running.config["exporters"].pop("otlp")
        running.config["service"]["pipelines"]["traces"]["exporters"] = ["otlp/old"]
        assert await running.agent.reload()
        assert abandoned_bytes(running) == {}
    finally:
        await running.agent.stop()


async def test_the_report_outlives_configs_that_no_longer_name_the_directory_and_ends_when_it_is_deleted(
    tmp_path: Path,
) -> None:
    """Pass 92: a second reload whose configs named no storage directory cleared the report while the data was
    still there, and deleting the directory, as the warning advises, left it (and its alert) until a reload."""
    root = tmp_path / "queue"
    await queue_left_on_disk(root, "otlp/old")
    running = Reloadable(tmp_path)
    with_disk_queued_otlp(running, root)
    running.agent = Agent(load(running.config), load_config=lambda: load(running.config))
    await running.agent.start()
    try:
        for _ in range(2):  # to memory queues, then again: no config names the storage directory any more
            del running.config["exporters"]["otlp"]["sending_queue"]
            running.config["exporters"]["otlp"]["sending_queue"] = {"queue_size": 100}
            assert await running.agent.reload()
            assert list(abandoned_bytes(running)) == [str(root / "otlp__old")]
        shutil.rmtree(root / "otlp__old")
        await running.agent._report_abandoned_queues()  # what the minute's check does
        assert abandoned_bytes(running) == {}
    finally:
        await running.agent.stop()


async def test_a_queue_directory_another_agent_holds_is_not_reported(tmp_path: Path) -> None:
    """Another agent sharing the storage directory holds its own queue's lock: its data is not abandoned. Probed
    by taking the lock for a moment (an agent in another container is not in this one's /proc/locks)."""
    import fcntl
    import os

    root = tmp_path / "queue"
    await queue_left_on_disk(root, "otlp/neighbour")
    held = os.open(root / "otlp__neighbour" / "lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    running = Reloadable(tmp_path)
    with_disk_queued_otlp(running, root)
    running.agent = Agent(load(running.config), load_config=lambda: load(running.config))
    await running.agent.start()
    try:
        assert abandoned_bytes(running) == {}
        os.close(held)  # the neighbour stopped: its data waits for it
        await running.agent._report_abandoned_queues()
        assert list(abandoned_bytes(running)) == [str(root / "otlp__neighbour")]
    finally:
        await running.agent.stop()


@pytest.mark.parametrize("same_cache_sizes", [True, False])
async def test_late_spans_of_a_trace_decided_before_a_reload_follow_its_decision(
    tmp_path: Path, same_cache_sizes: bool
) -> None:
    """A reload (a SIGHUP, rotated TLS files) built a new sampler with empty decision caches: the late spans of an
    error trace kept before it were buffered as a new trace and, without an error of their own, mostly dropped
    (pass 106). The new sampler goes on with the stopped one's caches, unless their sizes changed."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    from agent.otlp.probability import is_sampled, threshold_for
    from agent.testing.workload import to_request
    from tests.helpers import output_spans

    trace_id = next(t for t in (bytes([i]) * 16 for i in range(1, 255)) if not is_sampled(t, threshold_for(0.1)))
    config = base_config(tmp_path / "out")
    config["processors"] = {
        "tail_sampling": {"decision_wait": "200ms", "decision_wait_after_root": "200ms", "tick_interval": "20ms"}
    }
    config["service"]["pipelines"]["traces"]["processors"] = ["tail_sampling"]
    agent = Agent(load(config), load_config=lambda: load(config))
    await agent.start()
    try:
        http = f"http://{config['receivers']['otlp']['http']['endpoint']}/v1/traces"
        root = Span(
            trace_id=trace_id, span_id=b"\x01" * 8, name="workflow", status=Status(code=Status.STATUS_CODE_ERROR)
        )
        late = Span(trace_id=trace_id, span_id=b"\x02" * 8, parent_span_id=b"\x01" * 8, name="cleanup")
        headers = {"Content-Type": "application/x-protobuf"}
        async with aiohttp.ClientSession() as session:
            async with session.post(http, data=to_request({"orchestrator": [root]}).SerializeToString(),
                                    headers=headers) as answer:  # fmt: skip
                assert answer.status == 200
            await wait_for(lambda: len(output_spans(tmp_path / "out")) == 1)  # decided: kept by the errors policy
            if not same_cache_sizes:
                config["processors"]["tail_sampling"]["decision_cache"] = {"kept_size": 50_000}
            assert await agent.reload()
            async with session.post(http, data=to_request({"orchestrator": [late]}).SerializeToString(),
                                    headers=headers) as answer:  # fmt: skip
                assert answer.status == 200
            sampler = agent.graph.component("tail_sampling", Kind.PROCESSOR).sampler
            if same_cache_sizes:
                await wait_for(lambda: len(output_spans(tmp_path / "out")) == 2)  # forwarded at once, as kept
            else:
                await wait_for(lambda: trace_id in sampler.dropped)  # decided afresh after decision_wait
        spans = {span.span_id: span for _, _, span in output_spans(tmp_path / "out")}
        if same_cache_sizes:
            assert set(spans) == {root.span_id, late.span_id}
            assert spans[late.span_id].trace_state == spans[root.span_id].trace_state == "ot=th:0"
        else:  # a span without an error, in a trace outside the 10%
            assert set(spans) == {root.span_id}
        assert sampler.took_over is same_cache_sizes
    finally:
        await agent.stop()


async def test_the_rest_of_a_trace_a_reload_dropped_early_is_judged_on_its_own_spans(tmp_path: Path) -> None:
    """A reload decides what the sampler holds on the spans it has; a drop forced so must not follow the trace: its
    slow root, arriving after the reload, is kept by the latency policy (pass 108: the inherited dropped filter
    threw it away before any policy saw it)."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from agent.otlp.probability import is_sampled, threshold_for
    from agent.testing.workload import to_request
    from tests.helpers import output_spans

    trace_id = next(t for t in (bytes([i]) * 16 for i in range(1, 255)) if not is_sampled(t, threshold_for(0.1)))
    config = base_config(tmp_path / "out")
    config["processors"] = {
        "tail_sampling": {
            "decision_wait": "30s",
            "decision_wait_after_root": "100ms",
            "tick_interval": "20ms",
            "policies": {"latency": {"threshold": "2s"}},
        }
    }
    config["service"]["pipelines"]["traces"]["processors"] = ["tail_sampling"]
    agent = Agent(load(config), load_config=lambda: load(config))
    await agent.start()
    try:
        http = f"http://{config['receivers']['otlp']['http']['endpoint']}/v1/traces"
        start = time.time_ns()
        child = Span(trace_id=trace_id, span_id=b"\x02" * 8, parent_span_id=b"\x01" * 8, name="step",
                     start_time_unix_nano=start + 10**9, end_time_unix_nano=start + 2 * 10**9)  # fmt: skip
        root = Span(trace_id=trace_id, span_id=b"\x01" * 8, name="workflow",
                    start_time_unix_nano=start, end_time_unix_nano=start + 30 * 10**9)  # fmt: skip
        headers = {"Content-Type": "application/x-protobuf"}
        async with aiohttp.ClientSession() as session:
            async with session.post(http, data=to_request({"orchestrator": [child]}).SerializeToString(),
                                    headers=headers) as answer:  # fmt: skip
                assert answer.status == 200
            buffered = agent.graph.component("tail_sampling", Kind.PROCESSOR).sampler.buffer
            await wait_for(lambda: len(buffered) == 1)
            assert await agent.reload()  # decides the child's trace: 1 s long, outside the 10%: dropped
            async with session.post(http, data=to_request({"orchestrator": [root]}).SerializeToString(),
                                    headers=headers) as answer:  # fmt: skip
                assert answer.status == 200
            await wait_for(lambda: len(output_spans(tmp_path / "out")) == 1)
        ((_, _, kept),) = output_spans(tmp_path / "out")
        assert kept.span_id == root.span_id
    finally:
        await agent.stop()


async def test_components_no_pipeline_uses_are_warned_of_at_start_and_at_each_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = base_config(tmp_path / "out")
    config["processors"] = {"redaction": {}}
    agent = Agent(load(config), load_config=lambda: load(config))

    def warnings() -> list[Any]:
        found = [r for r in caplog.records if r.getMessage().startswith("components defined but used by no pipeline")]
        caplog.clear()
        return [getattr(r, "components", None) for r in found]

    with caplog.at_level(logging.WARNING):
        await agent.start()
        try:
            assert warnings() == [["processors.redaction"]]
            config["service"]["pipelines"]["traces"]["processors"] = ["redaction"]
            assert await agent.reload()
            assert warnings() == []
            config["exporters"]["file/unused"] = {"path": str(tmp_path / "unused")}
            assert await agent.reload()
            assert warnings() == [["exporters.file/unused"]]
        finally:
            await agent.stop()


async def test_persistent_queues_that_may_outgrow_their_volume_are_warned_of_at_start_and_at_each_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Pass 152: three 256 MiB queues on a full 200 KiB volume started without a word, and refused every sender."""
    stats = os.statvfs(tmp_path)
    config = base_config(tmp_path / "out")
    config["exporters"]["file"]["sending_queue"] = {
        "max_bytes": stats.f_blocks * stats.f_frsize + 1,
        "storage": {"directory": str(tmp_path / "queue")},
    }
    agent = Agent(load(config), load_config=lambda: load(config))

    def warnings() -> list[Any]:
        found = [r for r in caplog.records if r.getMessage() == "persistent queues may outgrow their volume"]
        caplog.clear()
        return [str(getattr(r, "problem", "")).split(":")[0] for r in found]

    with caplog.at_level(logging.WARNING):
        await agent.start()
        try:
            assert warnings() == ["exporters.file"]
            config["exporters"]["file"]["sending_queue"]["max_bytes"] = 1024
            assert await agent.reload()
            assert warnings() == []
        finally:
            await agent.stop()
