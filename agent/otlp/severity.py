"""A log record's level from its OTLP severity: one reading for the Loki `level` label and the sampler's error
class, so that a record labelled `level="error"` is never classed as a normal one, or the other way round."""

from __future__ import annotations

from typing import Any

LEVELS = ("trace", "debug", "info", "warn", "error", "fatal")
ERROR_LEVELS = frozenset({"error", "fatal"})
_LEVELS_BY_TEXT = {
    "trace": "trace",
    "debug": "debug",
    "info": "info",
    "information": "info",
    "notice": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
    "err": "error",
    "eror": "error",  # zap's and logrus' four-letter form
    "severe": "error",  # java.util.logging
    "fatal": "fatal",
    "critical": "fatal",
    "crit": "fatal",
    "panic": "fatal",
    "emergency": "fatal",
    "emerg": "fatal",
    "alert": "fatal",
}


def level_of(severity_number: int, severity_text: str) -> str:
    """The severity number when it is one OTLP defines (1-24), else the text (any case, spaces around), else
    ``unknown``."""
    if 1 <= severity_number <= 24:
        return LEVELS[(severity_number - 1) // 4]
    return _LEVELS_BY_TEXT.get(severity_text.strip().lower(), "unknown") if severity_text else "unknown"


def is_error_record(record: Any) -> bool:
    """Whether a log record is an error or worse, as the Loki exporter's ``level`` label reads it: the sampler's
    error class of records and its ``error_logs`` policy read it alike."""
    return level_of(record.severity_number, record.severity_text) in ERROR_LEVELS


def level_of_text(text: str) -> str | None:
    """The level a text names (``ERROR``, ``warning``), or None."""
    return _LEVELS_BY_TEXT.get(text.strip().lower())


def severity_number_of(level: str) -> int:
    """The first OTLP severity number of a level (``error`` → 17)."""
    return LEVELS.index(level) * 4 + 1
