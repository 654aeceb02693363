"""``tail_sampling`` processor: decide per whole trace which traces to keep, and with which retention class.

Modules: ``config`` (settings), ``buffer`` (undecided traces), ``policies/`` (one module per policy),
``decision_cache`` (late spans), ``logs`` (log record classes), ``output`` (regrouped, stamped requests),
``sampler`` (the engine shared across pipelines), ``processor`` (the pipeline stage and factory).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from agent.component import Factory, Kind, Signal
from agent.processors.tail_sampling.config import TailSamplingConfig
from agent.processors.tail_sampling.processor import create


def cross_check(config: TailSamplingConfig, agent_config: Any) -> Iterator[tuple[str, str]]:
    """Classes named by policies exist; each id is used in at most one traces and one logs pipeline."""
    classes = agent_config.service.retention.classes
    known = ", ".join(classes)
    for path, name in config.policies.retention_classes():
        if name not in classes:
            yield f"policies.{path}", f"retention class {name!r} is not defined in service.retention.classes ({known})"
    if config.log_error_class not in classes:
        yield "log_error_class", f"retention class {config.log_error_class!r} is not defined ({known})"
    for component_id, component in agent_config.processors.items():
        if component.config is not config:
            continue
        for signal in (Signal.TRACES, Signal.LOGS):
            pipelines = [
                pid
                for pid, pipeline in agent_config.service.pipelines.items()
                if pid.split("/", 1)[0] == signal.value and component_id in pipeline.processors
            ]
            if len(pipelines) > 1:
                yield (
                    "",
                    (
                        f"used in several {signal} pipelines ({', '.join(pipelines)}); a tail sampler holds one "
                        f"buffer per {signal} pipeline: define one tail_sampling/<name> per pipeline"
                    ),
                )


FACTORY: Factory[TailSamplingConfig] = Factory(
    kind=Kind.PROCESSOR,
    type="tail_sampling",
    config_class=TailSamplingConfig,
    signals=frozenset({Signal.TRACES, Signal.LOGS}),
    create=create,
    description="Decides per whole trace which traces to keep (errors, critical services, latency, attribute "
    "rules, a consistent OTEP 235 share of the rest) and tags each with its retention class; holds the trace's "
    "logs until then.",
    mutates_data=False,
    cross_check=cross_check,
)

__all__ = ["FACTORY", "TailSamplingConfig"]
