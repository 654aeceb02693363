"""Attribute rules: keep traces with a span or resource attribute matching a string, regex, range or boolean.

A matching trace is kept with the rule's probability (100% by default), consistently by the trace's randomness
(its explicit ``rv``, else its trace id).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from agent.otlp.probability import threshold_for_percentage
from agent.processors.tail_sampling.buffer import BufferedTrace
from agent.processors.tail_sampling.config import AttributeRuleConfig
from agent.processors.tail_sampling.policies import EvaluationContext

Matcher = Callable[[Any], bool]
"""Tests one ``AnyValue``."""


def build_matcher(rule: AttributeRuleConfig) -> Matcher:
    if rule.values:
        allowed = frozenset(rule.values)
        return lambda v: v.WhichOneof("value") == "string_value" and v.string_value in allowed
    if rule.regex is not None:
        pattern = re.compile(rule.regex)
        return lambda v: v.WhichOneof("value") == "string_value" and pattern.fullmatch(v.string_value) is not None
    if rule.bool_value is not None:
        wanted = rule.bool_value
        return lambda v: v.WhichOneof("value") == "bool_value" and v.bool_value is wanted
    low = float("-inf") if rule.min_value is None else rule.min_value
    high = float("inf") if rule.max_value is None else rule.max_value

    def in_range(v: Any) -> bool:
        kind = v.WhichOneof("value")
        if kind == "int_value":
            return low <= v.int_value <= high
        if kind == "double_value":
            return low <= v.double_value <= high
        return False

    return in_range


class AttributePolicy:
    def __init__(self, rule: AttributeRuleConfig) -> None:
        self.name = rule.name
        self.retention_class = rule.retention_class
        self._keys = (rule.key, *rule.also_keys)
        self._key_set = frozenset(self._keys)
        self._matches = build_matcher(rule)
        self._on_resource = rule.match_on in ("any", "resource")
        self._on_span = rule.match_on in ("any", "span")
        self._threshold = threshold_for_percentage(rule.percentage)

    def threshold(self, trace: BufferedTrace, context: EvaluationContext) -> int | None:
        if self._on_resource and self._resource_matches(trace, context):
            return self._threshold
        if self._on_span and self._span_matches(trace):
            return self._threshold
        return None

    def _resource_matches(self, trace: BufferedTrace, context: EvaluationContext) -> bool:
        for rs, _, _ in trace.fragments():
            attributes = context.resource_attributes(rs)
            for key in self._keys:
                value = attributes.get(key)
                if value is not None and self._matches(value):
                    return True
        return False

    def _span_matches(self, trace: BufferedTrace) -> bool:
        keys, matches = self._key_set, self._matches
        for _, span in trace.iter_spans():
            for kv in span.attributes:
                if kv.key in keys and matches(kv.value):
                    return True
        return False
