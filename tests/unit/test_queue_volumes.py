"""Persistent queues whose max_bytes add up to more than their volume: said at start and by validate --check-files.

Real filesystems only: the bounds are set from the size ``os.statvfs`` gives for the test's own directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from agent import cli
from agent.config.loader import load_text
from agent.exporters._helper.queue_volumes import oversubscribed_queue_volumes


def volume_size(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_blocks * stats.f_frsize


def config_text(root: Path, bounds: dict[str, int], unused: tuple[str, ...] = ()) -> str:
    exporters = {
        exporter_id: {
            "endpoint": "jaeger:4317",
            "sending_queue": {"max_bytes": max_bytes, "storage": {"directory": str(root / "queue")}},
        }
        for exporter_id, max_bytes in bounds.items()
    }
    used = [exporter_id for exporter_id in bounds if exporter_id not in unused]
    return yaml.safe_dump(
        {
            "receivers": {"otlp": {}},
            "exporters": exporters,
            "service": {
                "pipelines": {"traces": {"receivers": ["otlp"], "exporters": used}},
                "telemetry": {"admin": {"endpoint": "127.0.0.1:0"}},
            },
        }
    )


def test_queues_that_together_may_outgrow_their_volume_are_named_with_their_sum(tmp_path: Path) -> None:
    """Pass 152 found three queues of 256 MiB each on a 200 KiB volume: it fills first, the senders are refused
    with no bound reached, and the near-full alert never fires. Here two queues of just over half the volume."""
    half = volume_size(tmp_path) // 2 + 1
    config = load_text(config_text(tmp_path, {"otlp/a": half, "otlp/b": half}))
    (problem,) = oversubscribed_queue_volumes(config)
    assert problem.startswith("exporters.otlp/a, exporters.otlp/b: sending_queue.max_bytes add up to ")
    assert f"more than the volume of {tmp_path} holds (" in problem


def test_queues_that_fit_their_volume_or_are_in_no_pipeline_are_not_named(tmp_path: Path) -> None:
    quarter = volume_size(tmp_path) // 4
    assert oversubscribed_queue_volumes(load_text(config_text(tmp_path, {"otlp/a": quarter, "otlp/b": quarter}))) == []
    whole = volume_size(tmp_path) + 1
    unused = load_text(config_text(tmp_path, {"otlp/a": quarter, "otlp/b": whole}, unused=("otlp/b",)))
    assert oversubscribed_queue_volumes(unused) == []  # never built: it queues nothing


def test_validate_check_files_warns_of_it_and_still_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(config_text(tmp_path, {"otlp/a": volume_size(tmp_path) + 1}))
    assert cli.main(["validate", "--config", str(config)]) == cli.EXIT_OK
    assert "warning" not in capsys.readouterr().err  # the config alone: no volume to look at
    assert cli.main(["validate", "--check-files", "--config", str(config)]) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert err.startswith(f"{config}: warning: exporters.otlp/a: sending_queue.max_bytes add up to "), err


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (1000 * 2**20, "1000 MiB"),
        (1536 * 2**30, "1.5 TiB"),
        (200 * 2**10, "200 KiB"),
        (3 * 2**29, "1.5 GiB"),
        (2**30, "1 GiB"),  # a unit reached exactly is that unit, not 1024 of the one below
        (int(1.34 * 2**30), "1.3 GiB"),  # one decimal at most
        (512, "512 B"),
    ],
)
def test_sizes_are_shown_without_an_exponent(size: int, shown: str) -> None:
    from agent.exporters._helper.queue_volumes import _binary

    assert _binary(size) == shown
