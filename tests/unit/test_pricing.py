"""The price table: shipped and packaged, model-name matching, overrides, cost of disjoint token counts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from agent.config.loader import load_text
from agent.config.schema import ConfigInvalid
from agent.connectors.spanmetrics.config import LongContextPriceConfig, ModelPriceConfig, PricingConfig
from agent.connectors.spanmetrics.genai import TokenUsage
from agent.connectors.spanmetrics.pricing import (
    ModelPrice,
    PriceTable,
    PriceTableError,
    candidates,
    packaged_table,
    parse_table,
)
from tests.helpers import REPO


def table(**models: ModelPriceConfig) -> PriceTable:
    return PriceTable({name: ModelPrice.from_config(name, cfg) for name, cfg in models.items()})


def test_the_user_facing_price_table_and_the_packaged_one_are_identical() -> None:
    assert (REPO / "config" / "pricing.yaml").read_bytes() == (REPO / "agent" / "pricing.yaml").read_bytes()


def test_the_packaged_table_loads_with_a_last_checked_date_and_sane_prices() -> None:
    loaded = packaged_table()
    assert len(loaded.last_checked) == 10 and loaded.last_checked[4] == "-"
    assert len(loaded.models) >= 30
    for name, price in loaded.models.items():
        assert price.input >= 0 and price.output >= 0, name
        if price.cache_read is not None:
            assert price.cache_read <= price.input, f"{name}: a cache read never costs more than fresh input"
    raw = yaml.safe_load((REPO / "config" / "pricing.yaml").read_text())
    assert raw["currency"] == "USD" and raw["unit"] == "per_million_tokens"


def test_the_packaged_table_is_found_through_the_package_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    prices = PriceTable.from_config(PricingConfig())
    assert prices.lookup("gpt-4o") is not None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", ["gpt-4o"]),
        ("openai/gpt-4o-2024-08-06", ["openai/gpt-4o-2024-08-06", "gpt-4o-2024-08-06", "gpt-4o"]),
        ("claude-3-5-sonnet@20241022", ["claude-3-5-sonnet@20241022", "claude-3-5-sonnet"]),
        (
            "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
            [
                "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
                "claude-3-5-sonnet-20241022-v2:0",
                "claude-3-5-sonnet-20241022",
                "claude-3-5-sonnet",
            ],
        ),
        (
            "meta.llama3-70b-instruct-v1:0",
            ["meta.llama3-70b-instruct-v1:0", "llama3-70b-instruct-v1:0", "llama3-70b-instruct"],
        ),
        ("GPT-4-0613", ["gpt-4-0613", "gpt-4"]),
        ("gpt-4.1-mini", ["gpt-4.1-mini"]),
        ("gemini-1.5-pro-002", ["gemini-1.5-pro-002", "gemini-1.5-pro"]),
        ("", []),
        # Pass 146: each prefix and suffix form, one by one
        ("command-r-08-2024", ["command-r-08-2024", "command-r"]),  # Cohere's month-year
        ("openrouter/openai/gpt-4o", ["openrouter/openai/gpt-4o", "gpt-4o"]),  # routers nest providers
        (
            "us-gov.anthropic.claude-3-5-sonnet-20240620-v1:0",
            [
                "us-gov.anthropic.claude-3-5-sonnet-20240620-v1:0",
                "claude-3-5-sonnet-20240620-v1:0",
                "claude-3-5-sonnet-20240620",
                "claude-3-5-sonnet",
            ],
        ),
    ],
)
def test_model_names_are_tried_exact_then_without_prefix_then_without_version_suffixes(
    model: str, expected: list[str]
) -> None:
    assert list(candidates(model)) == expected


def test_an_exact_dated_entry_wins_over_the_undated_family_price() -> None:
    prices = PriceTable.from_config(PricingConfig())
    dated = prices.lookup("gpt-4o-2024-05-13")
    other_date = prices.lookup("gpt-4o-2024-08-06")
    assert dated is not None and other_date is not None
    assert dated.model == "gpt-4o-2024-05-13"
    assert other_date.model == "gpt-4o"
    assert dated.per_token != other_date.per_token


def test_the_response_model_is_matched_before_the_request_model() -> None:
    prices = table(
        **{
            "gpt-4": ModelPriceConfig(input=30, output=60),
            "gpt-4o": ModelPriceConfig(input=2.5, output=10),
        }
    )
    found = prices.lookup("gpt-4-0613", "gpt-4o")
    assert found is not None and found.model == "gpt-4"
    fallback = prices.lookup("my-azure-deployment", "gpt-4o")
    assert fallback is not None and fallback.model == "gpt-4o"


def test_an_unknown_model_gets_no_price_at_all() -> None:
    prices = PriceTable.from_config(PricingConfig())
    assert prices.lookup("acme-llm-7b", "acme-llm") is None
    assert prices.lookup("", "") is None


def test_cost_is_the_sum_of_each_disjoint_token_type_times_its_price_per_million() -> None:
    price = ModelPrice.from_config(
        "m", ModelPriceConfig(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75, reasoning=20.0)
    )
    usage = TokenUsage(input=1000, cache_read=20_000, cache_write=4000, output=500, reasoning=250)
    expected = (1000 * 3.0 + 20_000 * 0.3 + 4000 * 3.75 + 500 * 15.0 + 250 * 20.0) / 1_000_000
    assert math.isclose(price.cost(usage), expected, rel_tol=1e-12)


def test_missing_cache_and_reasoning_prices_fall_back_to_the_input_and_output_prices() -> None:
    price = ModelPrice.from_config("m", ModelPriceConfig(input=2.0, output=8.0))
    assert price.per_token == (2e-6, 2e-6, 2e-6, 8e-6, 8e-6)


def test_a_long_context_tier_prices_every_token_of_a_call_whose_prompt_exceeds_its_size() -> None:
    tier = LongContextPriceConfig(above_input_tokens=200_000, input=6.0, cache_read=0.6, cache_write=7.5, output=22.5)
    price = ModelPrice.from_config(
        "m", ModelPriceConfig(input=3.0, cache_read=0.3, cache_write=3.75, output=15.0, long_context=tier)
    )
    # The prompt is uncached input + cache reads + cache writes: 150k + 40k + 10k = 200k, not above the size.
    at_size = TokenUsage(input=150_000, cache_read=40_000, cache_write=10_000, output=1000, reasoning=0)
    assert math.isclose(price.cost(at_size), (150_000 * 3 + 40_000 * 0.3 + 10_000 * 3.75 + 1000 * 15) / 1e6)
    above = at_size._replace(input=150_001)
    assert math.isclose(price.cost(above), (150_001 * 6 + 40_000 * 0.6 + 10_000 * 7.5 + 1000 * 22.5) / 1e6)
    fallback = ModelPrice.from_config(
        "m", ModelPriceConfig(input=1.0, output=2.0, long_context=LongContextPriceConfig(1, input=4.0, output=8.0))
    )
    assert fallback.long_context_per_token == (4e-6, 4e-6, 4e-6, 8e-6, 8e-6)  # the tier's own input and output


def test_the_packaged_long_context_tiers_double_gemini_2_5_pro_and_claude_sonnet_4_above_200k_tokens() -> None:
    prices = PriceTable.from_config(PricingConfig())
    long_prompt = TokenUsage(input=250_000, cache_read=0, cache_write=0, output=0, reasoning=0)
    for model, short_input, long_input in (
        ("gemini-2.5-pro", 1.25, 2.5),
        ("claude-sonnet-4-5-20250929", 3.0, 6.0),
        ("us.anthropic.claude-sonnet-4-20250514-v1:0", 3.0, 6.0),
    ):
        price = prices.lookup(model)
        assert price is not None, model
        assert price.per_token[0] == pytest.approx(short_input / 1e6)
        assert price.cost(long_prompt) == pytest.approx(250_000 * long_input / 1e6)


def test_a_long_context_tier_without_its_size_is_a_config_error_with_its_path() -> None:
    with pytest.raises(PriceTableError) as caught:
        parse_table("last_checked: x\nmodels:\n  m: {input: 1, output: 2, long_context: {input: 2, output: 4}}\n", "t")
    assert "models.m.long_context.above_input_tokens" in str(caught.value)


def test_inline_prices_override_and_extend_the_packaged_table(tmp_path: Path) -> None:
    extra = tmp_path / "prices.yaml"
    extra.write_text(
        "last_checked: '2026-01-02'\n"
        "models:\n  acme-llm: {input: 1.0, output: 2.0}\n  gpt-4o: {input: 9.0, output: 9.0}\n"
    )
    prices = PriceTable.from_config(
        PricingConfig(file=str(extra), models={"gpt-4o": ModelPriceConfig(input=4.0, output=4.0)})
    )
    acme, gpt = prices.lookup("acme-llm-2026-01-01"), prices.lookup("gpt-4o")
    assert acme is not None and acme.per_token[0] == pytest.approx(1e-6)
    assert gpt is not None and gpt.per_token[0] == pytest.approx(4e-6)  # inline wins over the file
    assert prices.lookup("claude-3-5-sonnet") is not None  # the packaged table is still there
    assert prices.last_checked == "2026-01-02"


def test_an_override_naming_no_provider_keeps_the_provider_and_nothing_else_of_the_entry_it_replaces() -> None:
    """The docs' negotiated-price example (`gpt-4o: {input: 2.5, ...}`) took the `provider` label off every call
    of a span naming no provider (pass 109). The tiers go with the rest: a negotiated price is not the list's."""
    prices = PriceTable.from_config(
        PricingConfig(
            models={
                "gpt-4o": ModelPriceConfig(input=2.5, output=10.0),
                "gpt-4o-mini": ModelPriceConfig(input=0.1, output=0.5, provider="azure.ai.openai"),
                "claude-sonnet-4-5": ModelPriceConfig(input=2.7, output=13.5),
            }
        )
    )
    packaged = PriceTable.from_config(PricingConfig())
    gpt, mini, sonnet = (prices.lookup(m) for m in ("gpt-4o", "gpt-4o-mini", "us.claude-sonnet-4-5"))
    assert gpt is not None and gpt.provider == "openai" and gpt.per_token[0] == pytest.approx(2.5e-6)
    assert mini is not None and mini.provider == "azure.ai.openai"
    listed = packaged.lookup("us.claude-sonnet-4-5")
    assert listed is not None and listed.long_context_per_token is not None
    assert listed.per_token[0] == pytest.approx(3.3e-6)  # the listed 3.0, and 10% through a regional profile
    assert sonnet is not None and sonnet.provider == listed.provider
    assert sonnet.long_context_per_token is None and sonnet.per_token[0] == pytest.approx(2.7e-6)


