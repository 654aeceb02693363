"""Configuration of the ``redaction`` processor."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from agent.config.schema import setting

DEFAULT_KEY_PATTERNS = [
    # token, but not token counts and their kin (gen_ai.usage.input_tokens, max_tokens, token_usage, tokenizer,
    # tokenized, gen_ai.request.token_limit) nor where to get one (token_endpoint, oauth.token_uri), each a whole
    # word (tokenString, token_urlsafe and tokenization_key are secrets); secret, but not a secret's name
    # (k8s.secret.name) nor a secretary; auth as a word of its own (auth.token, x_auth_key), not inside
    # oauth.provider. The value rules (rules.py) leave the same names alone; a pattern is searched
    # anywhere in a key, though, so other words after a secret's (password_reset) still mask by key.
    "password", "passwd", "pwd", "passphrase", "secret(?!ar(?:y|ies|iat)|[._-]?name)", "api[-_.]?key",
    "token(?!(?-i:[sS](?![a-z]))|iz(?:er|ed?|ation)(?![._-]?key)|[._-]?(?:type|count|usage|limit|endpoint|url|uri)(?![a-z]))",
    "authorization", "(?<![a-z])auth[-_.]", "cookie",
    "credential", "private[-_.]?key", "subscription[-_.]?key", "functions[-_.]?key", "access[-_.]?key",
    "account[-_.]?key",
]  # fmt: skip
DEFAULT_CONTENT_KEYS = [
    # OpenTelemetry GenAI (current and earlier conventions)
    "gen_ai.prompt",
    "gen_ai.completion",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
    # OpenInference (Arize Phoenix), OpenLLMetry (Traceloop), the Vercel AI SDK
    "input.value",
    "output.value",
    "llm.input_messages",
    "llm.output_messages",
    "llm.prompts",
    "llm.completions",
    "llm.prompt_template",
    "traceloop.entity.input",
    "traceloop.entity.output",
    "ai.prompt",
    "ai.response.text",
    "ai.response.object",
    "ai.response.toolCalls",
    "ai.response.reasoning",
    "ai.result",
    "ai.value",
    "ai.values",
    "ai.toolCall.args",
    "ai.toolCall.result",
    # OpenInference's retriever, embedding and reranker spans: documents, embedded texts, queries
    "retrieval.documents",
    "embedding.embeddings",
    "reranker.query",
    "reranker.input_documents",
    "reranker.output_documents",
    # Langfuse's OpenTelemetry attributes, and MLflow tracing's
    "langfuse.observation.input",
    "langfuse.observation.output",
    "langfuse.trace.input",
    "langfuse.trace.output",
    "mlflow.spanInputs",
    "mlflow.spanOutputs",
]
# GenAI events (older semantic conventions) whose log body is a message's content.
DEFAULT_CONTENT_EVENTS = [
    "gen_ai.system.message",
    "gen_ai.user.message",
    "gen_ai.assistant.message",
    "gen_ai.tool.message",
    "gen_ai.choice",
]
_RULE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class RedactionConfig:
    key_patterns: list[str] = setting(
        doc="Regular expressions searched (case-insensitively) in attribute keys, including keys inside map "
        "values and log bodies; a match turns a text, bytes, list or map value into `[REDACTED]` (numbers and "
        "booleans are kept: `gen_ai.usage.input_tokens` is a count, not a secret).",
        default_factory=lambda: list(DEFAULT_KEY_PATTERNS),
    )
    allow_keys: list[str] = setting(doc="Keys never redacted by `key_patterns` (exact names).", default_factory=list)
    mask_credentials: bool = setting(
        True,
        doc="Mask values that look like credentials wherever they appear (attribute values, log bodies, status "
        "and exception messages): `sk-…` API keys, `Bearer …`/`Basic …` tokens, AWS access keys, GitHub, Google "
        "and Slack tokens, JWTs, passwords in URLs.",
    )
    value_patterns: dict[str, str] = setting(
        doc="More credential shapes to mask: rule name → regular expression (the whole match is masked). With any "
        "set, a text value over 128 Ki characters is replaced whole rather than cut to its scanned beginning.",
        default_factory=dict,
    )
    capture_content: bool = setting(
        False,
        doc="Keep prompt and completion content (`content_keys`, the bodies of `content_events`). Credentials in "
        "it are still masked.",
    )
    content_keys: list[str] = setting(
        doc="Attributes holding prompt or completion content, dropped unless `capture_content`; a key also covers "
        "its sub-keys (`gen_ai.prompt.0.content`).",
        default_factory=lambda: list(DEFAULT_CONTENT_KEYS),
    )
    content_events: list[str] = setting(
        doc="Events carrying message content, unless `capture_content`: log records of these event names lose "
        "their body, and they and span events of these names keep only their metadata attributes (role, index, "
        "finish_reason, id, the provider).",
        default_factory=lambda: list(DEFAULT_CONTENT_EVENTS),
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        for index, pattern in enumerate(self.key_patterns):
            yield from _check_regex(f"key_patterns[{index}]", pattern)
        yield from check_value_patterns(self.value_patterns, " (they label the redaction counter)")


def check_value_patterns(patterns: dict[str, str], why_names: str = "") -> Iterator[tuple[str, str]]:
    """Problems with `value_patterns` (rule name → regular expression), as (path, message)."""
    for name, pattern in patterns.items():
        if not _RULE_NAME.match(name):
            yield f"value_patterns.{name}", f"rule names are lower_snake_case{why_names}"
        yield from _check_regex(f"value_patterns.{name}", pattern)
        if not _check_empty_match(pattern):
            yield f"value_patterns.{name}", "must not match the empty string"


def _check_regex(path: str, pattern: str) -> Iterator[tuple[str, str]]:
    try:
        re.compile(pattern)
    except re.error as exc:
        yield path, f"not a valid regular expression: {exc}"


def _check_empty_match(pattern: str) -> bool:
    try:
        return re.fullmatch(pattern, "") is None
    except re.error:
        return True  # reported by _check_regex
