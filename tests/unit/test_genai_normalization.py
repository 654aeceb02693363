"""Token normalization tables: every attribute convention in the wild maps to the same disjoint token types."""

from __future__ import annotations

import re

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from agent.connectors.spanmetrics.genai import (
    ALIASES,
    Concept,
    TokenUsage,
    detail_count,
    is_inference,
    normalize_attributes,
    normalize_provider,
    normalize_tokens,
)
from tests.helpers import REPO

# (convention, span attributes, expected disjoint usage: input, cache_read, cache_write, output, reasoning)
CONVENTIONS = [
    (
        "OTel GenAI current: input and output only",
        {"gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 300},
        TokenUsage(1200, 0, 0, 300, 0),
    ),
    (
        "OTel GenAI current: cache read and write are subsets of input_tokens (OpenAI-style inclusive input)",
        {
            "gen_ai.usage.input_tokens": 1500,
            "gen_ai.usage.cache_read.input_tokens": 1000,
            "gen_ai.usage.cache_creation.input_tokens": 200,
            "gen_ai.usage.output_tokens": 80,
        },
        TokenUsage(300, 1000, 200, 80, 0),
    ),
    (
        "OTel GenAI latest: cache_write.input_tokens replaces cache_creation",
        {
            "gen_ai.usage.input_tokens": 900,
            "gen_ai.usage.cache_write.input_tokens": 400,
            "gen_ai.usage.output_tokens": 10,
        },
        TokenUsage(500, 0, 400, 10, 0),
    ),
    (
        "OTel GenAI 1.41: reasoning tokens are a subset of output_tokens",
        {
            "gen_ai.usage.input_tokens": 100,
            "gen_ai.usage.output_tokens": 700,
            "gen_ai.usage.reasoning.output_tokens": 500,
        },
        TokenUsage(100, 0, 0, 200, 500),
    ),
    (
        "OTel GenAI before 1.28: prompt_tokens / completion_tokens",
        {"gen_ai.usage.prompt_tokens": 40, "gen_ai.usage.completion_tokens": 12},
        TokenUsage(40, 0, 0, 12, 0),
    ),
    (
        "OpenLLMetry: older cache constants and reasoning_tokens, inclusive input",
        {
            "gen_ai.usage.input_tokens": 2000,
            "gen_ai.usage.cache_read_input_tokens": 1500,
            "gen_ai.usage.cache_creation_input_tokens": 100,
            "gen_ai.usage.output_tokens": 60,
            "gen_ai.usage.reasoning_tokens": 20,
        },
        TokenUsage(400, 1500, 100, 40, 20),
    ),
    (
        "OpenLLMetry (early): llm.usage.* names",
        {"llm.usage.prompt_tokens": 30, "llm.usage.completion_tokens": 5, "llm.usage.total_tokens": 35},
        TokenUsage(30, 0, 0, 5, 0),
    ),
    (
        "OpenInference: llm.token_count.* with prompt and completion details",
        {
            "llm.token_count.prompt": 5000,
            "llm.token_count.prompt_details.cache_read": 4000,
            "llm.token_count.prompt_details.cache_write": 500,
            "llm.token_count.completion": 300,
            "llm.token_count.completion_details.reasoning": 100,
            "llm.token_count.total": 5300,
        },
        TokenUsage(500, 4000, 500, 200, 100),
    ),
    (
        "OpenLIT: OpenAI field names under gen_ai.usage (cached_tokens, reasoning_tokens details)",
        {
            "gen_ai.usage.input_tokens": 800,
            "gen_ai.usage.prompt_tokens_details.cached_tokens": 512,
            "gen_ai.usage.output_tokens": 90,
            "gen_ai.usage.completion_tokens_details.reasoning_tokens": 64,
        },
        TokenUsage(288, 512, 0, 26, 64),
    ),
    (
        "OpenLIT sets two aliases of one concept: they are alternatives, never summed",
        {
            "gen_ai.usage.input_tokens": 800,
            "gen_ai.usage.cache_read.input_tokens": 512,
            "gen_ai.usage.prompt_tokens_details.cached_tokens": 512,
            "gen_ai.usage.cache_creation.input_tokens": 100,
            "gen_ai.usage.prompt_tokens_details.cache_creation_tokens": 100,
            "gen_ai.usage.output_tokens": 50,
            "gen_ai.usage.reasoning_tokens": 30,
            "gen_ai.usage.completion_tokens_details.reasoning_tokens": 30,
        },
        TokenUsage(188, 512, 100, 20, 30),
    ),
    (
        "Pydantic AI / Logfire cache names",
        {
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.cache_read_tokens": 600,
            "gen_ai.usage.cache_write_tokens": 300,
            "gen_ai.usage.output_tokens": 7,
        },
        TokenUsage(100, 600, 300, 7, 0),
    ),
    (
        "native Anthropic numbers (input excludes the cache): detected because input < cache read + write",
        {
            "gen_ai.usage.input_tokens": 25,
            "gen_ai.usage.cache_read_input_tokens": 3000,
            "gen_ai.usage.cache_creation_input_tokens": 1200,
            "gen_ai.usage.output_tokens": 400,
        },
        TokenUsage(25, 3000, 1200, 400, 0),
    ),
    (
        "Gemini-style thoughts reported beside, not inside, the output: detected because output < reasoning",
        {"gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 50, "gen_ai.usage.reasoning_tokens": 900},
        TokenUsage(10, 0, 0, 50, 900),
    ),
    (
        "only a total and an output count: input is the rest",
        {"gen_ai.usage.total_tokens": 130, "gen_ai.usage.output_tokens": 30},
        TokenUsage(100, 0, 0, 30, 0),
    ),
    (
        "cache counts without any input count stand alone",
        {"gen_ai.usage.cache_read.input_tokens": 70, "gen_ai.usage.output_tokens": 3},
        TokenUsage(0, 70, 0, 3, 0),
    ),
]


@pytest.mark.parametrize(("convention", "attributes", "expected"), CONVENTIONS, ids=[c[0] for c in CONVENTIONS])
def test_each_attribute_convention_normalizes_to_the_same_disjoint_token_types(
    convention: str, attributes: dict[str, int], expected: TokenUsage
) -> None:
    usage = normalize_attributes(attributes)
    assert usage == expected
    assert all(count >= 0 for count in usage)


def test_cached_tokens_count_once_under_both_conventions_for_the_same_call() -> None:
    # One Anthropic call: 100 fresh input tokens, 3000 read from cache, 500 written, 200 output.
    inclusive = normalize_attributes(  # OTel spec: input_tokens = input + cache_read + cache_creation
        {
            "gen_ai.usage.input_tokens": 3600,
            "gen_ai.usage.cache_read.input_tokens": 3000,
            "gen_ai.usage.cache_creation.input_tokens": 500,
            "gen_ai.usage.output_tokens": 200,
        }
    )
    exclusive = normalize_attributes(  # Anthropic's own usage object copied verbatim
        {
            "gen_ai.usage.input_tokens": 100,
            "gen_ai.usage.cache_read_input_tokens": 3000,
            "gen_ai.usage.cache_creation_input_tokens": 500,
            "gen_ai.usage.output_tokens": 200,
        }
    )
    assert inclusive == exclusive == TokenUsage(100, 3000, 500, 200, 0)
    assert inclusive.total() == 3800


def test_a_provider_configured_as_exclusive_is_not_subtracted_even_when_the_numbers_would_allow_it() -> None:
    attributes = {
        "gen_ai.usage.input_tokens": 5000,
        "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 10,
    }
    assert normalize_attributes(attributes) == TokenUsage(4000, 1000, 0, 10, 0)
    assert normalize_attributes(attributes, cache_in_input=False) == TokenUsage(5000, 1000, 0, 10, 0)


def test_a_provider_configured_as_inclusive_never_goes_below_zero() -> None:
    usage = normalize_tokens(10, 5, cache_read=50, reasoning=9, cache_in_input=True, reasoning_in_output=True)
    assert usage == TokenUsage(0, 50, 0, 0, 9)


def test_reasoning_can_be_declared_outside_the_output_count() -> None:
    usage = normalize_tokens(10, 100, reasoning=40, reasoning_in_output=False)
    assert usage == TokenUsage(10, 0, 0, 100, 40)


def test_a_total_without_cache_tokens_still_settles_where_the_reasoning_is() -> None:
    """Gemini-style counts: output leaves the thoughts out and the total adds them; no cache on the span."""
    usage = normalize_tokens(100, 1000, total_tokens=1300, reasoning=200)
    assert usage == TokenUsage(100, 0, 0, 1000, 200)
    assert normalize_tokens(100, 1000, total_tokens=1100, reasoning=200) == TokenUsage(100, 0, 0, 800, 200)


def test_no_alias_is_listed_under_two_concepts() -> None:
    keys = [key for aliases in ALIASES.values() for key in aliases]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("openai", "openai"),
        ("Anthropic", "anthropic"),
        ("xai", "x_ai"),  # gen_ai.system before 1.37
        ("az.ai.inference", "azure.ai.inference"),  # before 1.35
        ("mistralai", "mistral_ai"),  # OpenInference llm.system
        ("aws.bedrock", "aws.bedrock"),
        ("aws", "aws.bedrock"),  # OpenInference llm.provider names the cloud
        ("azure", "azure.ai.openai"),
        ("azure_ai", "azure.ai.inference"),  # LiteLLM
        ("google", "gcp.gen_ai"),
        ("anthropic.messages", "anthropic"),  # the Vercel AI SDK: provider id and API
        ("openai.responses", "openai"),
        ("mistral.chat", "mistral_ai"),
        ("google.generative-ai", "gcp.gemini"),
        # The Vercel AI SDK's embedding models (ai.model.provider on doEmbed spans)
        ("openai.embedding", "openai"),
        ("azure.embeddings", "azure.ai.openai"),  # @ai-sdk/azure: not .embedding
        ("cohere.textEmbedding", "cohere"),  # @ai-sdk/cohere
        ("google.vertex.embedding", "gcp.vertex_ai"),
        ("azure.ai.openai", "azure.ai.openai"),  # a well-known value with dots stays as it is
        # Every older or vendor spelling, written out (pass 146: one could go missing from the table unseen)
        ("xai", "x_ai"),
        ("az.ai.inference", "azure.ai.inference"),
        ("az.ai.openai", "azure.ai.openai"),
        ("azure_openai", "azure.ai.openai"),
        ("mistralai", "mistral_ai"),
        ("mistral", "mistral_ai"),
        ("vertex_ai", "gcp.vertex_ai"),
        ("vertexai", "gcp.vertex_ai"),
        ("gemini", "gcp.gemini"),
        ("bedrock", "aws.bedrock"),
        ("aws_bedrock", "aws.bedrock"),
        ("watsonx", "ibm.watsonx.ai"),
        ("aws", "aws.bedrock"),
        ("azure", "azure.ai.openai"),
        ("azure_ai", "azure.ai.inference"),
        ("google", "gcp.gen_ai"),
        ("google.generative-ai", "gcp.gemini"),
        ("google.vertex", "gcp.vertex_ai"),
        ("amazon-bedrock", "aws.bedrock"),
        ("azure-openai", "azure.ai.openai"),
        (".chat", ".chat"),  # nothing before the API suffix: kept as it came, not emptied
    ],
)
def test_provider_names_are_normalized_to_the_opentelemetry_well_known_values(raw: str, expected: str) -> None:
    assert normalize_provider(raw) == expected


