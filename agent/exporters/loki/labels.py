"""Loki's rules for stream labels and structured metadata names and values."""

from __future__ import annotations

import re

MAX_LABELS = 15  # Loki's max_label_names_per_series default
MAX_LABEL_VALUE_BYTES = 2048  # max_label_value_length
FIXED_LABELS = ("service_name", "level", "retention")

_INVALID = re.compile(r"[^A-Za-z0-9_]")


def sanitize_label_name(name: str) -> str:
    """A valid Loki label name (``[a-zA-Z_][a-zA-Z0-9_]*``, not ``__``-prefixed) for an attribute key.

    Invalid characters become ``_`` (``k8s.namespace.name`` → ``k8s_namespace_name``), a leading digit gets a
    ``_`` before it, and a reserved ``__`` prefix gets ``key`` before it, as the OTLP→Prometheus rules do.
    """
    label = _INVALID.sub("_", name) or "_"
    if label[0].isdigit():
        label = "_" + label
    if label.startswith("__"):
        label = "key" + label
    return label


def truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


def escape_label_value(value: str) -> str:
    # U+FFFD is escaped too: Loki parses the selector with the PromQL lexer, which refuses the character itself
    # (it cannot tell it from invalid UTF-8) but reads the \ufffd escape; lossy decoding leaves it in names.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return escaped.replace("\ufffd", "\\ufffd")


def render_labels(labels: tuple[tuple[str, str], ...]) -> str:
    """The Prometheus-style selector Loki's protobuf API takes: ``{level="error", service_name="api"}``."""
    return "{" + ", ".join(f'{name}="{escape_label_value(value)}"' for name, value in labels) + "}"
