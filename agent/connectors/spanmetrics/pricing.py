"""LLM prices and the cost of a call: a price table, model-name matching, cost from disjoint token counts.

The table ships as ``agent/pricing.yaml`` (packaged, loaded with ``importlib.resources``); ``config/pricing.yaml``
is the same file where users read and copy it (a test keeps the two identical). Prices are USD per million
tokens for each disjoint token type; a missing ``cache_read``/``cache_write`` price falls back to ``input`` and a
missing ``reasoning`` price to ``output`` (reasoning tokens are billed as output tokens by every provider). A model
may have a long-context tier: other prices for every token of a call whose prompt exceeds a number of tokens.

A model name is looked up as given, then without its provider prefix (``openai/gpt-4o``, Bedrock's
``us.anthropic.…``), then without date or version suffixes (``-2024-08-06``, ``-20241022``, ``@20241022``,
``-v1:0``, ``-0613``, ``-002``), one suffix at a time; the response model is tried before the request model.
A model that matches nothing has no price: its cost is not counted (never guessed) and the caller counts it
as unpriced.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from agent.config.schema import ConfigError, build
from agent.connectors.spanmetrics.config import (
    LongContextPriceConfig,
    ModelPriceConfig,
    PricingConfig,
    model_name_problems,
)
from agent.connectors.spanmetrics.genai import TokenUsage

PACKAGED_TABLE = "pricing.yaml"
_PER_MILLION = 1_000_000.0

# A leading ``region.`` or ``vendor.`` segment made of letters only (Bedrock: ``us.anthropic.claude-…``).
_DOTTED_PREFIX = re.compile(r"^[a-z][a-z-]*\.(?=.)")
_VERSION_SUFFIXES = (
    re.compile(r"-v\d+(:\d+)?$"),  # Bedrock -v1:0, -v2
    re.compile(r"@\d{8}$"),  # Vertex @20241022
    re.compile(r"@latest$|-latest$"),
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # OpenAI -2024-08-06
    re.compile(r"-\d{2}-\d{4}$"),  # Cohere -08-2024
    re.compile(r"-\d{8}$"),  # Anthropic -20241022
    re.compile(r"-\d{4}$"),  # OpenAI -0613, Mistral -2411
    re.compile(r"-\d{3}$"),  # Gemini -002
)
_LOOKUP_CACHE_SIZE = 4096
# A Bedrock cross-region inference profile confined to a geography (billed with a premium for newer models);
# global. profiles are not.
_REGIONAL_PROFILE = re.compile(r"^(?:us|eu|jp|au|apac|us-gov)\.")


class PriceTableError(ValueError):
    """A price table file cannot be used; the message says where and why."""


Rates = tuple[float, float, float, float, float]


def _per_token(cfg: ModelPriceConfig | LongContextPriceConfig) -> Rates:
    per_million = (
        cfg.input,
        cfg.input if cfg.cache_read is None else cfg.cache_read,
        cfg.input if cfg.cache_write is None else cfg.cache_write,
        cfg.output,
        cfg.output if cfg.reasoning is None else cfg.reasoning,
    )
    return tuple(p / _PER_MILLION for p in per_million)  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelPrice:
    """Prices of one model in USD per token, in :class:`TokenUsage` field order; with a long-context tier, the
    rates of every token of a call whose prompt (uncached input + cache reads + cache writes) is longer than
    ``long_context_above`` tokens, as Google and Anthropic bill such calls."""

    model: str
    provider: str
    per_token: Rates
    long_context_above: float = math.inf
    long_context_per_token: Rates | None = None
    regional_premium: float = 0.0

    @classmethod
    def from_config(cls, model: str, cfg: ModelPriceConfig) -> ModelPrice:
        tier = cfg.long_context
        if tier is None:
            return cls(model, cfg.provider, _per_token(cfg), regional_premium=cfg.regional_premium)
        return cls(
            model,
            cfg.provider,
            _per_token(cfg),
            float(tier.above_input_tokens),
            _per_token(tier),
            cfg.regional_premium,
        )

    def regional(self) -> ModelPrice:
        """The prices through a regional inference profile (the model label stays the model's)."""
        factor = 1.0 + self.regional_premium
        long_context = self.long_context_per_token
        return ModelPrice(
            self.model,
            self.provider,
            _scaled(self.per_token, factor),
            self.long_context_above,
            None if long_context is None else _scaled(long_context, factor),
        )

    def cost(self, usage: TokenUsage | tuple[float, float, float, float, float]) -> float:
        """USD for ``usage``: a :class:`TokenUsage`, or the hot path's plain tuple in its order."""
        rates = self.per_token
        if usage[0] + usage[1] + usage[2] > self.long_context_above:
            rates = self.long_context_per_token  # type: ignore[assignment]
        return (
            usage[0] * rates[0] + usage[1] * rates[1] + usage[2] * rates[2] + usage[3] * rates[3] + usage[4] * rates[4]
        )


def _scaled(rates: Rates, factor: float) -> Rates:
    return tuple(rate * factor for rate in rates)  # type: ignore[return-value]


@dataclass(frozen=True)
class TableFile:
    last_checked: str
    models: dict[str, ModelPriceConfig]


def parse_table(text: str, source: str) -> TableFile:
    """Parse a price table (``last_checked``, ``currency: USD``, ``unit: per_million_tokens``, ``models``)."""
    from agent.config.loader import parse_yaml  # here: the config loader imports the components' configs

    try:
        raw, written_twice = parse_yaml(text)  # the config's reading: keys written twice, numbers as written
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: PyYAML's own, e.g. a date like 2024-13-01
        raise PriceTableError(f"{source}: not valid YAML: {exc}") from None
    except (KeyError, IndexError, AttributeError, TypeError) as exc:
        # PyYAML's own, for a tagged value it has no reading of: `!!bool maybe`, `!!int ''`, `!!timestamp x`
        raise PriceTableError(f"{source}: not valid YAML: a tagged value it cannot read ({exc!r})") from None
    except RecursionError:
        raise PriceTableError(f"{source}: not valid YAML: nested too deeply") from None
    if not isinstance(raw, Mapping):
        raise PriceTableError(f"{source}: must be a mapping with last_checked and models")
    problems: list[str] = [str(e) for e in written_twice]
    for key in raw:
        if key not in ("last_checked", "currency", "unit", "models"):
            problems.append(f"{key}: unknown field; expected last_checked, currency, unit, models")
    if raw.get("currency", "USD") != "USD":
        problems.append("currency: only USD is supported")
    if raw.get("unit", "per_million_tokens") != "per_million_tokens":
        problems.append("unit: must be per_million_tokens")
    if "last_checked" not in raw:
        problems.append("last_checked: is required (the date the prices were last checked)")
    models_raw = raw.get("models")
    if not isinstance(models_raw, Mapping):
        problems.append("models: must be a mapping of model names to prices")
        models_raw = {}
    errors: list[ConfigError] = []
    models: dict[str, ModelPriceConfig] = {}
    for name, body in models_raw.items():
        price = build(ModelPriceConfig, body, f"models.{name}", errors)
        if price is not None:
            models[str(name).strip().lower()] = price
    problems += [str(e) for e in errors]
    problems += [f"{path}: {message}" for path, message in model_name_problems(models_raw)]
    if problems:
        raise PriceTableError(f"{source}: " + "; ".join(problems))
    return TableFile(str(raw["last_checked"]), models)


def load_table_file(path: str) -> TableFile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PriceTableError(f"cannot read price table {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise PriceTableError(f"price table {path} is not UTF-8 text: {exc}") from None
    return parse_table(text, path)


def packaged_table() -> TableFile:
    return parse_table(resources.files("agent").joinpath(PACKAGED_TABLE).read_text(), "agent/pricing.yaml")


def candidates(model: str) -> Iterator[str]:
    """Names to look ``model`` up by, most specific first."""
    name = model.strip().lower()
    if not name:
        return
    yield name
    base = name.rsplit("/", 1)[-1]
    while _DOTTED_PREFIX.match(base):
        base = _DOTTED_PREFIX.sub("", base, count=1)
    if base != name:
        yield base
    while True:
        for pattern in _VERSION_SUFFIXES:
            stripped = pattern.sub("", base)
            if stripped != base and stripped:
                break
        else:
            return
        base = stripped
        yield base


def _override(merged: dict[str, ModelPriceConfig], models: Mapping[str, ModelPriceConfig]) -> None:
    """An entry replaces the one it overrides whole (a negotiated price is not the list's long-context tier), but
    for its provider when it names none: the provider labels the calls of spans that name none themselves, and a
    price override must not take it off them."""
    for name, price in models.items():
        before = merged.get(name)
        if before is not None and not price.provider and before.provider:
            price = replace(price, provider=before.provider)
        merged[name] = price


class PriceTable:
    """Model prices with cached name matching. Built once per connector; read on the hot path."""

    def __init__(self, prices: Mapping[str, ModelPrice], last_checked: str = "") -> None:
        self._prices = dict(prices)
        self.last_checked = last_checked
        self._lookups: dict[tuple[str, str], ModelPrice | None] = {}

    @classmethod
    def from_config(cls, cfg: PricingConfig) -> PriceTable:
        merged: dict[str, ModelPriceConfig] = {}
        last_checked = ""
        if cfg.packaged:
            table = packaged_table()
            merged.update(table.models)
            last_checked = table.last_checked
        if cfg.file:
            table = load_table_file(cfg.file)
            _override(merged, table.models)
            last_checked = table.last_checked
        _override(merged, {name.strip().lower(): price for name, price in cfg.models.items()})
        return cls({name: ModelPrice.from_config(name, price) for name, price in merged.items()}, last_checked)

    def __len__(self) -> int:
        return len(self._prices)

    def __contains__(self, model: object) -> bool:
        return model in self._prices

    def lookup(self, response_model: str, request_model: str = "") -> ModelPrice | None:
        key = (response_model, request_model)
        try:
            return self._lookups[key]
        except KeyError:
            pass
        found = self._match(response_model) or self._match(request_model)
        if len(self._lookups) >= _LOOKUP_CACHE_SIZE:
            self._lookups.clear()  # model names are few; a flood of distinct ones must not grow memory
        self._lookups[key] = found
        return found

    def _match(self, model: str) -> ModelPrice | None:
        for name in candidates(model):
            price = self._prices.get(name)
            if price is not None:
                if price.regional_premium and _REGIONAL_PROFILE.match(model.strip().lower().rsplit("/", 1)[-1]):
                    return price.regional()
                return price
        return None

    def describe(self) -> dict[str, Any]:
        return {"models": len(self._prices), "last_checked": self.last_checked}