@pytest.mark.parametrize(
    ("operation", "openinference_kind", "traceloop_kind", "expected"),
    [
        ("chat", None, None, True),
        ("embeddings", None, None, True),
        (None, "LLM", None, True),
        (None, "EMBEDDING", None, True),
        (None, None, None, True),  # a model and no operation: an older instrumentation's model call
        ("invoke_agent", None, None, False),
        ("execute_tool", None, None, False),
        ("fetch_response", None, None, False),
        (None, "CHAIN", None, False),
        (None, "AGENT", None, False),
        (None, None, "workflow", False),
        # The Vercel AI SDK's operation ids: its provider calls are model calls, the functions around them are not
        ("ai.generateText.doGenerate", None, None, True),
        ("ai.streamObject.doStream", None, None, True),
        ("ai.embedMany.doEmbed", None, None, True),
        ("ai.generateText", None, None, False),
        ("ai.embed", None, None, False),
        ("ai.toolCall", None, None, False),
        (None, "llm", None, True),  # OpenInference span kinds in any case
        (None, "Embedding", None, True),
    ],
)
def test_only_model_calls_count_as_llm_requests(
    operation: str | None, openinference_kind: str | None, traceloop_kind: str | None, expected: bool
) -> None:
    assert is_inference(operation, openinference_kind, traceloop_kind) is expected


