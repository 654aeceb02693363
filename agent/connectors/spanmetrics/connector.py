"""The ``spanmetrics`` connector: RED, workflow, step, LLM token/cost and error metrics from every span.

It sits in its own traces pipeline fed by the receiver, next to (not after) the sampled pipeline, so it sees
100% of spans before any sampling. ``consume`` reads the batch synchronously and keeps nothing of it (no
reference, no mutation): the batch stays valid for the other pipelines the receiver fans out to.

Hot path, per span: one scan of its attributes through a ``key -> slot`` table built from the config, a few
tuple keys, dict updates on the families. Spans carrying an OpenTelemetry threshold in ``tracestate``
(``ot=th:…``, head-sampled upstream) count with their adjusted count ``1/p``: counters add it exactly,
histograms add it stochastically rounded to an integer (OTLP bucket counts are integers), as the Collector does.

Every ``metrics_flush_interval`` (and at shutdown) the cumulative state goes to the metrics pipeline as one
``ExportMetricsServiceRequest`` with an empty resource and scope, so that the Prometheus exporter gives the
series exactly the catalogue's labels (see ``docs/metrics.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics, ScopeMetrics
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from agent.component import Consumer, ConsumerMap, CreateSettings, Refused, Signal
from agent.connectors.spanmetrics.aggregation import HistogramFamily, SumFamily
from agent.connectors.spanmetrics.config import SpanMetricsConfig
from agent.connectors.spanmetrics.genai import (
    TOKEN_TYPES,
    Concept,
    GenAiKeys,
    TokenUsage,
    any_to_str,
    is_inference,
    normalize_provider,
    normalize_tokens,
)
from agent.connectors.spanmetrics.pricing import PriceTable
from agent.otlp.probability import adjusted_count, randomness, threshold_for
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
_ADJUSTED_COUNT_CACHE = 1024


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


class AttributeScanner:
    """Every attribute key the connector reads, mapped to a slot of a per-span value list."""

    def __init__(self, cfg: SpanMetricsConfig) -> None:
        attrs = cfg.attributes
        keys: list[str] = []
        for key in [
            *GenAiKeys.keys(),
            *attrs.workflow_name,
            *attrs.step_type,
            *attrs.step_status,
            *attrs.error_type,
            *attrs.component,
        ]:
            if key not in keys:
                keys.append(key)
        self.slot_of = {key: index for index, key in enumerate(keys)}
        self.size = len(keys)
        self.genai = GenAiKeys(self.slot_of)
        self.workflow = tuple(self.slot_of[k] for k in attrs.workflow_name)
        self.step_type = tuple(self.slot_of[k] for k in attrs.step_type)
        self.step_status = tuple(self.slot_of[k] for k in attrs.step_status)
        self.error_type = tuple(self.slot_of[k] for k in attrs.error_type)
        self.component = tuple(self.slot_of[k] for k in attrs.component)
        self.model_slots = self.genai.slots[Concept.RESPONSE_MODEL] + self.genai.slots[Concept.REQUEST_MODEL]

    def scan(self, span: Span) -> list[AnyValue | None] | None:
        """The values of the keys of interest by slot, or None when the span has none of them (the common case
        for plain RED spans: nothing else to look at)."""
        values: list[AnyValue | None] | None = None
        slot_of = self.slot_of
        for kv in span.attributes:
            slot = slot_of.get(kv.key)
            if slot is not None:
                if values is None:
                    values = [None] * self.size
                values[slot] = kv.value
        return values

    def names_a_model(self, values: list[AnyValue | None]) -> bool:
        return any(values[slot] is not None for slot in self.model_slots)


def first_text(values: Sequence[AnyValue | None], slots: Sequence[int]) -> str | None:
    for slot in slots:
        value = values[slot]
        if value is not None:
            text = any_to_str(value)
            if text:
                return text
    return None


class SpanMetricsConnector:
    def __init__(self, cfg: SpanMetricsConfig, settings: CreateSettings, consumers: ConsumerMap) -> None:
        self._cfg = cfg
        self._settings = settings
        self._log = settings.logger
        self._rate_limited = RateLimitedLog(settings.logger)
        self._out: Consumer | None = consumers.get(Signal.METRICS)
        self.families = _Families(cfg)
        self._all_families = self.families.all()
        self._scanner = AttributeScanner(cfg)
        self.prices = PriceTable.from_config(cfg.pricing)
        self._cache_in_input = {normalize_provider(k): v for k, v in cfg.genai.cache_tokens_in_input.items()}
        self._reasoning_in_output = {normalize_provider(k): v for k, v in cfg.genai.reasoning_tokens_in_output.items()}
        # Same rounding as the tail sampler, so both compute the identical threshold from the same percentage.
        self._exemplar_threshold = threshold_for(round(cfg.exemplars.sampled_percentage / 100.0, 12))
        self._exemplars = cfg.exemplars.enabled
        self._error_exemplars = cfg.exemplars.error_spans
        self._adjusted_counts: dict[str, float] = {}
        self._providers: dict[str, str] = {}
        self._logged_unpriced: set[tuple[str, str]] = set()
        self._random = random.Random()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
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
        self.flush()

    async def _flush_loop(self) -> None:
        interval = float(self._cfg.metrics_flush_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                self.flush()
            except Exception:  # a bug must not stop metrics for good
                self._flushes.labels(self._settings.component_id, "failed").inc()
                self._log.exception("span metrics flush failed")

    # --- hot path -------------------------------------------------------------------------------------------

    def consume(self, batch: Message) -> None:
        now = time.time_ns()
        spans = 0
        for resource_spans in batch.resource_spans:  # type: ignore[attr-defined]
            service = self._service_name(resource_spans.resource)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self._record(span, service, now)
                spans += len(scope_spans.spans)
        self._spans_metric.inc(spans)

    @staticmethod
    def _service_name(resource: Resource) -> str:
        for kv in resource.attributes:
            if kv.key == "service.name":
                return any_to_str(kv.value) or UNKNOWN_SERVICE
        return UNKNOWN_SERVICE

    def _record(self, span: Span, service: str, now: int) -> None:
        f = self.families
        scanner = self._scanner
        values = scanner.scan(span)
        trace_state = span.trace_state
        weight = self._adjusted_count(trace_state) if trace_state else 1.0
        hist_weight = 1 if weight == 1.0 else self._round_weight(weight)
        end = span.end_time_unix_nano
        duration = max(end - span.start_time_unix_nano, 0) / 1e9
        status_code = span.status.code
        failed = status_code == _ERROR
        exemplar = None
        if self._exemplars:
            trace_id = span.trace_id
            if (failed and self._error_exemplars) or randomness(trace_id) >= self._exemplar_threshold:
                exemplar = (trace_id, span.span_id, end)

        red_key = (service, span.name, SPAN_KIND_NAMES.get(span.kind, ""), STATUS_CODE_NAMES.get(status_code, ""))
        f.spans.add(red_key, weight, now)
        f.span_duration.observe(red_key, duration, hist_weight, now, exemplar)
        if values is None:
            if failed:
                error_type = self._exception_type(span) or OTHER_ERROR
                f.errors.add((error_type, service), weight, now)
            return
        status = "failure" if failed else "success"
        role = ""

        workflow = first_text(values, scanner.workflow)
        if workflow is not None:
            role = "executor"
            f.workflow_executions.add((workflow, status), weight, now)
            f.workflow_duration.observe((workflow,), duration, hist_weight, now, exemplar)

        step_type = first_text(values, scanner.step_type)
        if step_type is not None:
            role = role or "step_executor"
            step_status = status
            if not failed and first_text(values, scanner.step_status) == "skipped":
                step_status = "skipped"
            f.step_executions.add((step_type, step_status), weight, now)
            f.step_duration.observe((step_type,), duration, hist_weight, now, exemplar)

        if scanner.names_a_model(values) and self._record_llm(
            values, weight, hist_weight, duration, failed, now, exemplar
        ):
            role = role or "provider"

        if failed:
            error_type = first_text(values, scanner.error_type) or self._exception_type(span) or OTHER_ERROR
            component = first_text(values, scanner.component) or role or service
            f.errors.add((error_type, component), weight, now)

    def _record_llm(
        self,
        values: list[AnyValue | None],
        weight: float,
        hist_weight: int,
        duration: float,
        failed: bool,
        now: int,
        exemplar: tuple[bytes, bytes, int] | None,
    ) -> bool:
        """Record an LLM call if the span is one; False for agent/tool/workflow spans that only name a model."""
        genai = self._scanner.genai
        operation = genai.text(values, Concept.OPERATION)
        if not is_inference(
            operation, genai.text(values, Concept.OPENINFERENCE_KIND), genai.text(values, Concept.TRACELOOP_KIND)
        ):
            return False
        response_model = genai.text(values, Concept.RESPONSE_MODEL) or ""
        request_model = genai.text(values, Concept.REQUEST_MODEL) or ""
        model = response_model or request_model
        if not model:
            return False
        provider = self._provider(genai.text(values, Concept.PROVIDER))
        f = self.families
        key = (provider, model)
        f.llm_requests.add((provider, model, "failure" if failed else "success"), weight, now)
        f.llm_duration.observe(key, duration, hist_weight, now, exemplar)
        usage = normalize_tokens(
            genai.number(values, Concept.INPUT),
            genai.number(values, Concept.OUTPUT),
            genai.number(values, Concept.TOTAL),
            genai.number(values, Concept.CACHE_READ),
            genai.number(values, Concept.CACHE_WRITE),
            genai.number(values, Concept.REASONING),
            cache_in_input=self._cache_in_input.get(provider),
            reasoning_in_output=self._reasoning_in_output.get(provider),
        )
        for token_type, count in zip(TOKEN_TYPES, usage, strict=True):
            if count:
                f.llm_tokens.add((provider, model, token_type), count * weight, now)
        price = self.prices.lookup(response_model, request_model)
        if price is None:
            f.llm_unpriced.add(key, weight, now)
            self._log_unpriced(provider, model)
        else:
            f.llm_cost.add(key, price.cost(usage) * weight, now)
        if f.genai_duration is not None:
            self._record_genai(operation or "", provider, request_model, response_model, usage, hist_weight, now)
            f.genai_duration.observe(
                (operation or "", provider, request_model, response_model, self._genai_error(values, failed)),
                duration,
                hist_weight,
                now,
                exemplar,
            )
        return True

    def _record_genai(
        self,
        operation: str,
        provider: str,
        request_model: str,
        response_model: str,
        usage: TokenUsage,
        weight: int,
        now: int,
    ) -> None:
        """``gen_ai.client.token.usage``: per call, input = every input token, output = output incl. reasoning."""
        tokens = self.families.genai_tokens
        assert tokens is not None
        input_total = usage.input + usage.cache_read + usage.cache_write
        output_total = usage.output + usage.reasoning
        if input_total or output_total:
            tokens.observe((operation, provider, request_model, response_model, "input"), input_total, weight, now)
            tokens.observe((operation, provider, request_model, response_model, "output"), output_total, weight, now)

    def _genai_error(self, values: list[AnyValue | None], failed: bool) -> str:
        if not failed:
            return ""
        return first_text(values, self._scanner.error_type) or OTHER_ERROR

    @staticmethod
    def _exception_type(span: Span) -> str | None:
        for event in span.events:
            if event.name == "exception":
                for kv in event.attributes:
                    if kv.key == "exception.type":
                        return any_to_str(kv.value)
        return None

    def _provider(self, raw: str | None) -> str:
        if not raw:
            return ""
        provider = self._providers.get(raw)
        if provider is None:
            provider = normalize_provider(raw)
            if len(self._providers) < 1024:
                self._providers[raw] = provider
        return provider

    def _adjusted_count(self, trace_state: str) -> float:
        count = self._adjusted_counts.get(trace_state)
        if count is None:
            count = adjusted_count(trace_state)
            nearest = round(count)
            if abs(count - nearest) < 1e-9 * count:
                count = float(nearest)  # 2**56 / (2**56 - th) is 10.000000000000002 for 10%: count 10
            if len(self._adjusted_counts) >= _ADJUSTED_COUNT_CACHE:
                self._adjusted_counts.clear()
            self._adjusted_counts[trace_state] = count
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
        """Send the cumulative state downstream (ownership passes to the metrics pipeline)."""
        request = self.collect()
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
        now = time.time_ns()
        expiration = float(self._cfg.metrics_expiration)
        cid = self._settings.component_id
        request = ExportMetricsServiceRequest()
        scope_metrics = ScopeMetrics()
        for family in self._all_families:
            if expiration > 0:
                family.expire_before(now - int(expiration * 1e9))
            overflowed = family.take_overflowed()
            if overflowed:
                self._overflow_metric.labels(cid, family.name).inc(overflowed)
            self._series_metric.labels(cid, family.name).set(len(family))
            if len(family):
                family.to_metric(scope_metrics.metrics.add(), now)
        if scope_metrics.metrics:
            request.resource_metrics.append(ResourceMetrics(scope_metrics=[scope_metrics]))
        return request

    def state(self) -> dict[str, Any]:
        return {family.name: len(family) for family in self._all_families}
