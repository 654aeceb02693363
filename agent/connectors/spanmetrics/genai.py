"""GenAI span attributes as instrumentations really emit them, normalized to one canonical set.

Every alias of current and deprecated OpenTelemetry GenAI conventions, OpenLLMetry (Traceloop), OpenInference
(Arize/Phoenix) and OpenLIT is read (see ``docs/metrics.md`` for the table). When a span carries several
aliases of one concept (OpenLIT sets both ``gen_ai.usage.cache_read.input_tokens`` and
``gen_ai.usage.prompt_tokens_details.cached_tokens``), the first in :data:`ALIASES` order wins: aliases are
alternatives, never summed.

Tokens are normalized into five **disjoint** types so that a sum over types never counts a token twice:

- ``input``: uncached input tokens;
- ``cache_read`` and ``cache_write``: input tokens read from / written to the provider's prompt cache;
- ``output``: output tokens without reasoning tokens;
- ``reasoning``: reasoning ("thinking") tokens.

The OpenTelemetry spec (and OpenAI, OpenLLMetry, OpenInference) count cached tokens *inside* the input count
and reasoning tokens inside the output count; native Anthropic ``input_tokens`` exclude the cache, Gemini's
candidate count excludes thoughts. :func:`normalize_tokens` assumes the inclusive convention unless the numbers
contradict it (input smaller than the cached parts: they cannot be included) or the config says otherwise for
the provider.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from agent.otlp.anyvalue import any_value_text


class Concept(enum.IntEnum):
    PROVIDER = 0
    REQUEST_MODEL = 1
    RESPONSE_MODEL = 2
    OPERATION = 3
    OPENINFERENCE_KIND = 4
    TRACELOOP_KIND = 5
    INPUT = 6
    OUTPUT = 7
    TOTAL = 8
    CACHE_READ = 9
    CACHE_WRITE = 10
    REASONING = 11
    INPUT_DETAILS = 12  # a serialized map of input token counts (cache_read, cache_creation)
    OUTPUT_DETAILS = 13  # a serialized map of output token counts (reasoning)


# Aliases per concept, highest priority first.
ALIASES: dict[Concept, tuple[str, ...]] = {
    Concept.PROVIDER: (
        "gen_ai.provider.name",  # OTel >= 1.37, OpenLLMetry >= 2026-03, OpenLIT
        "gen_ai.system",  # OTel <= 1.36, older OpenLLMetry
        "llm.provider",  # OpenInference: the hosting provider
        "llm.system",  # OpenInference: the model family's vendor
        "ai.model.provider",  # Vercel AI SDK: provider id and API (`openai.embedding`)
    ),
    Concept.RESPONSE_MODEL: (
        "gen_ai.response.model",  # OTel, OpenLLMetry, OpenLIT
        "llm.response.model_name",  # OpenInference
        "llm.response.model",  # early OpenLLMetry
    ),
    Concept.REQUEST_MODEL: (
        "gen_ai.request.model",  # OTel, OpenLLMetry, OpenLIT
        "llm.request.model_name",  # OpenInference
        "llm.model_name",  # OpenInference (the model invoked)
        "embedding.model_name",  # OpenInference EMBEDDING spans
        "llm.request.model",  # early OpenLLMetry
        "ai.model.id",  # Vercel AI SDK: on every span of a call (see VERCEL_CALL_OPERATIONS)
    ),
    Concept.OPERATION: (
        "gen_ai.operation.name",  # OTel, OpenLLMetry, OpenLIT
        "llm.request.type",  # OpenLLMetry before gen_ai.operation.name: chat / completion / embedding
        "ai.operationId",  # Vercel AI SDK: `ai.embed.doEmbed` (see VERCEL_CALL_OPERATIONS)
        # The same, renamed by Sentry's Vercel AI integration as a span starts (its ai.usage.tokens, set at the end,
        # keeps its name: without this, a function's span would count its calls' tokens again)
        "vercel.ai.operationId",
    ),
    Concept.OPENINFERENCE_KIND: ("openinference.span.kind",),
    Concept.TRACELOOP_KIND: ("traceloop.span.kind",),
    Concept.INPUT: (
        "gen_ai.usage.input_tokens",  # OTel >= 1.28, OpenLLMetry >= 2025-10, OpenLIT
        "gen_ai.usage.prompt_tokens",  # OTel < 1.28, older OpenLLMetry
        "llm.token_count.prompt",  # OpenInference
        "llm.usage.prompt_tokens",  # early OpenLLMetry
        "ai.usage.tokens",  # Vercel AI SDK embedding calls (its generation calls carry gen_ai.usage.*)
    ),
    Concept.OUTPUT: (
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
        "llm.usage.completion_tokens",
    ),
    Concept.TOTAL: (
        "gen_ai.usage.total_tokens",  # OpenLLMetry >= 2026-03, OpenLIT
        "llm.usage.total_tokens",  # OpenLLMetry before
        "llm.token_count.total",  # OpenInference
    ),
    Concept.CACHE_READ: (
        "gen_ai.usage.cache_read.input_tokens",  # OTel >= 1.40, OpenLLMetry, OpenLIT
        "gen_ai.usage.cache_read_input_tokens",  # older OpenLLMetry constant
        "gen_ai.usage.prompt_tokens_details.cached_tokens",  # OpenLIT (OpenAI's field name)
        "llm.token_count.prompt_details.cache_read",  # OpenInference
        "gen_ai.usage.cache_read_tokens",  # Pydantic AI / Logfire
        "gen_ai.usage.details.cache_read_tokens",  # Pydantic AI >= 1.0 (RequestUsage.opentelemetry_attributes)
        "gen_ai.usage.details.cached_tokens",  # Pydantic AI 0.x (OpenAI's prompt_tokens_details)
        "gen_ai.usage.input_cached_tokens",  # seen by Langfuse ingestion
        "ai.usage.inputTokenDetails.cacheReadTokens",  # Vercel AI SDK >= 6
        "ai.usage.cachedInputTokens",  # Vercel AI SDK 5
    ),
    Concept.CACHE_WRITE: (
        "gen_ai.usage.cache_write.input_tokens",  # OTel latest (semantic-conventions-genai #440)
        "gen_ai.usage.cache_creation.input_tokens",  # OTel 1.40-1.41, OpenLLMetry Anthropic, OpenLIT
        "gen_ai.usage.cache_creation_input_tokens",  # older OpenLLMetry constant
        "gen_ai.usage.prompt_tokens_details.cache_creation_tokens",  # OpenLIT
        "llm.token_count.prompt_details.cache_write",  # OpenInference
        "gen_ai.usage.cache_write_tokens",  # Pydantic AI / Logfire
        "gen_ai.usage.details.cache_write_tokens",  # Pydantic AI >= 1.0
        "gen_ai.usage.cache_write_input_tokens",  # Strands Agents < 1.34, Rust and .NET GenAI libraries
        "ai.usage.inputTokenDetails.cacheWriteTokens",  # Vercel AI SDK >= 6
    ),
    Concept.REASONING: (
        "gen_ai.usage.reasoning.output_tokens",  # OTel >= 1.41
        "gen_ai.usage.reasoning_tokens",  # OpenLLMetry, OpenLIT
        "gen_ai.usage.completion_tokens_details.reasoning_tokens",  # OpenLIT (OpenAI's field name)
        "llm.token_count.completion_details.reasoning",  # OpenInference
        "llm.usage.reasoning_tokens",  # older OpenLLMetry
        "gen_ai.usage.experimental.reasoning_tokens",  # Google ADK 1.x (Gemini's thoughts_token_count)
        "gen_ai.usage.details.reasoning_tokens",  # Pydantic AI (OpenAI's completion/output_tokens_details)
        "ai.usage.outputTokenDetails.reasoningTokens",  # Vercel AI SDK >= 6
        "ai.usage.reasoningTokens",  # Vercel AI SDK 5
    ),
    # LangSmith's OTel export: LangChain's input/output_token_details, as a Python dict's repr or as JSON; read
    # only when none of the aliases above is on the span.
    Concept.INPUT_DETAILS: ("gen_ai.usage.input_token_details",),
    Concept.OUTPUT_DETAILS: ("gen_ai.usage.output_token_details",),
}

# Operations that are not a billed model call even when a model attribute is present (agent and tool spans
# often repeat the model name): counting them would double-count requests and tokens.
NOT_INFERENCE_OPERATIONS = frozenset(
    {
        "invoke_agent",
        "create_agent",
        "execute_tool",
        "invoke_workflow",
        "retrieval",
        "fetch_response",  # polls a background response; the spec says it reports no token usage
        "plan",
    }
)
# OpenInference span kinds that are model calls; CHAIN, AGENT, TOOL, RETRIEVER... are not.
INFERENCE_OPENINFERENCE_KINDS = frozenset({"LLM", "EMBEDDING"})

# The Vercel AI SDK names each of its spans' operation in ``ai.operationId``, and every span of a call carries the
# model (``ai.model.id``): the function (``ai.generateText``, ``ai.embed``), the provider calls it makes, the tool
# calls between them. Only the provider calls are model calls; these end their operation ids, each with the
# OpenTelemetry operation name it is (None: the SDK does not say, as the span's GenAI attributes do not).
VERCEL_OPERATION_PREFIX = "ai."
VERCEL_CALL_OPERATIONS: dict[str, str | None] = {
    ".doGenerate": None,
    ".doStream": None,
    ".doEmbed": "embeddings",
}
_VERCEL_CALL_SUFFIXES = tuple(VERCEL_CALL_OPERATIONS)

# Old or non-standard provider names → the OpenTelemetry well-known value.
PROVIDER_NAMES: dict[str, str] = {
    "xai": "x_ai",
    "az.ai.inference": "azure.ai.inference",
    "az.ai.openai": "azure.ai.openai",
    "azure_openai": "azure.ai.openai",
    "mistralai": "mistral_ai",
    "mistral": "mistral_ai",
    "vertex_ai": "gcp.vertex_ai",
    "vertexai": "gcp.vertex_ai",
    "gemini": "gcp.gemini",
    "bedrock": "aws.bedrock",
    "aws_bedrock": "aws.bedrock",
    "watsonx": "ibm.watsonx.ai",
    # OpenInference's llm.provider and LiteLLM's gen_ai.system name the cloud, not the service
    "aws": "aws.bedrock",
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "google": "gcp.gen_ai",  # any Google generative AI endpoint
    # The Vercel AI SDK's provider ids (gen_ai.system), after their API suffix (see normalize_provider)
    "google.generative-ai": "gcp.gemini",
    "google.vertex": "gcp.vertex_ai",
    "amazon-bedrock": "aws.bedrock",
    "azure-openai": "azure.ai.openai",
}
# gen_ai.system values that name a framework, not the model's vendor (OpenLLMetry's GenAISystem enum has
# "Langchain" and "crewai"): the provider label then comes from the price table's entry for the model.
FRAMEWORK_PROVIDERS = frozenset({"langchain", "crewai"})
# The API a Vercel AI SDK provider id names after its provider (``anthropic.messages``, ``openai.chat``).
_API_SUFFIXES = (
    ".chat",
    ".messages",
    ".responses",
    ".completion",
    ".embedding",
    ".embeddings",  # the Vercel AI SDK's Azure embedding models
    ".textembedding",  # its Cohere embedding models (cohere.textEmbedding)
    ".image",
    ".transcription",
)

TOKEN_TYPES = ("input", "cache_read", "cache_write", "output", "reasoning")


# Instrumentations (by the resource's telemetry.sdk.name) whose input token count leaves cached tokens out for a
# provider, unlike the GenAI conventions: OpenLIT copies Anthropic's own input_tokens, which exclude the cache
# reads and writes (openlit/instrumentation/anthropic/utils.py), while OpenLLMetry adds them in. Read when the
# config does not say (genai.cache_tokens_in_input).
SDK_CACHE_IN_INPUT: dict[str, dict[str, bool]] = {"openlit": {"anthropic": False}}
# Vercel AI SDK 5 passes each provider's own input count through: Anthropic's leaves the cache out
# (packages/anthropic/src/anthropic-messages-language-model.ts: inputTokens = usage.input_tokens, cachedInputTokens =
# cache_read_input_tokens), and its totalTokens is input + output, so the total cannot tell. Recognised by SDK 5's
# cache attribute read alone: SDK 6 reports an inclusive input count with ai.usage.inputTokenDetails.*.
VERCEL_5_CACHE_READ = "ai.usage.cachedInputTokens"
VERCEL_5_CACHE_OUTSIDE_INPUT = frozenset({"anthropic"})
# Likewise for reasoning: OpenLIT's Gemini output count is candidates_token_count, thoughts not included
# (openlit/instrumentation/google_ai_studio/utils.py), while Gemini's own total and the conventions add them.
SDK_REASONING_IN_OUTPUT: dict[str, dict[str, bool]] = {"openlit": {"gcp.gemini": False}}
# Providers as some frameworks name them (the framework, not the model's vendor) whose counts are known: Google
# ADK 1.x reports `gcp.vertex.agent`, its output count is candidates_token_count and its reasoning Gemini's
# thoughts_token_count, which that count leaves out. `genai.reasoning_tokens_in_output` overrides these.
PROVIDER_REASONING_IN_OUTPUT: dict[str, bool] = {"gcp.vertex.agent": False}


class TokenUsage(NamedTuple):
    """Disjoint token counts of one call (see the module docstring)."""

    input: float = 0.0
    cache_read: float = 0.0
    cache_write: float = 0.0
    output: float = 0.0
    reasoning: float = 0.0

    def total(self) -> float:
        return self.input + self.cache_read + self.cache_write + self.output + self.reasoning


def normalize_tokens(
    input_tokens: float | None,
    output_tokens: float | None,
    total_tokens: float | None = None,
    cache_read: float | None = None,
    cache_write: float | None = None,
    reasoning: float | None = None,
    *,
    cache_in_input: bool | None = None,
    reasoning_in_output: bool | None = None,
) -> TokenUsage:
    """Disjoint token counts from whatever a span reported (None: not reported).

    ``cache_in_input`` / ``reasoning_in_output`` force a convention (from the config, per provider); None means
    "inclusive unless the numbers contradict it".
    """
    return TokenUsage(
        *disjoint_tokens(
            input_tokens, output_tokens, total_tokens, cache_read, cache_write, reasoning, cache_in_input,
            reasoning_in_output,
        )
    )  # fmt: skip


def disjoint_tokens(
    input_tokens: float | None,
    output_tokens: float | None,
    total_tokens: float | None,
    cache_read: float | None,
    cache_write: float | None,
    reasoning: float | None,
    cache_in_input: bool | None,
    reasoning_in_output: bool | None,
) -> tuple[float, float, float, float, float]:
    """:func:`normalize_tokens` as a plain tuple in :class:`TokenUsage` order, for the connector's hot path
    (positional arguments, no named tuple to build)."""
    read = cache_read or 0.0
    write = cache_write or 0.0
    thinking = reasoning or 0.0
    if input_tokens is None and total_tokens is not None and output_tokens is not None:
        input_tokens = _at_least_zero(total_tokens - output_tokens)  # only a total and an output: the rest is input
    elif (
        total_tokens is not None
        and input_tokens is not None
        and output_tokens is not None
        and (read or write or thinking)
    ):
        cache_in_input, reasoning_in_output = _conventions_by_total(
            input_tokens, output_tokens, total_tokens, read + write, thinking, cache_in_input, reasoning_in_output
        )
    uncached = 0.0
    if input_tokens is not None:
        included = cache_in_input if cache_in_input is not None else input_tokens >= read + write
        uncached = _at_least_zero(input_tokens - read - write) if included else input_tokens
    output = 0.0
    if output_tokens is not None:
        included = reasoning_in_output if reasoning_in_output is not None else output_tokens >= thinking
        output = _at_least_zero(output_tokens - thinking) if included else output_tokens
    return (uncached, read, write, output, thinking)


def _conventions_by_total(
    input_tokens: float,
    output_tokens: float,
    total: float,
    cached: float,
    thinking: float,
    cache_in_input: bool | None,
    reasoning_in_output: bool | None,
) -> tuple[bool | None, bool | None]:
    """What a span's own total says of the conventions it was not told (a Bedrock or Anthropic input count without
    the cache, whose total adds the cache in; a Gemini output count without the thoughts): each convention on
    which every reading the total matches agrees. A convention with nothing to count (no cache, no reasoning)
    is not asked, so that it cannot make the other one ambiguous."""
    caches = (cache_in_input,) if cache_in_input is not None or not cached else (True, False)
    reasonings = (reasoning_in_output,) if reasoning_in_output is not None or not thinking else (True, False)
    matches = [
        (cache_inside, reasoning_inside)
        for cache_inside in caches
        for reasoning_inside in reasonings
        if abs(
            input_tokens
            + (0.0 if cache_inside else cached)
            + output_tokens
            + (0.0 if reasoning_inside else thinking)
            - total
        )
        < 0.5
    ]
    cache_readings = {cache for cache, _ in matches}
    reasoning_readings = {reasoning for _, reasoning in matches}
    return (
        cache_readings.pop() if len(cache_readings) == 1 else cache_in_input,
        reasoning_readings.pop() if len(reasoning_readings) == 1 else reasoning_in_output,
    )


def cache_read_from_vercel_5_only(
    values: Sequence[AnyValue | None], cache_read_slots: Sequence[int], vercel_5_slot: int
) -> bool:
    """Whether a span's cache reads come from Vercel AI SDK 5's attribute, no other convention's beside it."""
    return values[vercel_5_slot] is not None and all(
        values[slot] is None for slot in cache_read_slots if slot != vercel_5_slot
    )