def test_every_concept_has_aliases_from_the_current_otel_conventions_first() -> None:
    assert ALIASES[Concept.PROVIDER][0] == "gen_ai.provider.name"
    assert ALIASES[Concept.RESPONSE_MODEL][0] == "gen_ai.response.model"
    assert ALIASES[Concept.REQUEST_MODEL][0] == "gen_ai.request.model"
    assert ALIASES[Concept.INPUT][0] == "gen_ai.usage.input_tokens"
    assert ALIASES[Concept.CACHE_WRITE][0] == "gen_ai.usage.cache_write.input_tokens"


def test_the_vercel_ai_sdks_cache_split_is_read() -> None:
    usage = normalize_attributes(
        {
            "gen_ai.usage.input_tokens": 9500,
            "ai.usage.inputTokenDetails.cacheReadTokens": 8000,
            "ai.usage.inputTokenDetails.cacheWriteTokens": 500,
            "gen_ai.usage.output_tokens": 300,
        }
    )
    assert usage == TokenUsage(1000, 8000, 500, 300, 0)


def test_a_total_that_adds_the_cache_in_shows_an_input_count_without_it() -> None:
    """OpenInference's Bedrock Converse spans: prompt = inputTokens, which leaves cache reads and writes out;
    without the total, 3000 >= 2000 would pass for an input holding its cache."""
    attributes = {
        "llm.token_count.prompt": 3000,
        "llm.token_count.prompt_details.cache_read": 2000,
        "llm.token_count.completion": 500,
        "llm.token_count.total": 5500,
    }
    assert normalize_attributes(attributes) == TokenUsage(3000, 2000, 0, 500, 0)
    inclusive = {**attributes, "llm.token_count.total": 3500}  # the same counts with the cache inside the input
    assert normalize_attributes(inclusive) == TokenUsage(1000, 2000, 0, 500, 0)