def config_with(pricing: dict[str, object]) -> str:
    return yaml.safe_dump(
        {
            "receivers": {"otlp": {}},
            "connectors": {"spanmetrics": {"pricing": pricing}},
            "exporters": {"prometheus": {}},
            "service": {
                "pipelines": {
                    "traces": {"receivers": ["otlp"], "exporters": ["spanmetrics"]},
                    "metrics": {"receivers": ["spanmetrics"], "exporters": ["prometheus"]},
                }
            },
        },
        sort_keys=False,
    )


def test_model_names_matching_nothing_or_the_same_model_twice_are_config_errors(tmp_path: Path) -> None:
    """Names are matched in lower case: of gpt-4o and GPT-4o the last won in silence, and so did the second of a
    key written twice in a price file; an empty name matched nothing (pass 111)."""
    table = tmp_path / "prices.yaml"
    table.write_text(
        "last_checked: '2026-01-01'\nmodels:\n  gpt-4o: {input: 1, output: 2}\n  gpt-4o: {input: 3, output: 4}\n"
        "  GPT-4o-mini: {input: 1, output: 1}\n  gpt-4o-mini: {input: 1, output: 1}\n"
    )
    models = {"gpt-4o": {"input": 1, "output": 2}, "GPT-4o": {"input": 30, "output": 60}, "": {"input": 1, "output": 1}}
    with pytest.raises(ConfigInvalid) as caught:
        load_text(config_with({"file": str(table), "models": models}))
    message = str(caught.value)
    assert "pricing.models.GPT-4o: names the same model as gpt-4o (names are matched in lower case)" in message
    assert "pricing.models.'': must name a model" in message
    assert "models.gpt-4o: written twice in one mapping (lines 3 and 4)" in message
    assert "models.gpt-4o-mini: names the same model as GPT-4o-mini" in message


