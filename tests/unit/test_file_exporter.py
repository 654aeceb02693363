from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from agent.component import CreateSettings, Kind, Signal
from agent.config.service import ServiceConfig
from agent.exporters._helper.queue import SendingQueueConfig
from agent.exporters.file import FileExporter, FileExporterConfig, RotationConfig
from agent.otlp import json_codec
from agent.otlp.signals import ExportTraceServiceRequest
from agent.telemetry.selfmetrics import SelfMetrics
from agent.testing.workload import Workload
from tests.helpers import metric_value


def exporter(path: Path, rotation: RotationConfig) -> FileExporter:
    settings = CreateSettings("file", Kind.EXPORTER, logging.getLogger("t"), SelfMetrics(), ServiceConfig(), {})
    queue = SendingQueueConfig(queue_size=5000)
    return FileExporter(FileExporterConfig(path=str(path), rotation=rotation, sending_queue=queue), settings)


async def test_each_export_request_is_one_otlp_json_line_in_the_signal_file(tmp_path: Path) -> None:
    file = exporter(tmp_path, RotationConfig())
    await file.start()
    requests = [r for r, _ in Workload(seed=6).requests(5)]
    for request in requests:
        copy = ExportTraceServiceRequest()
        copy.CopyFrom(request)
        file.consumer_for(Signal.TRACES).consume(copy)
    await file.shutdown(time.monotonic() + 5)
    lines = (tmp_path / "traces.jsonl").read_text().splitlines()
    assert [json_codec.decode(line.encode(), ExportTraceServiceRequest) for line in lines] == requests
    assert (tmp_path / "traces.jsonl").stat().st_mode & 0o777 == 0o600  # telemetry is the owner's to read


async def test_files_rotate_by_size_and_keep_the_configured_backups(tmp_path: Path) -> None:
    file = exporter(tmp_path, RotationConfig(max_megabytes=1, max_backups=2))
    await file.start()
    for request, _ in Workload(seed=7).requests(1500):  # about 4 MB of JSON
        file.consumer_for(Signal.TRACES).consume(request)
    await file.shutdown(time.monotonic() + 30)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["traces.jsonl", "traces.jsonl.1", "traces.jsonl.2"]
    assert all(p.stat().st_size < 1.1 * 2**20 for p in tmp_path.iterdir())


@pytest.mark.parametrize("backups", [0, 1])
async def test_a_file_rotates_once_it_reaches_the_size_and_no_backups_means_none_kept(
    tmp_path: Path, backups: int
) -> None:
    file = exporter(tmp_path, RotationConfig(max_megabytes=1, max_backups=backups))
    await file.start()
    try:
        line = b"x" * (512 * 1024 - 1) + b"\n"
        file._append(Signal.TRACES, line)
        assert (tmp_path / "traces.jsonl").stat().st_size == 512 * 1024
        file._append(Signal.TRACES, line)  # exactly 1 MiB: rotated now, not a line later
        assert not (tmp_path / "traces.jsonl").exists()
        assert (tmp_path / "traces.jsonl.1").exists() == (backups == 1)
        file._append(Signal.TRACES, b"after\n")
        assert (tmp_path / "traces.jsonl").read_bytes() == b"after\n"
    finally:
        await file.shutdown(time.monotonic() + 5)


async def test_a_directory_it_cannot_write_in_fails_the_start_not_every_batch() -> None:
    # sysfs refuses new files even to root, as a read-only volume or a directory of another user would.
    file = exporter(Path("/sys/kernel"), RotationConfig())
    with pytest.raises(OSError, match="path: cannot write files in /sys/kernel"):
        await file.start()


async def test_a_batch_still_encoding_at_the_shutdown_deadline_is_not_written_after_it_was_counted_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The JSON encoding of a large batch runs in a thread, which the deadline cannot stop. It used to write the
    line after shutdown had counted the batch as not delivered, through a file handle opened after the files
    were closed (and never closed). Now nothing is appended once the write was abandoned."""
    import asyncio
    import threading

    from agent.exporters import file as file_module

    started, release, encoded = threading.Event(), threading.Event(), threading.Event()
    real_encode = json_codec.encode

    def slow_encode(message: ExportTraceServiceRequest) -> bytes:  # a batch that takes long to encode
        started.set()
        release.wait(10)
        try:
            return real_encode(message)
        finally:
            encoded.set()

    monkeypatch.setattr(file_module.json_codec, "encode", slow_encode)
    metrics = SelfMetrics()
    settings = CreateSettings("file", Kind.EXPORTER, logging.getLogger("t"), metrics, ServiceConfig(), {})
    file = FileExporter(FileExporterConfig(path=str(tmp_path)), settings)
    await file.start()
    # The second waits for the write lock (two consumers by default): nothing of it is written either.
    requests = [request for request, _ in Workload(seed=6).requests(2)]
    for request in requests:
        file.consumer_for(Signal.TRACES).consume(request)
    assert await asyncio.to_thread(started.wait, 5)
    await asyncio.sleep(0.1)
    await file.shutdown(time.monotonic() + 0.2)
    release.set()
    assert await asyncio.to_thread(encoded.wait, 5)
    await asyncio.sleep(0.3)  # time for an append that would follow the encoding
    spans = sum(len(ss.spans) for request in requests for rs in request.resource_spans for ss in rs.scope_spans)
    failed = metric_value(metrics.render().decode(), "otel_sidecar_exporter_send_failed_items_total", reason="shutdown")
    assert failed == spans
    assert not (tmp_path / "traces.jsonl").exists() or (tmp_path / "traces.jsonl").stat().st_size == 0
    assert file._files == {}
