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
from dataclasses import dataclass
from fractions import Fraction

MAX_THRESHOLD = 1 << 56
MAX_MEMBERS = 32  # W3C Trace Context: list-members of a tracestate
MAX_OT_VALUE_CHARS = 256  # OpenTelemetry: the value of the ``ot`` member
_HEX_DIGITS = 14
_RANDOMNESS = re.compile(r"[0-9a-f]{14}")
_THRESHOLD = re.compile(r"[0-9a-f]{1,14}")


def randomness(trace_id: bytes) -> int:
    """The randomness a trace id carries (a trace with an explicit ``rv`` uses that: ``explicit_randomness``)."""
    return int.from_bytes(trace_id[-7:], "big")


def randomness_bytes(trace_id: bytes) -> bytes:
    """``randomness`` as 7 big-endian bytes, which compare as the numbers do, without building an int: a short
    (invalid) id is zero-padded, as ``randomness`` reads it."""
    return trace_id[-7:].rjust(7, b"\0")


def explicit_randomness(tracestate: str) -> int | None:
    """The ``rv`` of the ``ot`` vendor entry (exactly 14 hex digits), or None when absent or malformed."""
    value = _ot_field(tracestate, "rv")
    if value is None or not _RANDOMNESS.fullmatch(value):
        return None
    return int(value, 16)


def _ot_field(tracestate: str, wanted: str) -> str | None:
    if "ot=" not in tracestate:
        return None
    for field in _ot_fields_and_others(tracestate)[0] or ():
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


def threshold_for_percentage(percentage: float) -> int:
    """``threshold_for`` a percentage, with float noise rounded away (33.3 / 100 = 0.33299999999999996), so the
    threshold is the decimal one wherever a percentage is configured."""
    return threshold_for(round(percentage / 100.0, 12))


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


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a kept span's ``tracestate`` becomes (``stamp``): ``kept`` with the threshold written, or ``erased``
    without one when the span's trace id does not reach ``must_reach`` (7 big-endian bytes, compared with the
    id's last 7; None: nothing to check)."""

    kept: str
    erased: str
    must_reach: bytes | None = None

    def for_trace_id(self, trace_id: bytes) -> str:
        reach = self.must_reach
        return self.erased if reach is not None and randomness_bytes(trace_id) < reach else self.kept


def stamp(tracestate: str, threshold: int) -> Stamp:
    """``tracestate`` for a span kept at ``threshold``: ``ot``'s ``th`` set (other ``ot`` fields kept, ``ot``
    moved first), by the OpenTelemetry tracestate rules:

    - a higher threshold recorded upstream (sampled with a lower probability) stays: a later stage may raise a
      threshold, never lower it, and the adjusted count must reflect every stage the span went through;
    - no ``th`` when the probability is unknown: the upstream ``th`` is malformed, or the span's randomness does
      not reach the threshold (an inconsistent sampler upstream, or a span whose trace was decided on another
      span's ``rv``). The randomness is the span's ``rv``, which stays, else its trace id's: ``must_reach``
      then, as only the caller has the trace id;
    - the first ``ot`` member is the only one read and written (``_ot_fields_and_others``), at most 32 members
      (the right-most others removed). A ``th`` that would take the ``ot`` value past its 256
      characters is not written: then no ``th`` is (the probability is not stated). An ``ot`` value already past
      them is invalid: read as absent, as everywhere, it is replaced by one with our ``th``.
    """
    ot_fields, others = _ot_fields_and_others(tracestate)
    upstream = next((f[3:] for f in ot_fields or () if f.startswith("th:")), None)
    fields = [f for f in ot_fields or () if not f.startswith("th:")]
    erased = _joined(fields, others) or ""  # a field list read in is within the limit: never None
    effective = threshold if upstream is None else _raised(threshold, decode_threshold(upstream))
    if effective is None or effective >= MAX_THRESHOLD:  # keeps nothing: no th says so (encoding needs < 2**56)
        return Stamp(erased, erased)
    kept = _joined([f"th:{encode_threshold(effective)}", *fields], others)
    if kept is None:
        return Stamp(erased, erased)
    rv = next((f[3:] for f in fields if f.startswith("rv:")), None)
    if rv is not None and _RANDOMNESS.fullmatch(rv):
        return Stamp(erased if int(rv, 16) < effective else kept, erased)
    return Stamp(kept, erased, as_bytes(effective) if effective else None)


def with_threshold(tracestate: str, threshold: int, trace_randomness: int | None = None) -> str:
    """``stamp``'s tracestate for a span of a trace with this randomness (None: taken as consistent)."""
    stamped = stamp(tracestate, threshold)
    return stamped.kept if trace_randomness is None else stamped.for_trace_id(as_bytes(trace_randomness))


def as_bytes(randomness_or_threshold: int) -> bytes:
    """7 big-endian bytes, which compare with ``randomness_bytes`` as the numbers do; above every 7 bytes for the
    threshold that keeps nothing (2**56 needs 8)."""
    return randomness_or_threshold.to_bytes(7, "big") if randomness_or_threshold < MAX_THRESHOLD else b"\xff" * 8


def _ot_fields_and_others(tracestate: str) -> tuple[list[str] | None, list[str]]:
    """The fields of the first ``ot`` member, the only one read and written (W3C allows a key once), or None when
    there is none or its value is past 256 characters (invalid: read as absent), and the other members in order
    (further ``ot`` members and empty ones left out)."""
    ot_fields: list[str] | None = None
    seen_ot = False
    others: list[str] = []
    for member in tracestate.split(",") if tracestate else ():
        member = member.strip()
        if not member:
            continue
        key, _, value = member.partition("=")
        if key != "ot":
            others.append(member)
        elif not seen_ot:
            seen_ot = True
            fields = [f for f in value.split(";") if f]
            ot_fields = fields if len(";".join(fields)) <= MAX_OT_VALUE_CHARS else None
    return ot_fields, others


def _raised(threshold: int, upstream: int | None) -> int | None:
    return None if upstream is None else max(threshold, upstream)


def _joined(ot_fields: list[str], others: list[str]) -> str | None:
    """The members as a tracestate, ``ot`` first; None when the ``ot`` value would be over its 256 characters."""
    value = ";".join(ot_fields)
    if len(value) > MAX_OT_VALUE_CHARS:
        return None
    members = [f"ot={value}", *others] if value else others
    return ",".join(members[:MAX_MEMBERS])


def adjusted_count(tracestate: str) -> tuple[float, int]:
    """How many spans one span stands for, ``1/p`` from its ``th`` (1 when it has none), and the threshold its
    trace id's randomness must reach for that to hold (0: nothing to check). A ``th`` its randomness does not
    reach came from a sampler that was not consistent: its probability is unknown, and the span counts once, as
    the specification says such a threshold is erased."""
    threshold = threshold_from_tracestate(tracestate)
    if threshold is None or threshold >= MAX_THRESHOLD:
        return 1.0, 0
    explicit = explicit_randomness(tracestate)
    if explicit is not None and explicit < threshold:
        return 1.0, 0
    return MAX_THRESHOLD / (MAX_THRESHOLD - threshold), threshold if explicit is None else 0