def test_a_regional_premium_is_a_fraction() -> None:
    with pytest.raises(ConfigInvalid, match=r"models\.acme\.regional_premium: must be at most 1"):
        load_text(config_with({"models": {"acme": {"input": 1, "output": 1, "regional_premium": 10}}}))


def test_the_packaged_table_can_be_left_out() -> None:
    prices = PriceTable.from_config(
        PricingConfig(packaged=False, models={"house-model": ModelPriceConfig(input=1, output=1)})
    )
    assert len(prices) == 1
    assert prices.lookup("gpt-4o") is None


def test_a_broken_price_file_is_a_config_error_naming_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "prices.yaml"
    bad.write_text("models:\n  acme: {input: -1, outptu: 2}\n")
    config = f"""
receivers: {{otlp: {{}}}}
connectors: {{spanmetrics: {{pricing: {{file: {bad}}}}}}}
exporters: {{prometheus: {{}}}}
service:
  pipelines:
    traces: {{receivers: [otlp], exporters: [spanmetrics]}}
    metrics: {{receivers: [spanmetrics], exporters: [prometheus]}}
"""
    with pytest.raises(ConfigInvalid) as caught:
        load_text(config)
    message = str(caught.value)
    assert "connectors.spanmetrics.pricing.file" in message
    assert "last_checked: is required" in message
    assert "models.acme.outptu: unknown field" in message
    assert "models.acme.input: must be at least 0" in message


