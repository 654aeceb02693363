"""OpenTelemetry → Prometheus names (specification/compatibility/prometheus_and_openmetrics.md).

- Characters outside ``[a-zA-Z0-9_]`` become ``_``; runs of ``_`` collapse. Colons too, in metric names, which
  Prometheus allows: they are reserved for recording rules (Prometheus' data model), and prometheus_client's
  OpenMetrics writer turns them into ``_`` in sample names but not in ``# TYPE`` lines, so a name with one would
  differ between the formats, and collide with its underscored twin.
- The UCUM unit becomes a word suffix: ``s`` → ``seconds``, ``By`` → ``bytes``, ``m/s`` → ``meters_per_second``;
  ``{…}`` annotations are dropped (``{token}`` adds nothing); a gauge with unit ``1`` gets ``_ratio``; an
  unknown unit is appended sanitized. The suffix is not repeated when the name already ends with it.
- Monotonic sums (counters) end in ``_total`` (added by the exposition, so the family name here has none).

So OTLP ``orchestrator.span.duration`` (unit ``s``) is ``orchestrator_span_duration_seconds`` and a monotonic
``orchestrator.llm.cost_usd`` (unit ``{USD}``) is ``orchestrator_llm_cost_usd_total``.
"""

from __future__ import annotations

import re

_INVALID = re.compile(r"[^a-zA-Z0-9_]")  # metric and label names alike (see above: colons too)
_UNDERSCORES = re.compile(r"__+")
_ANNOTATION = re.compile(r"\{[^}]*\}")

UNIT_WORDS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tebibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "%": "percent",
}
PER_UNIT_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}


def sanitize_metric_name(name: str) -> str:
    cleaned = _UNDERSCORES.sub("_", _INVALID.sub("_", name)).strip("_")
    if not cleaned:
        return "_"
    return "_" + cleaned if cleaned[0].isdigit() else cleaned


def sanitize_label_name(name: str) -> str:
    # Runs of "_" collapse, so no name comes out with the "__" prefix Prometheus reserves ("__meta" is "_meta").
    cleaned = _UNDERSCORES.sub("_", _INVALID.sub("_", name))
    if not cleaned or cleaned == "_":
        return "key_"
    if cleaned[0].isdigit():
        return "key_" + cleaned
    return cleaned


def unit_suffix(unit: str, *, gauge: bool = False) -> str:
    """The word a UCUM unit adds to a metric name ('' for none)."""
    unit = _ANNOTATION.sub("", unit).strip()
    if not unit:
        return ""
    if unit == "1":
        return "ratio" if gauge else ""
    if "/" in unit:
        main, _, per = unit.partition("/")
        main_word = UNIT_WORDS.get(main, main) if main and main != "1" else ""
        if not per.strip():  # only an annotation after the slash (1/{request}, By/{request}): no "per" word
            word = main_word
        else:
            per_word = PER_UNIT_WORDS.get(per, per)
            word = f"{main_word}_per_{per_word}" if main_word else f"per_{per_word}"
    else:
        word = UNIT_WORDS.get(unit, unit)
    return sanitize_label_name(word).strip("_") if word else ""


def metric_family_name(name: str, unit: str, *, counter: bool, gauge: bool, add_suffixes: bool = True) -> str:
    """The Prometheus family name (counters without ``_total``: the exposition adds it)."""
    base = sanitize_metric_name(name)
    if counter and base.endswith("_total"):
        base = base[: -len("_total")] or "_"
    if not add_suffixes:
        return base
    suffix = unit_suffix(unit, gauge=gauge)
    if suffix and not (base == suffix or base.endswith("_" + suffix)):
        base = f"{base}_{suffix}"
    return base