# The rows of docs/metrics.md's alias table, by the concept they list.
DOCUMENTED_CONCEPTS = {
    "provider": Concept.PROVIDER,
    "response model": Concept.RESPONSE_MODEL,
    "request model": Concept.REQUEST_MODEL,
    "operation": Concept.OPERATION,
    "input tokens": Concept.INPUT,
    "output tokens": Concept.OUTPUT,
    "total tokens": Concept.TOTAL,
    "cache read": Concept.CACHE_READ,
    "cache write": Concept.CACHE_WRITE,
    "reasoning": Concept.REASONING,
}


@pytest.mark.parametrize("row", DOCUMENTED_CONCEPTS)
def test_the_documented_alias_table_lists_what_is_read_in_its_priority_order(row: str) -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    found = re.search(rf"^\| {row} \| (.*) \|$", text, re.MULTILINE)
    assert found, f"docs/metrics.md has no '{row}' row"
    listed = re.findall(r"`([^`]+)`", re.sub(r"\(.*?\)", "", found.group(1)))  # notes in parentheses aside
    assert listed == list(ALIASES[DOCUMENTED_CONCEPTS[row]])


def test_plain_attributes_are_read_as_the_connector_reads_span_attributes() -> None:
    """A count that is negative, not a number or past 2**53 is no count: the next alias is read, as on spans."""
    assert normalize_attributes({"gen_ai.usage.input_tokens": -5, "gen_ai.usage.output_tokens": 3}).input == 0
    assert normalize_attributes({"gen_ai.usage.input_tokens": "n/a", "gen_ai.usage.prompt_tokens": 7}).input == 7
    assert normalize_attributes({"gen_ai.usage.input_tokens": 2.0**60, "llm.token_count.prompt": "12"}).input == 12
    assert normalize_attributes({"gen_ai.usage.input_tokens": True, "gen_ai.usage.prompt_tokens": 4}).input == 4
    assert normalize_attributes({"gen_ai.usage.input_tokens": 2**70, "gen_ai.usage.prompt_tokens": 5}).input == 5


def test_counts_that_equal_their_parts_read_as_including_them() -> None:
    """An input count equal to its cache reads and writes is the inclusive convention with no uncached token, not
    an exclusive one beside them; likewise an output count equal to its reasoning."""
    assert normalize_tokens(100, None, cache_read=100) == TokenUsage(0, 100, 0, 0, 0)
    assert normalize_tokens(100, None, cache_read=60, cache_write=40) == TokenUsage(0, 60, 40, 0, 0)
    assert normalize_tokens(None, 50, reasoning=50) == TokenUsage(0, 0, 0, 0, 50)


def test_a_token_detail_count_is_read_up_to_2_to_the_53() -> None:
    details = [AnyValue(string_value="{'cache_read': 9007199254740992, 'reasoning': 9007199254740994}")]
    assert detail_count(details, [0], "cache_read") == 2.0**53
    assert detail_count(details, [0], "reasoning") is None  # past it a float no longer holds every count


def test_a_total_one_token_off_does_not_settle_the_cache_convention() -> None:
    """A total that matches neither reading within half a token leaves the input as the convention reads it."""
    assert normalize_tokens(100, 50, total_tokens=151, cache_read=1).input == 100
