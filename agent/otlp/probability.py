"""OpenTelemetry consistent probability sampling (OTEP 235, W3C trace context level 2 randomness).

The randomness of a trace is the explicit randomness value in its ``tracestate`` (``ot=rv:<14 hex digits>``, set
by SDKs whose trace ids are not random), else the rightmost 56 bits of its trace id. A sampler with probability
``p`` has the rejection threshold ``T = (1 - p) * 2**56`` and keeps a trace when ``randomness >= T``. Every agent
and SDK applying the same threshold keeps the same traces. Kept spans record ``T`` in ``tracestate`` as
``ot=th:<hex>`` (14 hex digits, trailing zeros removed; ``th:0`` means kept with probability 1), from which
the adjusted count ``1 / p = 2**56 / (2**56 - T)`` follows.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_THRESHOLD = 1 << 56
_HEX_DIGITS = 14
_RANDOMNESS = re.compile(r"[0-9a-f]{14}")
_THRESHOLD = re.compile(r"[0-9a-f]{1,14}")


def randomness(trace_id: bytes) -> int:
    """The randomness a trace id carries (a trace with an explicit ``rv`` uses that: ``explicit_randomness``)."""
    return int.from_bytes(trace_id[-7:], "big")


def explicit_randomness(tracestate: str) -> int | None:
    """The ``rv`` of the ``ot`` vendor entry (exactly 14 hex digits), or None when absent or malformed."""
    value = _ot_field(tracestate, "rv")
    if value is None or not _RANDOMNESS.fullmatch(value):
        return None
    return int(value, 16)


def _ot_field(tracestate: str, wanted: str) -> str | None:
    if "ot=" not in tracestate:
        return None
    for member in tracestate.split(","):
        key, _, value = member.strip().partition("=")
        if key != "ot":
            continue
        for field in value.split(";"):
            name, _, sub = field.partition(":")
            if name == wanted:
                return sub
    return None


def threshold_for(probability: float) -> int:
    """The rejection threshold for a sampling probability in [0, 1] (0 keeps nothing, 1 keeps everything)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be within [0, 1], got {probability}")
    # Exact decimal arithmetic: 10% must give the same threshold (e6666666666666) as every other implementation.
    return min(MAX_THRESHOLD, round((1 - Fraction(str(probability))) * MAX_THRESHOLD))


def is_sampled(trace_id: bytes, threshold: int) -> bool:
    return randomness(trace_id) >= threshold


def encode_threshold(threshold: int) -> str:
    """The ``th`` value: hex, 14 digits with trailing zeros dropped (``0`` for probability 1)."""
    if threshold <= 0:
        return "0"
    return f"{threshold:0{_HEX_DIGITS}x}".rstrip("0")


def decode_threshold(value: str) -> int | None:
    """A ``th`` value: 1 to 14 lowercase hex digits (Python's int() would also take ``0x…``, ``1_2`` or spaces,
    which the specification's parsers refuse, so two agents would decide differently)."""
    if not _THRESHOLD.fullmatch(value):
        return None
    return int(value.ljust(_HEX_DIGITS, "0"), 16)


def threshold_from_tracestate(tracestate: str) -> int | None:
    """The ``th`` of the ``ot`` vendor entry, or None when absent or malformed."""
    value = _ot_field(tracestate, "th")
    return None if value is None else decode_threshold(value)


def with_threshold(tracestate: str, threshold: int) -> str:
    """``tracestate`` with ``ot``'s ``th`` set to ``threshold`` (other ``ot`` fields kept, ``ot`` moved first).

    A span already carrying a higher threshold (sampled with a lower probability upstream) keeps it:
    its adjusted count must reflect every sampling stage it went through. An explicit randomness value (``rv``)
    stays: it is the trace's randomness, which the decision compared with ``threshold`` (see ``randomness``).
    """
    members = [m.strip() for m in tracestate.split(",") if m.strip()] if tracestate else []
    ot_fields: list[str] = []
    others: list[str] = []
    for member in members:
        key, _, value = member.partition("=")
        if key == "ot":
            ot_fields = [f for f in value.split(";") if f]
        else:
            others.append(member)
    existing = next((decode_threshold(f[3:]) for f in ot_fields if f.startswith("th:")), None)
    effective = max(threshold, existing) if existing is not None else threshold
    kept = [f for f in ot_fields if not f.startswith("th:")]
    ot = "ot=" + ";".join([f"th:{encode_threshold(effective)}", *kept])
    return ",".join([ot, *others])


def adjusted_count(tracestate: str) -> float:
    """How many spans one span stands for: ``1/p`` from its ``th``, 1 when it carries none."""
    threshold = threshold_from_tracestate(tracestate)
    if threshold is None or threshold >= MAX_THRESHOLD:
        return 1.0
    return MAX_THRESHOLD / (MAX_THRESHOLD - threshold)