def test_a_missing_price_file_is_reported_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(PriceTableError, match="cannot read price table"):
        PriceTable.from_config(PricingConfig(file=str(tmp_path / "nope.yaml")))


def test_a_table_in_another_currency_is_refused() -> None:
    with pytest.raises(PriceTableError, match="only USD"):
        parse_table("last_checked: x\ncurrency: EUR\nmodels: {}\n", "t.yaml")


def test_lookups_are_cached_and_the_cache_stays_bounded() -> None:
    prices = PriceTable.from_config(PricingConfig())
    for index in range(10_000):
        prices.lookup(f"unknown-{index}")
    assert len(prices._lookups) <= 4096


def test_a_price_file_the_yaml_parser_chokes_on_or_not_utf8_is_a_price_table_error(tmp_path: Path) -> None:
    with pytest.raises(PriceTableError, match="not valid YAML"):
        parse_table("last_checked: 2024-13-01\nmodels: {}\n", "t.yaml")  # an impossible date
    binary = tmp_path / "prices.yaml"
    binary.write_bytes(b"last_checked: x\n# \xff\n")
    with pytest.raises(PriceTableError, match="not UTF-8"):
        PriceTable.from_config(PricingConfig(file=str(binary)))


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("mistral-large-2407", "mistral-large-2407"),
        ("mistral.mistral-large-2402-v1:0", "mistral-large-2402"),
        ("mistral-small-2402", "mistral-small-2402"),
        ("gpt-3.5-turbo-1106", "gpt-3.5-turbo-1106"),
        ("gpt-3.5-turbo-0613", "gpt-3.5-turbo-0613"),  # retired ones too (pass 81)
        ("gpt-3.5-turbo-0301", "gpt-3.5-turbo-0301"),
        ("azure/gpt-35-turbo-1106", "gpt-35-turbo-1106"),
        ("gpt-35-turbo-0613", "gpt-35-turbo-0613"),
        ("mistral-medium-2505", "mistral-medium-2505"),
        ("mistral-medium-2508", "mistral-medium-2508"),
        ("mistral/mistral-medium-2312", "mistral-medium-2312"),
        ("mistral-large-2512", "mistral-large"),  # a snapshot without its own entry: the current model
    ],
)
def test_older_snapshots_priced_differently_match_their_own_entry(model: str, entry: str) -> None:
    found = PriceTable.from_config(PricingConfig()).lookup(model)
    assert found is not None and found.model == entry


