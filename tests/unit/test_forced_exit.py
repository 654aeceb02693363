"""A second SIGTERM during the flush: the agent exits at once, saying how many items it loses, by component."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest
import yaml

from agent import app as app_module
from agent.app import Agent
from agent.component import Signal
from agent.config.loader import load_text
from agent.exporters.file import FileExporter
from agent.pipeline.ingest import IngestQueue
from agent.processors.tail_sampling.processor import TailSamplingProcessor
from tests.helpers import base_config


class Exited(Exception):
    pass


def test_a_component_that_cannot_count_leaves_the_others_counts_and_the_total_says_it_is_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    agent = Agent(load_text(yaml.safe_dump(base_config(tmp_path / "out"))))

    def broken(self: FileExporter) -> int:
        raise RuntimeError("a bug")

    def exit_now(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(IngestQueue, "held_items", lambda self: 500)
    monkeypatch.setattr(FileExporter, "held_items", broken)
    monkeypatch.setattr(app_module.os, "_exit", exit_now)
    with caplog.at_level(logging.ERROR, "otel_sidecar"), pytest.raises(Exited):
        agent._exit_without_flushing(signal.SIGTERM)
    [said] = [r for r in caplog.records if r.getMessage().startswith("second termination signal")]
    assert said.getMessage() == (
        "second termination signal (SIGTERM): exiting without flushing; 500 items and an unknown number more held "
        "in memory are lost (persistent queues keep theirs on disk)"
    )
    assert said.lost_items == {"receivers.otlp[ingest]": 500, "exporters.file": None}  # type: ignore[attr-defined]


def tail_sampled(tmp_path: Path) -> Agent:
    """An agent whose traces and logs pipelines share one tail sampler: one config path, a node in each."""
    config = base_config(tmp_path / "out")
    config["processors"] = {"tail_sampling": {}}
    for signal_name in ("traces", "logs"):
        config["service"]["pipelines"][signal_name]["processors"] = ["tail_sampling"]
    return Agent(load_text(yaml.safe_dump(config, sort_keys=False)))  # the traces pipeline first


def test_what_one_component_holds_for_several_pipelines_is_counted_once_for_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = {Signal.TRACES: 30, Signal.LOGS: 12}
    monkeypatch.setattr(TailSamplingProcessor, "held_items", lambda self: held[self.signal])
    assert tail_sampled(tmp_path).graph.held_items()["processors.tail_sampling"] == 42


def test_a_component_one_of_whose_pipelines_cannot_count_is_unknown_whatever_the_next_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def traces_broken(self: TailSamplingProcessor) -> int:
        if self.signal is Signal.TRACES:
            raise RuntimeError("a bug")
        return 12

    monkeypatch.setattr(TailSamplingProcessor, "held_items", traces_broken)
    assert tail_sampled(tmp_path).graph.held_items()["processors.tail_sampling"] is None
