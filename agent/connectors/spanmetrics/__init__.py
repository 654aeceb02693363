"""``spanmetrics`` connector: traces in, metrics out (RED, workflow, step, LLM tokens and cost, errors).

Put it in a traces pipeline of its own, fed by the same receiver as the sampled pipeline, so that it sees every
span before sampling::

    service:
      pipelines:
        traces:             {receivers: [otlp], processors: [tail_sampling], exporters: [otlp/jaeger]}
        traces/spanmetrics: {receivers: [otlp], exporters: [spanmetrics]}
        metrics:            {receivers: [otlp, spanmetrics], exporters: [prometheus]}
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from agent.component import Factory, Kind, Signal
from agent.connectors.spanmetrics.config import SpanMetricsConfig
from agent.connectors.spanmetrics.connector import SpanMetricsConnector

TAIL_SAMPLING_TYPE = "tail_sampling"


def sampler_keeps(processor_config: Any) -> tuple[float | None, bool | None]:
    """``(probabilistic percentage, errors policy on)`` of a ``tail_sampling`` config; None where unknown.

    Read duck-typed (``policies.probabilistic.{enabled,percentage}``, ``policies.errors.enabled``) so that this
    check never breaks on a config shape it does not know: it then checks nothing.
    """
    policies = getattr(processor_config, "policies", None)
    probabilistic = getattr(policies, "probabilistic", None)
    percentage = getattr(probabilistic, "percentage", None)
    if isinstance(percentage, int | float) and not isinstance(percentage, bool):
        percentage = float(percentage) if getattr(probabilistic, "enabled", True) else 0.0
    else:
        percentage = None
    errors = getattr(getattr(policies, "errors", None), "enabled", None)
    return percentage, errors if isinstance(errors, bool) else None


def late_failures_dropped(processor_config: Any) -> bool:
    """Whether a ``tail_sampling`` config drops a failed span arriving after its trace was dropped (duck-typed,
    as ``sampler_keeps``: False where unknown)."""
    errors = getattr(getattr(processor_config, "policies", None), "errors", None)
    return getattr(errors, "keep_late_failures", True) is False


def cross_check(cfg: SpanMetricsConfig, agent_config: Any) -> Iterator[tuple[str, str]]:
    """Exemplars must point to traces the tail sampler keeps, and span metrics must be computed before sampling."""
    samplers = {
        cid: c for cid, c in agent_config.processors.items() if getattr(c.factory, "type", None) == TAIL_SAMPLING_TYPE
    }
    if cfg.exemplars.enabled:
        for cid, component in samplers.items():
            percentage, errors_kept = sampler_keeps(component.config)
            if percentage is not None and abs(percentage - cfg.exemplars.sampled_percentage) > 1e-9:
                yield (
                    "exemplars.sampled_percentage",
                    f"is {cfg.exemplars.sampled_percentage:g} but processors.{cid} keeps {percentage:g}% of traces "
                    "probabilistically: exemplars would point to traces that are not kept; set both to the same value",
                )
            if errors_kept is False and cfg.exemplars.error_spans:
                yield (
                    "exemplars.error_spans",
                    f"must be false: processors.{cid} does not keep error traces (policies.errors.enabled is false), "
                    "so exemplars from failed spans would point to traces that are not kept",
                )
            elif errors_kept and late_failures_dropped(component.config) and cfg.exemplars.error_spans:
                yield (
                    "exemplars.error_spans",
                    f"must be false: processors.{cid} drops a failure that arrives after its trace was dropped "
                    "(policies.errors.keep_late_failures is false), so an exemplar from such a failed span would "
                    "point to a trace that is not kept",
                )
    own_ids = [cid for cid, c in agent_config.connectors.items() if c.config is cfg]
    for pipeline_id, pipeline in agent_config.service.pipelines.items():
        if not any(cid in pipeline.exporters for cid in own_ids):
            continue
        sampling = [p for p in pipeline.processors if p in samplers]
        if sampling:
            yield (
                "",
                f"is fed by pipeline {pipeline_id}, which samples ({', '.join(sampling)}): span metrics must see "
                "every span; give the connector a traces pipeline of its own without tail_sampling",
            )


FACTORY: Factory[SpanMetricsConfig] = Factory(
    kind=Kind.CONNECTOR,
    type="spanmetrics",
    config_class=SpanMetricsConfig,
    signals=frozenset({Signal.TRACES}),
    output_signals=frozenset({Signal.METRICS}),
    create=lambda cfg, settings, consumers: SpanMetricsConnector(cfg, settings, consumers),
    retains_data=False,  # reads each batch synchronously in consume() and keeps nothing of it
    description="Derives RED, workflow, step, LLM token/cost and error metrics from every span (before sampling).",
    cross_check=cross_check,
    delivers=frozenset(),  # it derives metrics; the spans go no further
)
