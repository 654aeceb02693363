"""Configuration of the ``tail_sampling`` processor: timing, memory bounds, decision caches and policies.

Policies are fixed sections (``errors``, ``critical_services``, ``latency``, ``probabilistic``) plus a list of
``attributes`` rules; each names the retention class it gives a trace. Whether those classes exist is checked
against ``service.retention.classes`` by the factory's ``cross_check``, which sees the whole agent config.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agent.config.schema import Duration, setting

BUILTIN_POLICY_NAMES = ("errors", "critical_services", "latency", "probabilistic")
_POLICY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ErrorsPolicyConfig:
    enabled: bool = setting(True, doc="Keep every trace with a span whose status is ERROR.")
    retention_class: str = setting("error", doc="Retention class of traces this policy keeps.")
    error_type: bool = setting(
        False,
        doc="Also count a span carrying an `error.type` attribute as an error. Semantic conventions already set "
        "status ERROR on such spans; turn this on for instrumentations that only set the attribute.",
    )
    http_server_errors: bool = setting(
        False, doc="Also count a span with `http.response.status_code` >= 500 as an error, whatever its status."
    )
    error_logs: bool = setting(
        False,
        doc="Also count a log record of severity ERROR or above held with the trace as an error (a logs pipeline "
        "shares this processor): a handled exception logged without setting its span's status. Records that "
        "arrive after the trace is decided do not change the decision.",
    )
    keep_late_failures: bool = setting(
        True,
        doc="A span with status ERROR arriving after its trace was dropped (a workflow failing, or timing out, "
        "after `decision_wait`) keeps the trace from then on, with this policy's class: it and the trace's later "
        "spans are exported, the spans dropped before are gone. Off: late spans follow the drop, as in the "
        "Collector.",
    )


@dataclass(frozen=True)
class CriticalServicesPolicyConfig:
    services: list[str] = setting(
        doc="Keep every trace with a span whose resource `service.name` is one of these (empty: policy off).",
        default_factory=list,
    )
    retention_class: str = setting("critical", doc="Retention class of traces this policy keeps.")


@dataclass(frozen=True)
class LatencyPolicyConfig:
    threshold: Duration | None = setting(
        None, doc="Keep traces lasting at least this long (latest span end - earliest span start); unset: off."
    )
    retention_class: str = setting("standard", doc="Retention class of traces this policy keeps.")

    def validate(self) -> Iterator[tuple[str, str]]:
        if self.threshold is not None and float(self.threshold) <= 0:
            # Elsewhere 0s turns a setting off; here it would keep every trace, sampling nothing away.
            yield "threshold", "must be longer than 0s (0s keeps every trace); leave it unset to turn the policy off"


@dataclass(frozen=True)
class ProbabilisticPolicyConfig:
    enabled: bool = setting(True, doc="Keep a consistent share of all other traces.")
    percentage: float = setting(
        10.0,
        doc="Share of traces kept, decided by the trace id's randomness (OTEP 235), so every agent and SDK "
        "sampling consistently at this rate keeps the same traces.",
        minimum=0,
        maximum=100,
    )
    retention_class: str = setting("standard", doc="Retention class of traces this policy keeps.")


@dataclass(frozen=True)
class AttributeRuleConfig:
    name: str = setting(doc="Policy name, recorded as `sampling.policy` and in metrics (lower_snake_case).")
    key: str = setting(doc="Attribute key to test, e.g. `deployment.environment`.")
    also_keys: list[str] = setting(
        doc="Further keys tested like `key`: the same concept under another semantic-convention version, e.g. "
        "`deployment.environment.name`.",
        default_factory=list,
    )
    match_on: Literal["any", "span", "resource"] = setting(
        "any", doc="Test span attributes, resource attributes, or both."
    )
    values: list[str] = setting(doc="String matcher: the attribute equals one of these.", default_factory=list)
    regex: str | None = setting(None, doc="String matcher: the whole attribute value matches this regex.")
    min_value: float | None = setting(None, doc="Numeric matcher: value >= this (inclusive).")
    max_value: float | None = setting(None, doc="Numeric matcher: value <= this (inclusive).")
    bool_value: bool | None = setting(None, doc="Boolean matcher: the attribute is this boolean.")
    percentage: float = setting(
        100.0, doc="Share of matching traces kept (consistent, by trace id randomness).", minimum=0, maximum=100
    )
    retention_class: str = setting("standard", doc="Retention class of traces this rule keeps.")

    def validate(self) -> Iterator[tuple[str, str]]:
        if not _POLICY_NAME.match(self.name):
            yield "name", "must be lower_snake_case"
        elif self.name in BUILTIN_POLICY_NAMES or self.name == "none":
            yield "name", f"{self.name} is a reserved policy name"
        if not self.key:
            yield "key", "must not be empty"
        for index, key in enumerate(self.also_keys):
            if not key:
                yield f"also_keys[{index}]", "must not be empty"
        matchers = [
            bool(self.values),
            self.regex is not None,
            self.min_value is not None or self.max_value is not None,
            self.bool_value is not None,
        ]
        if sum(matchers) != 1:
            yield "", "set exactly one matcher: values, regex, min_value/max_value or bool_value"
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                yield "regex", f"not a valid regular expression: {exc}"
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            yield "max_value", "must not be below min_value"


@dataclass(frozen=True)
class PoliciesConfig:
    errors: ErrorsPolicyConfig = setting(doc="Errors policy.", default_factory=ErrorsPolicyConfig)
    critical_services: CriticalServicesPolicyConfig = setting(
        doc="Critical services policy.", default_factory=CriticalServicesPolicyConfig
    )
    latency: LatencyPolicyConfig = setting(doc="Latency policy.", default_factory=LatencyPolicyConfig)
    attributes: list[AttributeRuleConfig] = setting(
        doc="Attribute rules, e.g. keep 100% of `deployment.environment=development`.", default_factory=list
    )
    probabilistic: ProbabilisticPolicyConfig = setting(
        doc="The default for everything else.", default_factory=ProbabilisticPolicyConfig
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        seen: set[str] = set()
        for index, rule in enumerate(self.attributes):
            if rule.name in seen:
                yield f"attributes[{index}].name", f"policy name {rule.name} is used twice"
            seen.add(rule.name)

    def retention_classes(self) -> Iterator[tuple[str, str]]:
        """``(relative_path, class)`` for every class a policy may give, for the cross-check."""
        yield "errors.retention_class", self.errors.retention_class
        yield "critical_services.retention_class", self.critical_services.retention_class
        yield "latency.retention_class", self.latency.retention_class
        yield "probabilistic.retention_class", self.probabilistic.retention_class
        for index, rule in enumerate(self.attributes):
            yield f"attributes[{index}].retention_class", rule.retention_class


@dataclass(frozen=True)
class DecisionCacheConfig:
    kept_size: int = setting(
        100_000,
        doc="Kept trace ids remembered (LRU, about 200 bytes each) so late spans are forwarded at once.",
        minimum=1,
        maximum=10_000_000,  # 2 GB when full
    )
    dropped_size: int = setting(
        1_000_000,
        doc="Dropped trace ids remembered at least (two generations of a cuckoo filter, about 10 bytes per id in "
        "all) so late spans are dropped at once. Its memory is taken at start.",
        minimum=1,
        maximum=100_000_000,  # 1 GB, allocated at start: a typo of a few zeros must not fail the start
    )


DEFAULT_GRACE_AFTER_ROOT = 6.0  # seconds: longer than the SDKs' 5s export interval


@dataclass(frozen=True)
class TailSamplingConfig:
    decision_wait: Duration = setting(
        Duration(30.0),
        doc="Decide a trace this long after its first span arrived, unless its root span came earlier: the longest "
        "a workflow can run and still be decided on all its spans (the Collector's default, 30s).",
        positive=True,
    )
    decision_wait_after_root: Duration = setting(
        Duration(DEFAULT_GRACE_AFTER_ROOT),
        doc="Decide earlier, this long after the root span (no parent) arrived; 0s waits for decision_wait only. "
        "Longer than the SDKs' 5s export interval, so that spans another process exported on its own timer still "
        "find their trace.",
    )
    tick_interval: Duration = setting(
        Duration(0.1),
        doc="How often due traces are decided (in slices of about 1024 spans, each released as one request).",
        positive=True,
    )
    max_traces: int = setting(
        20_000, doc="Most traces buffered; past it the oldest are decided early (forced).", minimum=1
    )
    max_buffered_bytes: int = setting(
        128 * 1024 * 1024,
        doc="Most memory held: buffered traces plus decided data the next stage refused, estimated as 3.5 times "
        "their protobuf size (what parsed spans take). Past it the oldest traces are decided early; while refused "
        "data fills it, new data is refused (retryable).",
        minimum=1024,
    )
    max_spans_per_trace: int = setting(
        10_000,
        doc="A trace reaching this many spans is decided at once; its later spans follow that decision, so one "
        "enormous trace never holds up the others.",
        minimum=1,
    )
    max_bytes_per_trace: int = setting(
        16 * 1024 * 1024,
        doc="A trace reaching this much memory (estimated as for `max_buffered_bytes`: long prompts in its spans), or "
        "a quarter of `max_buffered_bytes` if "
        "that is less, is decided at once, like one reaching `max_spans_per_trace`: otherwise the byte bound would "
        "decide every other trace early to make room for it.",
        minimum=1024,
    )
    max_batch_bytes: int = setting(
        2 * 1024 * 1024,
        doc="Most bytes per export request released downstream; traces decided together are split only between "
        "traces, never inside one.",
        minimum=1024,
    )
    log_error_class: str = setting(
        "error", doc="Retention class of log records with severity ERROR or above not held with a kept trace."
    )
    decision_cache: DecisionCacheConfig = setting(
        doc="Decisions remembered after a trace's data is released.", default_factory=DecisionCacheConfig
    )
    policies: PoliciesConfig = setting(doc="Sampling policies; any keep wins.", default_factory=PoliciesConfig)

    @staticmethod
    def prepare_raw(raw: Mapping[str, Any]) -> Mapping[str, Any]:
        """A ``decision_wait`` shorter than the default grace after the root, written without a grace of its own,
        makes the grace that long: the default must not turn a config that set only the wait into an error."""
        if "decision_wait_after_root" in raw or "decision_wait" not in raw:
            return raw
        try:
            wait = Duration.parse(str(raw["decision_wait"]))
        except (TypeError, ValueError):
            return raw  # reported at its path by the field itself
        if 0 < wait < DEFAULT_GRACE_AFTER_ROOT:
            return {**raw, "decision_wait_after_root": raw["decision_wait"]}
        return raw

    def validate(self) -> Iterator[tuple[str, str]]:
        if self.decision_wait_after_root > self.decision_wait:
            yield "decision_wait_after_root", "must not exceed decision_wait"
        if self.tick_interval > self.decision_wait:
            yield "tick_interval", "must not exceed decision_wait"