def _at_least_zero(value: float) -> float:
    return 0.0 if value < 0.0 else value  # max(value, 0.0) without the builtin's argument handling


def normalize_provider(raw: str) -> str:
    name = raw.strip().lower()
    known = PROVIDER_NAMES.get(name)
    if known is not None:
        return known
    for suffix in _API_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            return PROVIDER_NAMES.get(name, name)
    return name


def is_inference(operation: str | None, openinference_kind: str | None, traceloop_kind: str | None) -> bool:
    """Whether a span that names a model is a model call (and not an agent, tool or workflow span around one)."""
    if operation is not None:
        if operation in NOT_INFERENCE_OPERATIONS:
            return False
        if operation.startswith(VERCEL_OPERATION_PREFIX):
            return operation.endswith(_VERCEL_CALL_SUFFIXES)
    if openinference_kind is not None and openinference_kind.upper() not in INFERENCE_OPENINFERENCE_KINDS:
        return False
    return traceloop_kind is None  # Traceloop decorators mark workflow/task/agent/tool spans, never model calls


def operation_name(operation: str | None) -> str | None:
    """The OpenTelemetry operation name of a model call's operation attribute: a Vercel AI SDK operation id
    (``ai.embed.doEmbed``) as the operation it is (``embeddings``), any other as it is."""
    if operation is None or not operation.startswith(VERCEL_OPERATION_PREFIX):
        return operation
    return VERCEL_CALL_OPERATIONS.get(operation[operation.rfind(".") :])


