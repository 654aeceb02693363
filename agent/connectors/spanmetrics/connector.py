"""The ``spanmetrics`` connector: RED, workflow, step, LLM token/cost and error metrics from every span.

It sits in its own traces pipeline fed by the receiver, next to (not after) the sampled pipeline, so it sees
100% of spans before any sampling. ``consume`` reads the batch synchronously and keeps nothing of it (no
reference, no mutation): the batch stays valid for the other pipelines the receiver fans out to.

Hot path, per span (it runs for every span the agent receives; ``bench/micro_spanmetrics.py`` measures it):

- the service name is read once per ResourceSpans, not per span;
- each field is read once; the attributes are scanned once through a ``key -> slot`` table built from the
  config (``attributes.py``), which also says which roles (workflow, step, GenAI concepts...) the span has;
- series are found through lookup caches keyed by what the span carries (``(name, kind, status)`` numbers
  per service for RED; ``(workflow, status)``; ``(provider, models, failed)`` for LLM calls...), so that a
  span builds no label tuple and makes one dict lookup per role; the caches hold only series a family
  admitted (overflowing records take the slow path, which counts them) and are emptied when series expire;
- a plain span (RED only: most of them) makes no function call once its series are known.

Spans carrying an OpenTelemetry threshold in ``tracestate`` (``ot=th:…``, head-sampled upstream) count with
their adjusted count ``1/p``: counters add it exactly, histograms add it stochastically rounded to an integer
(OTLP bucket counts are integers), as the Collector does.

Every ``metrics_flush_interval`` (and at shutdown) the cumulative state goes to the metrics pipeline as one
``ExportMetricsServiceRequest`` with an empty resource and scope, so that the Prometheus exporter gives the
series exactly the catalogue's labels (see ``docs/metrics.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from agent.component import Consumer, ConsumerMap, CreateSettings, Refused, Signal
from agent.connectors.spanmetrics.aggregation import (
    Execution,
    HistogramFamily,
    HistogramSeries,
    SpanRef,
    SumFamily,
    SumSeries,
    execution_of,
)
from agent.connectors.spanmetrics.attributes import (
    ROLE_CACHE_READ,
    ROLE_CACHE_WRITE,
    ROLE_COMPONENT,
    ROLE_ERROR_TYPE,
    ROLE_INPUT,
    ROLE_INPUT_DETAILS,
    ROLE_MODEL,
    ROLE_OPENINFERENCE_KIND,
    ROLE_OPERATION,
    ROLE_OUTPUT,
    ROLE_OUTPUT_DETAILS,
    ROLE_PROVIDER,
    ROLE_REASONING,
    ROLE_REQUEST_MODEL,
    ROLE_RESPONSE_MODEL,
    ROLE_STEP_STATUS,
    ROLE_STEP_TYPE,
    ROLE_TOTAL,
    ROLE_TRACELOOP_KIND,
    ROLE_WORKFLOW,
    AttributeScanner,
    step_type_label,
)
from agent.connectors.spanmetrics.config import LabelMaskingConfig, SpanMetricsConfig
from agent.connectors.spanmetrics.genai import (
    FRAMEWORK_PROVIDERS,
    PROVIDER_REASONING_IN_OUTPUT,
    SDK_CACHE_IN_INPUT,
    SDK_REASONING_IN_OUTPUT,
    TOKEN_TYPES,
    VERCEL_5_CACHE_OUTSIDE_INPUT,
    alias_text,
    any_to_str,
    cache_read_from_vercel_5_only,
    detail_count,
    disjoint_tokens,
    first_number,
    first_text,
    is_inference,
    normalize_provider,
    operation_name,
)
from agent.connectors.spanmetrics.pricing import ModelPrice, PriceTable
from agent.otlp.probability import (
    adjusted_count,
    as_bytes,
    explicit_randomness,
    randomness_bytes,
    threshold_for_percentage,
)
from agent.processors.redaction.config import RedactionConfig
from agent.processors.redaction.rules import Redactor
from agent.telemetry.logs import RateLimitedLog

SPAN_KIND_NAMES = {value: name for name, value in Span.SpanKind.items()}
STATUS_CODE_NAMES = {value: name for name, value in Status.StatusCode.items()}
_ERROR = Status.STATUS_CODE_ERROR
UNKNOWN_SERVICE = "unknown_service"
OTHER_ERROR = "_OTHER"

# OpenTelemetry GenAI metric buckets (semantic conventions v1.41, gen-ai-metrics.md).
GENAI_DURATION_BUCKETS = [0.01 * 2**i for i in range(14)]  # 0.01, 0.02, 0.04, ... 81.92 s
GENAI_TOKEN_BUCKETS = [float(4**i) for i in range(14)]  # 1, 4, 16, ... 67108864
_MAX_LOGGED_UNPRICED = 1000
_INPUT_REPORTED = ROLE_INPUT | ROLE_CACHE_READ | ROLE_CACHE_WRITE | ROLE_INPUT_DETAILS
_OUTPUT_REPORTED = ROLE_OUTPUT | ROLE_REASONING | ROLE_OUTPUT_DETAILS
_USAGE_REPORTED = _INPUT_REPORTED | _OUTPUT_REPORTED | ROLE_TOTAL
_ADJUSTED_COUNT_CACHE = 1024
# Most event-loop time one slice of a periodic flush takes before letting the receivers run.
FLUSH_SLICE_SECONDS = 0.002

# Keys that can tell a span naming a model is not a model call (see is_inference).
_NOT_INFERENCE_HINTS = ROLE_OPERATION | ROLE_OPENINFERENCE_KIND | ROLE_TRACELOOP_KIND

# (span name, kind number, status code number) -> the span's RED series, one table per service.
RedLookup = dict[tuple[str, int, int], Execution]


def _is_skipped(step_status: str | None) -> bool:
    return step_status is not None and step_status.lower() == "skipped"


_MEMO_TEXTS = 4096
_MEMO_TEXT_CHARS = 512


def label_masker(cfg: LabelMaskingConfig) -> Callable[[str], str]:
    """Masks credentials in a label value taken from span content, as the redaction processor masks them.

    Span metrics are computed before redaction, and a span name such as ``GET /v1/models?key=AIza…`` would put
    the key in every series of the scrape. Called when a series is resolved, and per span on the error and GenAI
    call paths, hence the memo of results.
    """
    redactor = Redactor(RedactionConfig(mask_credentials=cfg.mask_credentials, value_patterns=dict(cfg.value_patterns)))
    fired: Counter[str] = Counter()  # rule names only: bounded
    # The redactor remembers clean texts only, and a text it masks costs about 100 µs: the model of every LLM
    # span with `genai.semconv_metrics`, and the error type of every failed span, are masked per span.
    masked: dict[str, str] = {}

    def mask(text: str) -> str:
        found = masked.get(text)
        if found is None:
            found = redactor.mask_text(text, fired)
            if len(text) <= _MEMO_TEXT_CHARS:  # bounds the memo's memory: 4,096 short texts
                if len(masked) >= _MEMO_TEXTS:
                    masked.clear()
                masked[text] = found
        return found

    return mask


def _explicit_randomness_bytes(trace_state: str) -> bytes | None:
    explicit = explicit_randomness(trace_state)
    return None if explicit is None else as_bytes(explicit)


class LlmTarget:
    """Where the LLM calls of one (provider, response model, request model, failed) record, resolved once.

    Token series are created on a call's first non-zero count of their type (as the families would), so they
    start empty here; ``cost`` is the ``llm.cost_usd`` series, or ``llm.unpriced_requests`` when ``price`` is
    None.
    """

    __slots__ = ("cache_in_input", "cost", "model", "price", "provider", "reasoning_in_output", "requests", "tokens")

    def __init__(
        self,
        provider: str,
        model: str,
        requests: Execution,
        cost: SumSeries,
        price: ModelPrice | None,
        cache_in_input: bool | None,
        reasoning_in_output: bool | None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.requests = requests
        self.tokens: list[SumSeries | None] = [None] * len(TOKEN_TYPES)
        self.cost = cost
        self.price = price
        self.cache_in_input = cache_in_input
        self.reasoning_in_output = reasoning_in_output


class _Families:
    """Every family the connector keeps, named so that the Prometheus translation yields the catalogue names."""

    def __init__(self, cfg: SpanMetricsConfig) -> None:
        ns, limit, buckets = cfg.namespace, cfg.cardinality_limit, cfg.buckets
        red = ("service.name", "span.name", "span.kind", "status.code")
        llm = ("provider", "model")
        self.spans = SumFamily(
            f"{ns}.spans", "Spans received, by service, name, kind and status.", "{span}", red, limit
        )
        self.span_duration = HistogramFamily(
            f"{ns}.span.duration", "Span durations.", "s", red, limit, buckets.span_duration
        )
        self.workflow_executions = SumFamily(
            f"{ns}.workflow.executions", "Workflow executions.", "{execution}", ("workflow.name", "status"), limit
        )
        self.workflow_duration = HistogramFamily(
            f"{ns}.workflow.duration", "Workflow execution durations.", "s", ("workflow.name",), limit,
            buckets.workflow_duration,
        )  # fmt: skip
        self.step_executions = SumFamily(
            f"{ns}.step.executions", "Step executions by type.", "{execution}", ("step.type", "status"), limit
        )
        self.step_duration = HistogramFamily(
            f"{ns}.step.duration", "Step execution durations.", "s", ("step.type",), limit, buckets.step_duration
        )
        self.llm_requests = SumFamily(
            f"{ns}.llm.requests", "LLM provider requests.", "{request}", (*llm, "status"), limit
        )
        self.llm_duration = HistogramFamily(
            f"{ns}.llm.request.duration", "LLM request durations.", "s", llm, limit, buckets.llm_request_duration
        )
        self.llm_tokens = SumFamily(
            f"{ns}.llm.tokens",
            "LLM tokens by disjoint type: input (uncached), cache_read, cache_write, output (without reasoning), "
            "reasoning.",
            "{token}",
            (*llm, "type"),
            limit,
        )
        self.llm_cost = SumFamily(
            f"{ns}.llm.cost_usd", "Cost of LLM requests in USD, from the price table.", "{USD}", llm, limit
        )
        self.llm_unpriced = SumFamily(
            f"{ns}.llm.unpriced_requests",
            "LLM requests whose model has no price in the price table (their cost is not counted).",
            "{request}",
            llm,
            limit,
        )
        self.llm_without_usage = SumFamily(
            f"{ns}.llm.requests_without_usage",
            "Successful LLM requests that reported no token counts (a stream without usage, an instrumentation "
            "that records none): their tokens and cost are not counted.",
            "{request}",
            llm,
            limit,
        )
        self.errors = SumFamily(
            f"{ns}.errors", "Failed spans by error type and component.", "{error}", ("error.type", "component"), limit
        )
        self.genai_duration: HistogramFamily | None = None
        self.genai_tokens: HistogramFamily | None = None
        if cfg.genai.semconv_metrics:
            genai = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model")
            self.genai_duration = HistogramFamily(
                "gen_ai.client.operation.duration", "GenAI operation duration.", "s", (*genai, "error.type"), limit,
                GENAI_DURATION_BUCKETS,
            )  # fmt: skip
            self.genai_tokens = HistogramFamily(
                "gen_ai.client.token.usage", "Number of input and output tokens used.", "{token}",
                (*genai, "gen_ai.token.type"), limit, GENAI_TOKEN_BUCKETS,
            )  # fmt: skip

    def all(self) -> list[SumFamily | HistogramFamily]:
        families = [f for f in vars(self).values() if isinstance(f, SumFamily | HistogramFamily)]
        return families


def _families_made_by(cfg: SpanMetricsConfig) -> tuple[object, ...]:
    """The settings :class:`_Families` is built from."""
    # label_masking: series labelled with text the new rules would mask must not go on being served.
    return (cfg.namespace, cfg.cardinality_limit, cfg.buckets, cfg.genai.semconv_metrics, cfg.label_masking)


class SpanMetricsConnector:
    def __init__(self, cfg: SpanMetricsConfig, settings: CreateSettings, consumers: ConsumerMap) -> None:
        self._cfg = cfg
        self._label_text = label_masker(cfg.label_masking)
        self._label_priced_model = cfg.genai.model_label == "priced"
        self._settings = settings
        self._log = settings.logger
        self._rate_limited = RateLimitedLog(settings.logger)
        self._out: Consumer | None = consumers.get(Signal.METRICS)
        self.families = _Families(cfg)
        self._all_families = self.families.all()
        self._scanner = AttributeScanner(cfg)
        self.prices = PriceTable.from_config(cfg.pricing)
        self._cache_in_input = {normalize_provider(k): v for k, v in cfg.genai.cache_tokens_in_input.items()}
        self._sdk_cache_conventions: Mapping[str, bool] | None = None  # of the resource being read
        self._sdk_reasoning_conventions: Mapping[str, bool] | None = None
        self._reasoning_in_output = {
            **PROVIDER_REASONING_IN_OUTPUT,
            **{normalize_provider(k): v for k, v in cfg.genai.reasoning_tokens_in_output.items()},
        }
        # As the tail sampler reads a percentage, so both have the identical threshold for the same one.
        self._exemplar_threshold = threshold_for_percentage(cfg.exemplars.sampled_percentage)
        self._exemplar_threshold_bytes = as_bytes(self._exemplar_threshold)
        # Lookup caches of series by what spans carry (no label tuple to build); see _forget_series.
        self._red_lookups: dict[str, RedLookup] = {}
        self._workflows: dict[tuple[str, str], Execution] = {}
        self._steps: dict[tuple[str, str], Execution] = {}
        self._llm_targets: dict[tuple[str, str, str, bool], LlmTarget] = {}
        self._exemplars = cfg.exemplars.enabled
        self._error_exemplars = cfg.exemplars.error_spans
        self._adjusted_counts: dict[str, tuple[float, bytes | None]] = {}
        self._logged_unpriced: set[tuple[str, str]] = set()
        self._random = random.Random()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.took_over = False  # whether it goes on with its predecessor's series (see take_over_from)
        self._forgo = False
        cid = settings.component_id
        m = settings.metrics
        self._spans_metric = m.counter(
            "spanmetrics_spans_total", "Spans the span-metrics connector turned into metrics.", ["connector"]
        ).labels(cid)
        self._series_metric = m.gauge(
            "spanmetrics_series", "Series held by the span-metrics connector, per metric.", ["connector", "metric"]
        )
        self._overflow_metric = m.counter(
            "spanmetrics_overflow_total",
            "Records that went to a family's overflow series because it reached cardinality_limit.",
            ["connector", "metric"],
        )
        self._flushes = m.counter(
            "spanmetrics_flushes_total",
            "Flushes of the cumulative metrics to the metrics pipeline, by outcome (ok, refused, failed).",
            ["connector", "outcome"],
        )
        settings.logger.info("price table loaded", extra=self.prices.describe())

    # --- component ------------------------------------------------------------------------------------------

    def consumer_for(self, signal: Signal) -> Consumer:
        if signal is not Signal.TRACES:
            raise ValueError(f"spanmetrics consumes traces, not {signal}")
        return self

    def take_over_from(self, previous: SpanMetricsConnector) -> None:
        """At a reload (before this connector starts), when its families are built alike: go on with the series the
        previous one counted, their values and start times, so that a reload is no restart to Prometheus. Else
        what was counted since the last scrape would be lost (a series still at zero in its first minute: all of
        it), and a series counted only before the reload never shown. The lookup caches are this connector's own,
        so a changed price table or attribute mapping applies from now on. Another namespace, cardinality limit,
        bucket layout, set of GenAI metrics or label masking starts anew."""
        if _families_made_by(previous._cfg) != _families_made_by(self._cfg):
            return
        self.families = previous.families
        self._all_families = self.families.all()
        self.took_over = True
        if not self._exemplars:  # turned off: the ones held must not be sent on for as long as their series live
            for family in self._all_families:
                for series in family.series.values():
                    if isinstance(series, HistogramSeries):
                        series.exemplars = None

    def forgo_state(self) -> None:
        """Flush nothing at shutdown: a reload failed, and the previous connector's series come back (see
        ``Graph.forgo_fresh_state_beside``). Spans counted in the meantime are lost to the metrics."""
        self._forgo = True

    async def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._flush_loop(), name="spanmetrics-flush")

    async def shutdown(self, deadline: float) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not self._forgo:
            self.flush()

    async def _flush_loop(self) -> None:
        interval = float(self._cfg.metrics_flush_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._flush_in_slices()
            except Exception:  # a bug must not stop metrics for good
                self._flushes.labels(self._settings.component_id, "failed").inc()
                self._log.exception("span metrics flush failed")

    # --- hot path -------------------------------------------------------------------------------------------

    def consume(self, batch: Message) -> None:
        now = time.time_ns()
        spans = 0
        for resource_spans in batch.resource_spans:
            # Once per resource, not per span: an SDK sends one ResourceSpans per process with all its spans.
            service, sdk = self._service_and_sdk(resource_spans.resource)
            # What the spans' instrumentation means by its token counts, where it departs from the conventions.
            self._sdk_cache_conventions = SDK_CACHE_IN_INPUT.get(sdk) if sdk else None
            self._sdk_reasoning_conventions = SDK_REASONING_IN_OUTPUT.get(sdk) if sdk else None
            red_lookup = self._red_lookups.get(service)
            if red_lookup is None:
                red_lookup = self._new_red_lookup(service)
            for scope_spans in resource_spans.scope_spans:
                scope_span_list = scope_spans.spans
                spans += len(scope_span_list)
                self._record_spans(scope_span_list, service, red_lookup, now)
        self._spans_metric.inc(spans)

    @staticmethod
    def _service_and_sdk(resource: Resource) -> tuple[str, str]:
        """``service.name`` (or ``unknown_service``) and ``telemetry.sdk.name`` (or "") of a resource."""
        service, sdk = UNKNOWN_SERVICE, ""
        for kv in resource.attributes:
            if kv.key == "service.name":
                service = any_to_str(kv.value) or UNKNOWN_SERVICE
            elif kv.key == "telemetry.sdk.name":
                sdk = any_to_str(kv.value) or ""
        return service, sdk

    def _record_spans(self, spans: Sequence[Span], service: str, red_lookup: RedLookup, now: int) -> None:
        """RED for every span; the workflow, step, LLM and error families for spans that carry their keys.

        The attribute scan is inlined here for speed: a lookup of each key in ``AttributeScanner.slot_of``, the
        value kept in its slot and the key's roles added up; everything else is a call.
        """
        scanner = self._scanner
        slot_of = scanner.slot_of
        roles_of_slot = scanner.roles_of_slot
        slots = scanner.size
        find_red = red_lookup.get
        exemplars_on, error_exemplars = self._exemplars, self._error_exemplars
        threshold_bytes = self._exemplar_threshold_bytes
        last_trace_id, kept_trace = None, False
        for span in spans:
            name, kind = span.name, span.kind
            # Most spans have no status (UNSET): asking is cheaper than building the Status wrapper to read 0.
            status_code = span.status.code if span.HasField("status") else 0
            trace_state = span.trace_state
            if trace_state:
                weight = self._adjusted_count(trace_state, span)
                hist_weight = 1 if weight == 1.0 else self._round_weight(weight)
            else:
                weight, hist_weight = 1.0, 1
            end = span.end_time_unix_nano
            duration = (end - span.start_time_unix_nano) / 1e9
            if duration < 0.0:
                duration = 0.0
            failed = status_code == _ERROR
            exemplar = None
            if exemplars_on:
                trace_id = span.trace_id
                if trace_id != last_trace_id:  # an SDK batch holds runs of spans of one trace
                    last_trace_id = trace_id
                    trace_randomness = randomness_bytes(trace_id)  # the OTEP 235 randomness, as bytes
                    if trace_state and "rv:" in trace_state:  # an explicit randomness wins, as in the sampler
                        trace_randomness = _explicit_randomness_bytes(trace_state) or trace_randomness
                    kept_trace = trace_randomness >= threshold_bytes
                if kept_trace or (failed and error_exemplars):
                    exemplar = (trace_id, span.span_id, end)

            red = find_red((name, kind, status_code)) or self._red_execution(
                red_lookup, service, name, kind, status_code, now
            )
            red.record(weight, duration, hist_weight, now, exemplar)

            values: list[AnyValue | None] | None = None
            roles = 0
            attributes = span.attributes
            if attributes:
                for kv in attributes[:]:  # a slice builds the wrappers faster than the container's iterator
                    slot = slot_of.get(kv.key)
                    if slot is not None:
                        if values is None:
                            values = [None] * slots
                        values[slot] = kv.value
                        roles |= roles_of_slot[slot]
            if values is not None:
                self._record_roles(span, service, values, roles, weight, hist_weight, duration, failed, now, exemplar)
            elif failed:
                error_type = self._exception_type(span) or OTHER_ERROR
                self.families.errors.add((self._label_text(error_type), self._label_text(service)), weight, now)

    def _new_red_lookup(self, service: str) -> RedLookup:
        if len(self._red_lookups) >= self._cfg.cardinality_limit:
            self._red_lookups.clear()  # services are few; a flood of them must not grow memory
        lookup: RedLookup = {}
        self._red_lookups[service] = lookup
        return lookup

    def _red_execution(
        self, lookup: RedLookup, service: str, name: str, kind: int, status_code: int, now: int
    ) -> Execution:
        """The RED series of a span whose (name, kind, status) the lookup does not hold yet."""
        key = (
            self._label_text(service),
            self._label_text(name),
            SPAN_KIND_NAMES.get(kind, ""),
            STATUS_CODE_NAMES.get(status_code, ""),
        )
        execution, own = execution_of(self.families.spans, key, self.families.span_duration, key, now)
        if own:
            if len(lookup) >= self._cfg.cardinality_limit:
                lookup.clear()  # unknown kind or status numbers share one series: keep the lookup bounded
            lookup[(name, kind, status_code)] = execution
        return execution

    def _record_roles(
        self,
        span: Span,
        service: str,
        values: list[AnyValue | None],
        roles: int,
        weight: float,
        hist_weight: int,
        duration: float,
        failed: bool,
        now: int,
        exemplar: SpanRef | None,
    ) -> None:
        """Workflow, step, LLM and error metrics of a span carrying at least one key of interest."""
        scanner = self._scanner
        status = "failure" if failed else "success"
        role = ""

        if roles & ROLE_WORKFLOW:
            workflow = first_text(values, scanner.workflow)
            if workflow is not None:
                role = "executor"
                key = (workflow, status)
                execution = self._workflows.get(key) or self._workflow_execution(key, now)
                execution.record(weight, duration, hist_weight, now, exemplar)

        if roles & ROLE_STEP_TYPE:
            step_type = first_text(values, scanner.step_type)
            if step_type is not None:
                role = role or "step_executor"
                step_status = status
                if not failed and roles & ROLE_STEP_STATUS and _is_skipped(first_text(values, scanner.step_status)):
                    step_status = "skipped"
                key = (step_type, step_status)
                execution = self._steps.get(key) or self._step_execution(key, now)
                execution.record(weight, duration, hist_weight, now, exemplar)

        if roles & ROLE_MODEL and self._record_llm(
            span, values, roles, weight, hist_weight, duration, failed, now, exemplar
        ):
            role = role or "provider"

        if failed:
            error_type = (
                (first_text(values, scanner.error_type) if roles & ROLE_ERROR_TYPE else None)
                or self._exception_type(span)
                or OTHER_ERROR
            )
            component = (first_text(values, scanner.component) if roles & ROLE_COMPONENT else None) or role or service
            self.families.errors.add((self._label_text(error_type), self._label_text(component)), weight, now)

    def _workflow_execution(self, key: tuple[str, str], now: int) -> Execution:
        f = self.families
        labels = (self._label_text(key[0]), key[1])
        execution, own = execution_of(f.workflow_executions, labels, f.workflow_duration, labels[:1], now)
        if own:
            self._remember(self._workflows, key, execution)
        return execution

    def _step_execution(self, key: tuple[str, str], now: int) -> Execution:
        f = self.families
        labels = (self._label_text(step_type_label(key[0])), key[1])
        execution, own = execution_of(f.step_executions, labels, f.step_duration, labels[:1], now)
        if own:
            self._remember(self._steps, key, execution)
        return execution

    def _remember(self, lookup: dict[Any, Any], key: Any, found: Any) -> None:
        if len(lookup) >= self._cfg.cardinality_limit:
            lookup.clear()  # holds admitted series only, so this is rare: a family at its limit
        lookup[key] = found

    def _record_llm(
        self,
        span: Span,
        values: list[AnyValue | None],
        roles: int,
        weight: float,
        hist_weight: int,
        duration: float,
        failed: bool,
        now: int,
        exemplar: SpanRef | None,
    ) -> bool:
        """Record an LLM call if the span is one; False for agent/tool/workflow spans that only name a model.

        Each GenAI concept is read only when the scan saw one of its keys (``roles``): a span carries a handful
        of the dozens of aliases. A present alias wins even when empty (``alias_text``).
        """
        s = self._scanner
        operation = alias_text(values, s.operation) if roles & ROLE_OPERATION else None
        if roles & _NOT_INFERENCE_HINTS and not is_inference(
            operation,
            alias_text(values, s.openinference_kind) if roles & ROLE_OPENINFERENCE_KIND else None,
            alias_text(values, s.traceloop_kind) if roles & ROLE_TRACELOOP_KIND else None,
        ):
            return False
        response_model = (alias_text(values, s.response_model) if roles & ROLE_RESPONSE_MODEL else None) or ""
        request_model = (alias_text(values, s.request_model) if roles & ROLE_REQUEST_MODEL else None) or ""
        if not (response_model or request_model):
            return False
        raw_provider = (alias_text(values, s.provider) if roles & ROLE_PROVIDER else None) or ""
        key = (raw_provider, response_model, request_model, failed)
        target = self._llm_targets.get(key) or self._llm_target(key, now)
        target.requests.record(weight, duration, hist_weight, now, exemplar)
        cache_in_input, reasoning_in_output = target.cache_in_input, target.reasoning_in_output
        if cache_in_input is None and self._sdk_cache_conventions is not None:
            cache_in_input = self._sdk_cache_conventions.get(target.provider)
        if (
            cache_in_input is None
            and roles & ROLE_CACHE_READ
            and target.provider in VERCEL_5_CACHE_OUTSIDE_INPUT
            and cache_read_from_vercel_5_only(values, s.cache_read, s.vercel_5_cache_read)
        ):
            cache_in_input = False
        if reasoning_in_output is None and self._sdk_reasoning_conventions is not None:
            reasoning_in_output = self._sdk_reasoning_conventions.get(target.provider)
        usage = disjoint_tokens(
            first_number(values, s.input) if roles & ROLE_INPUT else None,
            first_number(values, s.output) if roles & ROLE_OUTPUT else None,
            first_number(values, s.total) if roles & ROLE_TOTAL else None,
            *self._cache_and_reasoning(values, roles),
            cache_in_input,
            reasoning_in_output,
        )
        tokens = target.tokens
        for index, count in enumerate(usage):
            if count:
                series = tokens[index] or self._token_series(target, index, now)
                series.value += count * weight
                series.last = now
        cost = target.cost
        price = target.price
        if price is None:
            cost.value += weight
            self._log_unpriced(target.provider, target.model)
        else:
            cost.value += price.cost(usage) * weight
        cost.last = now
        if not roles & _USAGE_REPORTED and not failed:
            # Costed $0 above: say so, or a budget under-counts in silence (OpenAI streams without usage).
            self.families.llm_without_usage.add((target.provider, target.model), weight, now)
        if self.families.genai_duration is not None:
            call = (
                self._label_text(operation_name(operation) or ""),
                target.provider,
                self._label_text(request_model),
                self._label_text(response_model),
            )
            self._record_genai(call, usage, roles, hist_weight, now)
            self.families.genai_duration.observe(
                (*call, self._genai_error(span, values, failed)), duration, hist_weight, now, exemplar
            )
        return True

    def _cache_and_reasoning(
        self, values: list[AnyValue | None], roles: int
    ) -> tuple[float | None, float | None, float | None]:
        """Cache read, cache write and reasoning counts: from their own attributes, else from a serialized
        token-details map (LangSmith)."""
        s = self._scanner
        cache_read = first_number(values, s.cache_read) if roles & ROLE_CACHE_READ else None
        cache_write = first_number(values, s.cache_write) if roles & ROLE_CACHE_WRITE else None
        reasoning = first_number(values, s.reasoning) if roles & ROLE_REASONING else None
        if roles & ROLE_INPUT_DETAILS:
            if cache_read is None:
                cache_read = detail_count(values, s.input_details, "cache_read")
            if cache_write is None:
                cache_write = detail_count(values, s.input_details, "cache_creation")
        if roles & ROLE_OUTPUT_DETAILS and reasoning is None:
            reasoning = detail_count(values, s.output_details, "reasoning")
        return cache_read, cache_write, reasoning

    def _llm_target(self, key: tuple[str, str, str, bool], now: int) -> LlmTarget:
        """Resolve, once per lookup key, the provider, the model, the price and the series of an LLM call."""
        raw_provider, response_model, request_model, failed = key
        provider = self._label_text(normalize_provider(raw_provider)) if raw_provider else ""
        price = self.prices.lookup(response_model, request_model)
        if (not provider or provider in FRAMEWORK_PROVIDERS) and price is not None:
            # No vendor named (a bare model attribute, or a framework's name): the price table knows the model's.
            provider = self._label_text(price.provider)
        reported = response_model or request_model
        model = price.model if price is not None and self._label_priced_model else self._label_text(reported)
        f = self.families
        labels = (provider, model)
        requests, own = execution_of(
            f.llm_requests, (provider, model, "failure" if failed else "success"), f.llm_duration, labels, now
        )
        costs = f.llm_unpriced if price is None else f.llm_cost
        cost = costs.series_or_overflow(labels, now)
        target = LlmTarget(
            provider,
            model,
            requests,
            cost,
            price,
            self._cache_in_input.get(provider),
            self._reasoning_in_output.get(provider),
        )
        if own and not costs.is_overflow(cost):
            self._remember(self._llm_targets, key, target)
        return target

    def _token_series(self, target: LlmTarget, index: int, now: int) -> SumSeries:
        """A token type's series on its first non-zero count; kept in the target unless it is the overflow."""
        tokens = self.families.llm_tokens
        series: SumSeries = tokens.series_or_overflow((target.provider, target.model, TOKEN_TYPES[index]), now)
        if not tokens.is_overflow(series):
            target.tokens[index] = series
        return series

    def _record_genai(
        self, call: tuple[str, str, str, str], usage: Sequence[float], roles: int, weight: int, now: int
    ) -> None:
        """``gen_ai.client.token.usage``: per call, input = every input token, output = output incl. reasoning;
        each type only when the span reported it (an embedding call has no output: a 0 would skew the histogram
        and count a call that produced none)."""
        tokens = self.families.genai_tokens
        assert tokens is not None
        uncached, cache_read, cache_write, output, reasoning = usage  # TokenUsage order
        if roles & _INPUT_REPORTED or (roles & ROLE_TOTAL and roles & ROLE_OUTPUT):
            tokens.observe((*call, "input"), uncached + cache_read + cache_write, weight, now)
        if roles & _OUTPUT_REPORTED:
            tokens.observe((*call, "output"), output + reasoning, weight, now)

    def _genai_error(self, span: Span, values: list[AnyValue | None], failed: bool) -> str:
        """``error.type`` of a failed call as ``errors_total`` has it: the attribute, else the exception's type."""
        if not failed:
            return ""
        return self._label_text(
            first_text(values, self._scanner.error_type) or self._exception_type(span) or OTHER_ERROR
        )

    @staticmethod
    def _exception_type(span: Span) -> str | None:
        for event in span.events:
            if event.name == "exception":
                for kv in event.attributes:
                    if kv.key == "exception.type":
                        return any_to_str(kv.value)
        return None

    def _adjusted_count(self, trace_state: str, span: Span) -> float:
        found = self._adjusted_counts.get(trace_state)
        if found is None:
            count, must_reach = adjusted_count(trace_state)
            nearest = round(count)
            if abs(count - nearest) < 1e-9 * count:
                count = float(nearest)  # 2**56 / (2**56 - th) is 10.000000000000002 for 10%: count 10
            if len(self._adjusted_counts) >= _ADJUSTED_COUNT_CACHE:
                self._adjusted_counts.clear()
            found = self._adjusted_counts[trace_state] = (count, as_bytes(must_reach) if must_reach else None)
        count, reach = found
        # A threshold its trace id does not reach: an inconsistent sampler, probability unknown.
        if reach is not None and randomness_bytes(span.trace_id) < reach:
            return 1.0
        return count

    def _round_weight(self, weight: float) -> int:
        whole = int(weight)
        return whole + (1 if self._random.random() < weight - whole else 0)

    def _log_unpriced(self, provider: str, model: str) -> None:
        key = (provider, model)
        if key in self._logged_unpriced or len(self._logged_unpriced) >= _MAX_LOGGED_UNPRICED:
            return
        self._logged_unpriced.add(key)
        self._log.warning(
            "model has no price: its requests are counted as unpriced and their cost is not counted; add it to "
            "connectors.spanmetrics.pricing.models",
            extra={"provider": provider, "model": model},
        )

    # --- flush ------------------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send the cumulative state downstream at once (shutdown; tests)."""
        self._send(self.collect())

    async def _flush_in_slices(self) -> None:
        """The periodic flush: the request is built in slices of at most ``FLUSH_SLICE_SECONDS`` of event-loop
        time, so that thousands of series never stall the receivers (a point costs a few microseconds).

        Spans recorded between slices land in points not written yet or in the next flush: every point is the
        cumulative value at its own writing, which is all a cumulative stream promises.
        """
        request = ExportMetricsServiceRequest()
        deadline = time.perf_counter() + FLUSH_SLICE_SECONDS
        for _ in self._fill(request):
            if time.perf_counter() > deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + FLUSH_SLICE_SECONDS
        self._send(request)

    def _send(self, request: ExportMetricsServiceRequest) -> None:
        """Hand a collected request to the metrics pipeline (ownership passes to it)."""
        if self._out is None or not request.resource_metrics:
            return
        cid = self._settings.component_id
        try:
            self._out.consume(request)
        except Refused as exc:
            # Cumulative: the next flush carries everything this one had.
            self._flushes.labels(cid, "refused").inc()
            self._rate_limited.warning("refused", "metrics pipeline refused span metrics", reason=exc.reason)
            return
        self._flushes.labels(cid, "ok").inc()

    def collect(self) -> ExportMetricsServiceRequest:
        """Expire idle series, update the self-metrics and return the cumulative state as an OTLP request."""
        request = ExportMetricsServiceRequest()
        for _ in self._fill(request):
            pass
        return request

    def _fill(self, request: ExportMetricsServiceRequest) -> Iterator[None]:
        """Expire idle series and update the self-metrics, then write every series into ``request`` (one
        ResourceMetrics with an empty resource and scope), yielding after each family's expiry and each point."""
        now = time.time_ns()
        expiration = float(self._cfg.metrics_expiration)
        cid = self._settings.component_id
        for family in self._all_families:
            if expiration > 0 and family.expire_before(now - int(expiration * 1e9)):
                self._forget_series()
            overflowed = family.take_overflowed()
            if overflowed:
                self._overflow_metric.labels(cid, family.name).inc(overflowed)
            self._series_metric.labels(cid, family.name).set(len(family))
            yield  # expiry walks every series of the family
        metrics = None
        for family in self._all_families:
            if not len(family):
                continue
            if metrics is None:
                metrics = request.resource_metrics.add().scope_metrics.add().metrics
            # The family's series as they are now: a series created while the flush pauses is in the next one.
            yield from family.write_points(metrics.add(), now, list(family.series.values()))

    def _forget_series(self) -> None:
        """Empty the lookup caches: they may hold series that a family just dropped."""
        self._red_lookups.clear()
        self._workflows.clear()
        self._steps.clear()
        self._llm_targets.clear()

    def state(self) -> dict[str, Any]:
        return {family.name: len(family) for family in self._all_families}