@pytest.mark.parametrize(
    ("model", "entry", "input_per_million"),
    [
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5", 3.3),  # a regional profile: +10%
        ("eu.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5", 1.1),
        ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5", 3.0),  # global: list price
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5", 3.0),
        ("us.anthropic.claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet", 3.0),  # older: same everywhere
        ("mistral-small-latest", "mistral-small-latest", 0.15),  # Mistral Small 3.2, not mistral-small
        ("mistral-medium-2505", "mistral-medium-2505", 0.4),  # Mistral Medium 3, not 3.5 (mistral-medium)
        ("mistral-medium-3", "mistral-medium-3", 0.4),
        ("mistral-medium-latest", "mistral-medium", 1.5),
        ("gpt-3.5-turbo-0613", "gpt-3.5-turbo-0613", 1.5),
        ("gpt-35-turbo", "gpt-35-turbo", 0.5),  # Azure OpenAI's name
        ("gpt-5.4-mini-2026-03-05", "gpt-5.4-mini", 0.75),  # current models are priced, not left unpriced
        ("us.anthropic.claude-opus-5-v1:0", "claude-opus-5", 5.5),
        ("gemini-3.5-flash", "gemini-3.5-flash", 1.5),
        ("deepseek-v4-pro", "deepseek-v4-pro", 1.32),
        ("azure/gpt-35-turbo-0125", "gpt-35-turbo", 0.5),
    ],
)
def test_regional_profiles_and_provider_specific_names_get_their_own_prices(
    model: str, entry: str, input_per_million: float
) -> None:
    price = PriceTable.from_config(PricingConfig()).lookup(model)
    assert price is not None and price.model == entry
    assert math.isclose(price.per_token[0] * 1e6, input_per_million)


@pytest.mark.parametrize(
    "value", ["!!bool maybe", "!!int ''", "!!float ''", "!!timestamp x", "!!timestamp '2024-01-01T'"]
)
def test_a_price_file_with_a_tag_yaml_cannot_read_is_a_price_table_error_not_a_crash(value: str) -> None:
    with pytest.raises(PriceTableError, match=r"x\.yaml: not valid YAML: a tagged value it cannot read"):
        parse_table(f"last_checked: {value}\nmodels: {{}}\n", "x.yaml")


@pytest.mark.parametrize(
    ("model", "input_price"),
    [
        ("anthropic.claude-opus-4-6", 5.0),  # in-region: the list price
        ("global.anthropic.claude-opus-4-6", 5.0),  # global profiles are not regional
        ("us.anthropic.claude-opus-4-6", 5.5),
        ("apac.anthropic.claude-opus-4-6", 5.5),
        ("us-gov.anthropic.claude-opus-4-6", 5.5),
        ("bedrock/us.anthropic.claude-opus-4-6", 5.5),  # LiteLLM's provider prefix before the profile
    ],
)
def test_a_regional_inference_profile_pays_its_premium_wherever_it_is_named(model: str, input_price: float) -> None:
    price = PriceTable.from_config(PricingConfig()).lookup(model)
    assert price is not None and price.model == "claude-opus-4-6"
    assert price.cost((1_000_000, 0, 0, 0, 0)) == pytest.approx(input_price)
