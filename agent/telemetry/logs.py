"""Structured logging on stdout: JSON lines for machines, text for humans."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, component, message, then any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": record.name.removeprefix("otel_sidecar.") if record.name != "otel_sidecar" else "agent",
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        return text + ("  " + " ".join(f"{k}={v}" for k, v in extras.items()) if extras else "")


def configure(level: str, fmt: str) -> logging.Logger:
    root = logging.getLogger("otel_sidecar")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # Libraries (aiohttp, grpc, asyncio) log through Python's root logger: the same stream and format, so a log
    # collector reading JSON lines never meets a bare traceback; warnings and worse only.
    libraries = logging.getLogger()
    library_handler = logging.StreamHandler(sys.stdout)
    library_handler.setFormatter(handler.formatter)
    library_handler.addFilter(RepeatFilter())
    libraries.handlers[:] = [library_handler]
    libraries.setLevel(logging.WARNING)
    return root


class Throttle:
    """Admits one event per key every ``interval`` seconds and counts the others, to be reported with the next."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._last: dict[object, float] = {}
        self._suppressed: dict[object, int] = {}

    def due(self, key: object) -> bool:
        """Whether ``admit(key)`` now would admit the event (without counting it either way)."""
        last = self._last.get(key)
        return last is None or time.monotonic() - last >= self._interval

    def admit(self, key: object) -> int | None:
        """None to drop this event; else how many were dropped since the last one admitted."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if len(self._last) > 4096:  # keys are message templates: few, unless something is wrong
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        return self._suppressed.pop(key, 0)


class RepeatFilter(logging.Filter):
    """Passes one record per message template and logger every ``interval`` seconds: a library logging the same
    failure in a loop (asyncio's accept errors when file descriptors run out) must not flood the log."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self._throttle = Throttle(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        suppressed = self._throttle.admit((record.name, record.msg))
        if suppressed:
            record.suppressed_since_last = suppressed
        return suppressed is not None


def component_logger(name: str) -> logging.Logger:
    """The logger of a part of the agent; ``name`` is the ``component`` field of its lines (``receivers.otlp``)."""
    return logging.getLogger(f"otel_sidecar.{name}")


class RateLimitedLog:
    """Log a repeating problem at most once per ``interval`` seconds, with the count of what was suppressed.

    The hot path never logs per item; it counts, and this says so now and then.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._throttle = Throttle(interval)

    def warning(self, key: str, message: str, **extra: Any) -> None:
        self._log(logging.WARNING, key, message, extra)

    def would_warn(self, key: str) -> bool:
        """Whether a warning under ``key`` now would be written (the level on, not suppressed): to skip building a
        costly one."""
        return self._logger.isEnabledFor(logging.WARNING) and self._throttle.due(key)

    def error(self, key: str, message: str, **extra: Any) -> None:
        self._log(logging.ERROR, key, message, extra)

    def exception(self, key: str, message: str, **extra: Any) -> None:
        """An error with the traceback of the exception being handled (a bug's symptom), at most once per
        interval."""
        self._log(logging.ERROR, key, message, extra, exc_info=True)

    def _log(self, level: int, key: str, message: str, extra: dict[str, Any], exc_info: bool = False) -> None:
        suppressed = self._throttle.admit(key)
        if suppressed is None:
            return
        if suppressed:
            extra["suppressed_since_last"] = suppressed
        self._logger.log(level, message, extra=extra, exc_info=exc_info)