def any_to_str(value: AnyValue) -> str | None:
    """A scalar as text, spelled as the exporters spell it (``true``, ``NaN``: ``any_value_text``); None for
    bytes, arrays, maps and no value, which name nothing."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind in ("int_value", "double_value", "bool_value"):
        return any_value_text(value)
    return None


def any_to_number(value: AnyValue) -> float | None:
    """A finite number from an int, a double or a numeric string (``"inf"``, ``"1e999"`` and NaN are not
    counts: one would make a cumulative counter infinite for good)."""
    kind = value.WhichOneof("value")
    if kind == "int_value":
        return float(value.int_value)
    if kind == "double_value":
        number = value.double_value
        return number if math.isfinite(number) else None
    if kind == "string_value":  # some SDKs stringify every attribute
        try:
            number = float(value.string_value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def first_text(values: Sequence[AnyValue | None], slots: Sequence[int]) -> str | None:
    """The first non-empty text among ``values[slot]`` in ``slots`` order (aliases by priority), or None.

    Reads ``string_value`` before asking which field is set (a descriptor call costing more than the read):
    the attributes read as text are strings but for a few SDKs, and any other kind yields "" there."""
    for slot in slots:
        value = values[slot]
        if value is not None:
            text = value.string_value or any_to_str(value)
            if text:
                return text
    return None


def alias_text(values: Sequence[AnyValue | None], slots: Sequence[int]) -> str | None:
    """The text of the highest-priority alias present ("" when it is empty; None when none is present or it is
    not a scalar): a present alias wins even when empty, as for every GenAI concept."""
    for slot in slots:
        value = values[slot]
        if value is not None:
            return value.string_value or any_to_str(value)
    return None


_DETAIL_COUNTS = {
    name: re.compile(rf"[\"']{name}[\"']\s*:\s*(\d+)") for name in ("cache_read", "cache_creation", "reasoning")
}


def detail_count(values: Sequence[AnyValue | None], slots: Sequence[int], name: str) -> float | None:
    """A count in a serialized token-details map (``{'audio': 0, 'cache_read': 8000}`` or its JSON), or None."""
    text = alias_text(values, slots)
    if not text:
        return None
    found = _DETAIL_COUNTS[name].search(text)
    return float(found.group(1)) if found and float(found.group(1)) <= MAX_TOKEN_COUNT else None


# The largest token count taken: beyond it a float no longer holds every integer, and a few spans claiming
# 1e308 tokens (finite, each) would still sum to an infinite counter for good.
MAX_TOKEN_COUNT = float(2**53)


def first_number(values: Sequence[AnyValue | None], slots: Sequence[int]) -> float | None:
    """The first number in ``[0, MAX_TOKEN_COUNT]`` among ``values[slot]`` in ``slots`` order, or None (token
    counts are integers; doubles and numeric strings are read through :func:`any_to_number`)."""
    for slot in slots:
        value = values[slot]
        if value is not None:
            number = value.int_value or any_to_number(value)
            if number is not None and 0 <= number <= MAX_TOKEN_COUNT:
                return float(number)
    return None


def normalize_attributes(attributes: Mapping[str, float | int | str], **conventions: bool | None) -> TokenUsage:
    """:func:`normalize_tokens` from plain ``{attribute key: value}`` (tests, docs, tools), each count read as the
    hot path reads it (:func:`first_number`: the first alias holding a usable count)."""

    def pick(concept: Concept) -> float | None:
        values = [_as_any_value(attributes[key]) for key in ALIASES[concept] if key in attributes]
        return first_number(values, range(len(values)))

    return normalize_tokens(
        pick(Concept.INPUT),
        pick(Concept.OUTPUT),
        pick(Concept.TOTAL),
        pick(Concept.CACHE_READ),
        pick(Concept.CACHE_WRITE),
        pick(Concept.REASONING),
        **conventions,
    )


def _as_any_value(value: float | int | str) -> AnyValue:
    """The value as an OTLP exporter would send it (a bool is no count; an int past int64, a double)."""
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return AnyValue(int_value=value)
    return AnyValue(double_value=float(value))
