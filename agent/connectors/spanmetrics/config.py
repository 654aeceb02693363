"""Configuration of the ``spanmetrics`` connector."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from agent.config.schema import Duration, setting
from agent.processors.redaction.config import check_value_patterns

_NAMESPACE = re.compile(r"^[a-z][a-z0-9_]*$")

# The Collector's span-metrics defaults, in seconds, plus 0.5: the service latency alert's threshold.
SPAN_DURATION_BUCKETS = [
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.05,
    0.1,
    0.2,
    0.4,
    0.5,
    0.8,
    1.0,
    1.4,
    2.0,
    5.0,
    10.0,
    15.0,
]
# The orchestrator catalogue's bounds, and beyond 120 s: a quantile cannot exceed the last finite bound, and an SLA
# alert on p95 > 300 s needs bounds above it.
WORKFLOW_DURATION_BUCKETS = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]
# The catalogue's bounds; 2 and 15 s, the task SLA thresholds of the pipeline catalogue (web_search p50 2 s,
# ai_analysis p95 15 s: a quantile alert on a threshold needs it as a bound); and up to 600 s: reasoning models'
# calls (and the steps making them) run for minutes, the OpenAI and Anthropic SDKs time a call out after 600 s,
# and a quantile cannot exceed the last bound.
STEP_DURATION_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]
LLM_DURATION_BUCKETS = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]


def _check_buckets(name: str, bounds: list[float]) -> Iterator[tuple[str, str]]:
    if not bounds:
        yield name, "must list at least one bucket bound"
    elif any(b <= a for a, b in itertools.pairwise(bounds)):
        yield name, "bucket bounds must be strictly increasing"


@dataclass(frozen=True)
class BucketsConfig:
    span_duration: list[float] = setting(
        doc="Bounds (seconds) of `<namespace>_span_duration_seconds` (the Collector's span-metrics defaults, "
        "and 0.5: the service latency alert's threshold).",
        default_factory=lambda: list(SPAN_DURATION_BUCKETS),
    )
    workflow_duration: list[float] = setting(
        doc="Bounds (seconds) of `<namespace>_workflow_duration_seconds`.",
        default_factory=lambda: list(WORKFLOW_DURATION_BUCKETS),
    )
    step_duration: list[float] = setting(
        doc="Bounds (seconds) of `<namespace>_step_duration_seconds`.",
        default_factory=lambda: list(STEP_DURATION_BUCKETS),
    )
    llm_request_duration: list[float] = setting(
        doc="Bounds (seconds) of `<namespace>_llm_request_duration_seconds`.",
        default_factory=lambda: list(LLM_DURATION_BUCKETS),
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        for name in ("span_duration", "workflow_duration", "step_duration", "llm_request_duration"):
            yield from _check_buckets(name, getattr(self, name))


@dataclass(frozen=True)
class AttributesConfig:
    workflow_name: list[str] = setting(
        doc="Span attributes naming the workflow; a span carrying one counts as a workflow execution. Keep it to "
        "attributes set on the workflow's root span only (not ones propagated to every span of the workflow).",
        default_factory=lambda: ["workflow.name", "workflow_name"],
    )
    step_type: list[str] = setting(
        doc="Span attributes naming the step type; a span carrying one counts as a step execution. A value in "
        "CamelCase (an enum variant as a Rust `tracing` field records it, `VectorSearch`) becomes snake_case "
        "(`vector_search`).",
        default_factory=lambda: ["step.type", "step_type"],
    )
    step_status: list[str] = setting(
        doc="Span attributes whose value `skipped` (in any case: `Skipped`, a Rust enum's `Debug` form) marks a "
        "skipped step (otherwise the status is success/failure from the span status).",
        default_factory=lambda: ["step.status", "step_status"],
    )
    error_type: list[str] = setting(
        doc="Span attributes giving the `error_type` of a failed span; without one, the `exception.type` of the "
        "span's exception event, else `_OTHER`.",
        default_factory=lambda: ["error.type", "error_type"],
    )
    component: list[str] = setting(
        doc="Span attributes giving the `component` of a failed span; without one: `executor` for workflow spans, "
        "`step_executor` for steps, `provider` for LLM calls, else the span's service name.",
        default_factory=list,
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        for name in ("workflow_name", "step_type"):
            if not getattr(self, name):
                yield name, "must name at least one attribute"


@dataclass(frozen=True)
class ExemplarsConfig:
    enabled: bool = setting(True, doc="Attach trace/span exemplars to histogram buckets (OpenMetrics).")
    error_spans: bool = setting(
        True,
        doc="Take exemplars from failed spans (status ERROR) whatever their trace id: the tail sampler's errors "
        "policy keeps their traces. Must be false when a `tail_sampling` processor has that policy disabled, or "
        "drops late failures (`keep_late_failures: false`).",
    )
    sampled_percentage: float = setting(
        10.0,
        doc="Percentage of trace ids the tail sampler keeps probabilistically. Exemplars come only from error "
        "spans and from trace ids inside this threshold (OTEP 235 randomness), i.e. from traces that will be "
        "kept. Must equal a `tail_sampling` processor's probabilistic percentage when one is configured.",
        minimum=0,
        maximum=100,
    )


@dataclass(frozen=True)
class LongContextPriceConfig:
    above_input_tokens: int = setting(
        doc="The tier applies to a call whose prompt (uncached input, cache reads and cache writes) has more tokens "
        "than this.",
        minimum=1,
    )
    input: float = setting(doc="USD per million uncached input tokens in this tier.", minimum=0)
    output: float = setting(doc="USD per million output tokens (without reasoning) in this tier.", minimum=0)
    cache_read: float | None = setting(None, doc="Cache-read price in this tier; default: this tier's input price.")
    cache_write: float | None = setting(None, doc="Cache-write price in this tier; default: this tier's input price.")
    reasoning: float | None = setting(None, doc="Reasoning price in this tier; default: this tier's output price.")

    def validate(self) -> Iterator[tuple[str, str]]:
        yield from _negative_prices(self)


@dataclass(frozen=True)
class ModelPriceConfig:
    input: float = setting(doc="USD per million uncached input tokens.", minimum=0)
    output: float = setting(doc="USD per million output tokens (without reasoning).", minimum=0)
    provider: str = setting(
        "",
        doc="Provider the model belongs to: the `provider` label of calls whose spans name none (or a framework). "
        "An entry overriding another without one keeps the overridden entry's.",
    )
    cache_read: float | None = setting(None, doc="USD per million cache-read tokens; default: the input price.")
    cache_write: float | None = setting(None, doc="USD per million cache-write tokens; default: the input price.")
    reasoning: float | None = setting(None, doc="USD per million reasoning tokens; default: the output price.")
    long_context: LongContextPriceConfig | None = setting(
        None,
        doc="Prices of every token of a call whose prompt is longer than `above_input_tokens` (Gemini 2.5 Pro and "
        "Claude Sonnet 4/4.5 charge more above 200k tokens).",
    )
    regional_premium: float = setting(
        0.0,
        doc="How much more every price is through a Bedrock regional inference profile (`us.`, `eu.`, `jp.`, `au.`, "
        "`apac.` before the model id), as a fraction: 0.1 for Claude 4.5 models and later. `global.` profiles and "
        "the model id alone cost the listed price.",
        minimum=0,
        maximum=1,  # a fraction: 10 (for 10%) would multiply every price by 11
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        yield from _negative_prices(self)


def model_name_problems(models: Mapping[Any, Any]) -> Iterator[tuple[str, str]]:
    """Names that match nothing (empty) or the same model as another: names are matched in lower case, and the
    last of two such entries would win in silence."""
    first: dict[str, str] = {}
    for written in models:
        name = str(written).strip().lower()
        if not name:
            yield f"models.{written!r}", "must name a model"
        elif name in first:
            yield f"models.{written}", f"names the same model as {first[name]} (names are matched in lower case)"
        else:
            first[name] = str(written)


def _negative_prices(prices: ModelPriceConfig | LongContextPriceConfig) -> Iterator[tuple[str, str]]:
    for name in ("cache_read", "cache_write", "reasoning"):
        value = getattr(prices, name)
        if value is not None and value < 0:
            yield name, "must be at least 0"


@dataclass(frozen=True)
class PricingConfig:
    packaged: bool = setting(
        True, doc="Start from the price table shipped with the agent (`config/pricing.yaml`, packaged)."
    )
    file: str = setting("", doc="A price table file in the same format, merged over the packaged one (its models win).")
    models: dict[str, ModelPriceConfig] = setting(
        doc="Prices by model name, merged last (they win over both tables). Names match as described in "
        "docs/metrics.md (exact, without provider prefix, without date/version suffix). An entry replaces the "
        "table's whole, its `long_context` tier and `regional_premium` too: give them again where they apply.",
        default_factory=dict,
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        from agent.connectors.spanmetrics.pricing import PriceTableError, load_table_file

        yield from model_name_problems(self.models)

        if self.file:
            try:
                load_table_file(self.file)
            except PriceTableError as exc:
                yield "file", str(exc)


def _extra_keys(concept: str) -> Any:
    return setting(
        doc=f"More span attributes giving the {concept}, read before the built-in conventions' keys "
        "(docs/metrics.md lists them).",
        default_factory=list,
    )


@dataclass(frozen=True)
class GenAiAttributesConfig:
    """Keys of an instrumentation the built-in conventions do not know; each list is read first, in order."""

    provider: list[str] = _extra_keys("provider (vendor) of an LLM call")
    request_model: list[str] = _extra_keys("model an LLM call asked for")
    response_model: list[str] = _extra_keys("model that answered an LLM call")
    input_tokens: list[str] = _extra_keys("input (prompt) token count, cached tokens included")
    output_tokens: list[str] = _extra_keys("output (completion) token count")
    total_tokens: list[str] = _extra_keys("total token count (input + output)")
    cache_read_tokens: list[str] = _extra_keys("count of input tokens read from the provider's cache")
    cache_write_tokens: list[str] = _extra_keys("count of input tokens written to the provider's cache")
    reasoning_tokens: list[str] = _extra_keys("reasoning token count")

    def validate(self) -> Iterator[tuple[str, str]]:
        for spec in fields(self):
            keys = getattr(self, spec.name)
            for index, key in enumerate(keys):
                if not key:
                    yield f"{spec.name}[{index}]", "must not be empty"
                elif key in keys[:index]:
                    yield f"{spec.name}[{index}]", f"{key} is listed twice"


@dataclass(frozen=True)
class GenAiConfig:
    attributes: GenAiAttributesConfig = setting(
        doc="Span attributes of LLM calls beyond the conventions the agent knows (OpenTelemetry GenAI, "
        "OpenInference, OpenLLMetry, OpenLIT, Vercel AI SDK, LangSmith...).",
        default_factory=GenAiAttributesConfig,
    )
    cache_tokens_in_input: dict[str, bool] = setting(
        doc="Per provider (`anthropic: false`): whether the input token count already includes cache reads and "
        "writes. Unlisted providers: included (the OpenTelemetry convention) unless the counts contradict it, "
        "or the spans come from OpenLIT (`telemetry.sdk.name: openlit`), whose Anthropic counts exclude them.",
        default_factory=dict,
    )
    reasoning_tokens_in_output: dict[str, bool] = setting(
        doc="Per provider: whether the output token count already includes reasoning tokens. Unlisted "
        "providers: included unless the counts contradict it, or the spans come from Google ADK 1.x (provider "
        "`gcp.vertex.agent`) or OpenLIT's Gemini instrumentation, whose output counts exclude them.",
        default_factory=dict,
    )
    model_label: Literal["priced", "reported"] = setting(
        "priced",
        doc="The `model` label of the `<namespace>_llm_*` families. `priced`: the price-table entry the call "
        "matched (`claude-3-5-sonnet` for `claude-3-5-sonnet-20241022`, `gpt-4o` for `gpt-4o-2024-08-06`), so a "
        "model's dated snapshots and regional names share one series; a model without a price keeps its reported "
        "name. `reported`: the response model, else the request model, as the span reports it.",
    )
    semconv_metrics: bool = setting(
        False,
        doc="Also emit the OpenTelemetry GenAI client metrics `gen_ai.client.operation.duration` and "
        "`gen_ai.client.token.usage` (spec buckets) for GenAI dashboards.",
    )


@dataclass(frozen=True)
class LabelMaskingConfig:
    mask_credentials: bool = setting(
        True,
        doc="Mask credentials in the label values taken from span text (service and span names, error types, "
        "workflow and step names, models) by the redaction processor's built-in rules: span metrics are derived "
        "before any redaction, and the scrape endpoint serves every label.",
    )
    value_patterns: dict[str, str] = setting(
        doc="More shapes to mask in those labels: rule name → regular expression, as in the redaction "
        "processor's `value_patterns` (a YAML anchor shares one mapping between the two).",
        default_factory=dict,
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        yield from check_value_patterns(self.value_patterns)


@dataclass(frozen=True)
class SpanMetricsConfig:
    namespace: str = setting("orchestrator", doc="Prefix of every metric name (`orchestrator_spans_total`).")
    metrics_flush_interval: Duration = setting(
        Duration(5.0),
        doc="How often the cumulative metrics are sent to the metrics pipeline (and once more at shutdown). "
        "Keep it below the Prometheus scrape interval.",
        positive=True,
    )
    metrics_expiration: Duration = setting(
        Duration(15 * 60.0),
        doc="Series not updated for this long are dropped (their counters restart from 0 if they come back); "
        "`0s` keeps series forever.",
    )
    cardinality_limit: int = setting(
        2000,
        doc="Most series per metric family; further label combinations go to one series labelled "
        '`otel_metric_overflow="true"` and are counted in `otel_sidecar_spanmetrics_overflow_total`.',
        minimum=1,
    )
    attributes: AttributesConfig = setting(
        doc="Which span attributes the workflow, step and error metrics read.", default_factory=AttributesConfig
    )
    buckets: BucketsConfig = setting(doc="Histogram bucket bounds.", default_factory=BucketsConfig)
    genai: GenAiConfig = setting(doc="GenAI token conventions and optional metrics.", default_factory=GenAiConfig)
    pricing: PricingConfig = setting(doc="Prices for `<namespace>_llm_cost_usd_total`.", default_factory=PricingConfig)
    exemplars: ExemplarsConfig = setting(doc="Histogram exemplars.", default_factory=ExemplarsConfig)
    label_masking: LabelMaskingConfig = setting(
        doc="What is masked in label values taken from span text.", default_factory=LabelMaskingConfig
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        if not _NAMESPACE.match(self.namespace):
            yield "namespace", "must be lower_snake_case (a Prometheus metric name prefix)"
