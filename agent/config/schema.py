"""Typed configuration: dataclasses built from YAML with every error collected and path-qualified.

A config class is a frozen dataclass whose fields are declared with :func:`setting`. :func:`build`
walks the raw mapping against the field types, so the schema (types, defaults, documentation,
secrecy) lives in one place and also drives ``docs/configuration.md`` and ``print-config``.

Supported field types: ``bool``, ``int``, ``float``, ``str``, :class:`Duration`, :class:`HostPort`,
:class:`Url`, ``Literal[...]``, ``X | None``, ``list[X]``, ``dict[str, X]`` and nested config classes.
A class may define ``validate(self) -> Iterable[tuple[str, str]]`` yielding ``(relative_path, message)``
for rules that span several fields.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import re
import types
import typing
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


class Duration(float):
    """Seconds, written in config as ``500ms``, ``10s``, ``2m``, ``1h30m`` or ``30d`` (Go's units, and days);
    ``0`` alone, as in Go, is no time."""

    _UNITS: typing.ClassVar[dict[str, float]] = {
        "ns": 1e-9,
        "us": 1e-6,
        "µs": 1e-6,
        "ms": 0.001,
        "s": 1.0,
        "m": 60.0,
        "h": 3600.0,
        "d": 86400.0,
    }
    _PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")

    @classmethod
    def parse(cls, text: str) -> Duration:
        text = text.strip()
        if text == "0":
            return cls(0.0)
        parts = cls._PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"must be a duration like '10s', '500ms' or '2m', got {text!r}")
        return cls(sum(float(n) * cls._UNITS[u] for n, u in parts))

    def render(self) -> str:
        value = float(self)
        for unit in ("d", "h", "m", "s"):
            size = self._UNITS[unit]
            if value >= size and (value / size).is_integer():
                return f"{int(value / size)}{unit}"
        return f"{round(value * 1000, 3):g}ms"


class HostPort(str):
    """A listen or dial address ``host:port`` (``[::1]:4317`` for IPv6)."""

    # The host may be empty (":4317": every interface) for a listen address; a dial address checks it has one.
    FORM = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]*):(\d{1,5})$")

    @classmethod
    def parse(cls, text: str) -> HostPort:
        match = cls.FORM.match(text)
        if not match or int(match.group(2)) > 65535:
            raise ValueError(f"must be host:port, got {text!r}")
        return cls(text)

    @property
    def host(self) -> str:
        host = self.rsplit(":", 1)[0]
        return host.strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.rsplit(":", 1)[1])


class Url(str):
    """An ``http://`` or ``https://`` URL with a host (a name, an IPv4 or a bracketed IPv6 address), optionally
    with ``user:password@`` (basic auth, as hosted Loki services expect). The scheme is kept in lower case."""

    @classmethod
    def parse(cls, text: str) -> Url:
        shown = without_credentials(text)
        # A / or @ in a password ends the host early: what follows reads as a port, or the host is missing.
        hint = "; a /, ?, # or @ in a user name or password is written %2F, %3F, %23 or %40" if "@" in text else ""
        problem = f"must be a URL (http:// or https:// and a host), got {shown!r}{hint}"
        if any(c.isspace() for c in text):
            raise ValueError(problem)
        try:
            parts = urllib.parse.urlsplit(text)
        except ValueError:  # an IPv6 address without its closing bracket
            raise ValueError(problem) from None
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:  # out of range, not a number, or 0: nothing can be dialled there
            raise ValueError(f"the port must be 1-65535, got {shown!r}{hint}")
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(problem)
        return cls(parts.scheme.lower() + text[len(parts.scheme) :])


_CUSTOM_SCALARS: tuple[type, ...] = (Duration, HostPort, Url)


def setting(
    default: Any = MISSING,
    *,
    doc: str,
    default_factory: Any = MISSING,
    secret: bool = False,
    endpoint: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
) -> Any:
    """Declare a config field with its documentation and constraints.

    ``positive``: must be above zero (a duration: longer than 0s). Checked with the field itself, like ``minimum``,
    so it is reported even when another field of the section is wrong (``validate()`` then does not run).
    ``secret``: printed as ``[REDACTED]`` (a mapping keeps its keys). ``endpoint``: a text field that is a URL or an
    address which may carry credentials (``user:password@``, ``?api_key=``), printed with those masked, as
    :class:`Url` and :class:`HostPort` fields are; other text is printed as it is.
    """
    metadata = {
        "doc": doc, "secret": secret, "endpoint": endpoint, "minimum": minimum, "maximum": maximum, "positive": positive
    }  # fmt: skip
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ConfigError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigInvalid(Exception):
    """Raised with every problem found in a config, each path-qualified."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def join_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def build(cls: type[T], raw: Any, path: str, errors: list[ConfigError]) -> T | None:
    """Build a config class from raw YAML data; append problems to ``errors``; None if any field failed."""
    raw = EnvText.structure(raw)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        errors.append(ConfigError(path, f"must be a mapping, got {type_name(raw)}"))
        return None
    prepare = getattr(cls, "prepare_raw", None)
    if prepare is not None:  # a section whose defaults depend on which keys were written (the OTLP protocols)
        raw = prepare(raw)
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    explain = getattr(cls, "explain_unknown", None)  # a section that knows better what an unknown key meant
    for key in raw:
        if key not in known:
            explained = explain(str(key), raw[key]) if explain is not None else None
            if explained is None:
                explained = [("", _unknown_field_message(str(key), known))]
            key_path = join_path(path, str(key))
            errors.extend(ConfigError(join_path(key_path, where) if where else key_path, m) for where, m in explained)
    values: dict[str, Any] = {}
    failed: set[str] = set()
    for name, spec in known.items():
        field_path = join_path(path, name)
        if name not in raw:
            if spec.default is MISSING and spec.default_factory is MISSING:
                errors.append(ConfigError(field_path, "is required"))
                failed.add(name)
            continue
        before = len(errors)
        value = _parse_value(hints[name], raw[name], field_path, errors)
        if len(errors) == before:
            _check_bounds(spec, value, field_path, errors)
        if len(errors) > before:
            failed.add(name)
            continue
        values[name] = value
    absent = [name for name in known if name not in raw and name not in failed]
    if failed:
        _validate_the_rest(cls, values, failed, absent, path, errors)
        return None
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as exc:
        errors.append(ConfigError(path, str(exc)))
        return None
    for sub, message in _section_problems(obj):
        errors.append(ConfigError(join_path(path, sub) if sub else path, message))
    errors.extend(_absent_section_problems(obj, absent, path))
    return obj


def _section_problems(obj: Any) -> Iterator[tuple[str, str]]:
    validate = getattr(obj, "validate", None)
    return validate() if validate is not None else iter(())


def _absent_section_problems(obj: Any, absent: list[str], path: str) -> Iterator[ConfigError]:
    """What the checks of the sections left out say of their defaults: a loadbalancing exporter without a
    resolver would otherwise pass, to fail when the agent builds it."""
    for name in absent:
        for sub, message in _default_section_problems(getattr(obj, name)):
            yield ConfigError(join_path(join_path(path, name), sub) if sub else join_path(path, name), message)


def _default_section_problems(value: Any) -> Iterator[tuple[str, str]]:
    """What the checks of a section built from its defaults say, its own sections' included."""
    if not is_dataclass(value) or isinstance(value, type):
        return
    yield from _section_problems(value)
    for spec in fields(value):
        for sub, message in _default_section_problems(getattr(value, spec.name)):
            yield join_path(spec.name, sub) if sub else spec.name, message


def _validate_the_rest(
    cls: type[Any], values: dict[str, Any], failed: set[str], absent: list[str], path: str, errors: list[ConfigError]
) -> None:
    """A section's own checks (``validate()``) of the fields that did parse, and of the sections left out, so that
    one wrong field does not hide another's problem: the failed fields take their defaults, and what is said of
    them, or in their name, is left out (it would be about the default, not what was written)."""
    try:
        obj = cls(**values)  # a required field that failed has no default: nothing to check against
        problems = list(_section_problems(obj))
    except (TypeError, ValueError):
        return
    for sub, message in problems:
        if sub and sub.split(".", 1)[0].split("[", 1)[0] not in failed and not any(n in message for n in failed):
            errors.append(ConfigError(join_path(path, sub), message))
    errors.extend(_absent_section_problems(obj, absent, path))


def _unknown_field_message(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; known fields: {', '.join(known) or 'none'}"
    return "unknown field" + hint


def _check_bounds(spec: dataclasses.Field[Any], value: Any, path: str, errors: list[ConfigError]) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    low, high = spec.metadata.get("minimum"), spec.metadata.get("maximum")
    if spec.metadata.get("positive") and value <= 0:
        errors.append(
            ConfigError(path, "must be longer than 0s" if isinstance(value, Duration) else "must be positive")
        )
    elif low is not None and value < low:
        errors.append(ConfigError(path, "must be positive" if low == 1 else f"must be at least {_bound_text(low)}"))
    elif high is not None and value > high:
        errors.append(ConfigError(path, f"must be at most {_bound_text(high)}"))


def _bound_text(bound: float) -> str:
    if isinstance(bound, int):
        return f"{bound:_}" if bound >= 10_000 else str(bound)  # 100_000_000, as YAML takes it; not 1e+08
    return f"{bound:g}"


class YamlInt(int):
    """An integer as YAML read it, with ``source``, the text it was written as: a field taking text gets what was
    written (``tenant_id: 0123`` is ``0123``, not YAML 1.1's octal 83; ``values: [1.10]`` is ``1.10``)."""

    source: str


class YamlFloat(float):
    """A float as YAML read it, with ``source``, the text it was written as (see :class:`YamlInt`)."""

    source: str


def _as_text(raw: int | float) -> str:
    """The text of a number given to a field taking text: as written when YAML read it."""
    return getattr(raw, "source", None) or str(raw)


class EnvText(str):
    """A value given whole by an environment variable (``${env:NAME}``): its exact text for fields that take text,
    and ``parsed``, the text read as YAML, for the others (``${env:PORT}`` is a number to an int field, while
    ``${env:TENANT}`` holding ``0123`` stays ``0123`` to a string field, not octal 83). ``parsed`` may be a list
    or a mapping too: ``[a, b]`` is a list to a list field or a whole section, while a regex ``[0-9]``, a path
    ``{team-a}`` or a header ``Basic: abc`` stays that text to a string field."""

    parsed: Any

    def __new__(cls, text: str, parsed: Any) -> EnvText:
        obj = super().__new__(cls, text)
        obj.parsed = parsed
        return obj

    @staticmethod
    def structure(raw: Any) -> Any:
        """``raw`` as YAML data, where no field type says whether text is wanted (a section, a config class)."""
        return raw.parsed if isinstance(raw, EnvText) else raw


_DECIMAL = re.compile(r"[-+]?[0-9]+")


def _takes_text(tp: Any) -> bool:
    if tp is str or tp in _CUSTOM_SCALARS:
        return True
    return get_origin(tp) is Literal and all(isinstance(choice, str) for choice in get_args(tp))


def _parse_value(tp: Any, raw: Any, path: str, errors: list[ConfigError]) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if raw is None or (isinstance(raw, EnvText) and raw.parsed is None and not _takes_text(options[0])):
            return None
        return _parse_value(options[0], raw, path, errors)
    if isinstance(raw, EnvText) and tp is int and _DECIMAL.fullmatch(raw.strip()):
        raw = int(raw)  # decimal, as a variable means it: PyYAML would read 0032 as octal
    elif isinstance(raw, EnvText) and tp is float and _DECIMAL.fullmatch(raw.strip()):
        raw = float(int(raw))
    elif isinstance(raw, EnvText) and not _takes_text(tp):
        raw = raw.parsed
    elif isinstance(raw, EnvText):
        raw = str(raw)
    if origin is Literal:
        choices = get_args(tp)
        if raw not in choices:
            errors.append(ConfigError(path, f"must be one of {', '.join(map(str, choices))}, got {as_written(raw)}"))
        return raw
    if origin is list:
        if not isinstance(raw, list):
            errors.append(ConfigError(path, f"must be a list, got {type_name(raw)}"))
            return None
        (item_tp,) = get_args(tp)
        return [_parse_value(item_tp, item, join_path(path, i), errors) for i, item in enumerate(raw)]
    if origin is dict:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            errors.append(ConfigError(path, f"must be a mapping, got {type_name(raw)}"))
            return None
        _, value_tp = get_args(tp)
        return {_key_text(k): _parse_value(value_tp, v, join_path(path, _key_text(k)), errors) for k, v in raw.items()}
    if is_dataclass(tp):
        return build(tp, raw, path, errors)  # type: ignore[arg-type]
    return _parse_scalar(tp, raw, path, errors)


def _parse_scalar(tp: Any, raw: Any, path: str, errors: list[ConfigError]) -> Any:
    if tp in _CUSTOM_SCALARS:
        if tp is Duration and raw == 0 and not isinstance(raw, bool):
            return Duration(0.0)  # `max_elapsed_time: 0`, read by YAML as a number
        if not isinstance(raw, str):
            errors.append(ConfigError(path, _custom_scalar_hint(tp, raw)))
            return None
        try:
            return tp.parse(raw)
        except ValueError as exc:
            errors.append(ConfigError(path, str(exc)))
            return None
    if tp is bool:
        if not isinstance(raw, bool):
            errors.append(ConfigError(path, f"must be true or false, got {as_written(raw)}"))
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            hint = _number_as_text_hint(raw, True)
            errors.append(ConfigError(path, f"must be an integer, got {as_written(raw)}{hint}"))
            return raw
        return int(raw)
    if tp is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            hint = _number_as_text_hint(raw, False)
            errors.append(ConfigError(path, f"must be a number, got {as_written(raw)}{hint}"))
            return raw
        if not math.isfinite(raw):  # .nan would pass every bound (each comparison is false)
            errors.append(ConfigError(path, f"must be a finite number, got {raw!r}"))
        return float(raw)
    if tp is str:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return _as_text(raw)  # tenant_id: 12345, or ${env:TENANT} holding digits, is text to this field
        if not isinstance(raw, str):
            errors.append(ConfigError(path, f"must be a string, got {type_name(raw)}"))
        return raw
    if tp is Any:
        return raw
    raise TypeError(f"unsupported config field type {tp!r} at {path}")


def _key_text(key: Any) -> str:
    return _as_text(key) if isinstance(key, int | float) and not isinstance(key, bool) else str(key)


def _number_as_text_hint(raw: Any, integer: bool) -> str:
    """YAML 1.1 reads ``1e5`` (no dot) as text: say so, since it looks like a number to whoever wrote it."""
    if not isinstance(raw, str):
        return ""
    try:
        number = float(raw)
    except ValueError:
        return ""
    if integer:
        written = f"{int(number)}" if number.is_integer() else "an integer"
        return f" (YAML reads it as text: write {written})"
    return " (YAML reads it as text: write the number out, or with a dot, as in 1.0e+5)"


def _custom_scalar_hint(tp: type, raw: Any) -> str:
    if tp is Duration:
        if raw == 0 and not isinstance(raw, bool):
            return "0"  # a bare 0 (YAML reads it as a number) is no time, as in Go; see _parse_scalar
        return f"must be a duration like '10s', '500ms' or '2m', got {as_written(raw)}"
    if tp is HostPort:
        return f"must be host:port, got {as_written(raw)}"
    return "must be a URL"


def as_written(raw: Any) -> str:
    """A scalar as the YAML writer wrote it: ``true``, ``false`` and an empty value in YAML's words, not Python's
    (``True``, ``None``); anything else as its repr, which quotes text."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if raw is None:
        return "nothing"
    return repr(raw)


def type_name(raw: Any) -> str:
    """What a value is, in the YAML writer's words (a YamlInt or an EnvText is a number or a string to them)."""
    kinds: tuple[tuple[Any, str], ...] = (
        (bool, "a boolean"),
        (int | float, "a number"),
        (str, "a string"),
        (Mapping, "a mapping"),
        (list, "a list"),
        (datetime.date, "a date"),
        (bytes, "binary data"),
        (set | frozenset, "a set"),
        (type(None), "nothing"),
    )
    return next((name for kind, name in kinds if isinstance(raw, kind)), type(raw).__name__)


# --- rendering (print-config, docs) -------------------------------------------------------------------------------

SECRET_MASK = "[REDACTED]"


def to_plain(obj: Any, *, mask_secrets: bool = True) -> Any:
    """The effective config as plain YAML-able data, secrets masked: ``secret`` fields whole, credentials in
    URL and endpoint fields (:class:`Url`, :class:`HostPort`, ``endpoint`` fields). Other text, such as a
    redaction pattern that looks like a URL, is printed as it is."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for spec in fields(obj):
            value = getattr(obj, spec.name)
            if mask_secrets and spec.metadata.get("secret") and value:
                out[spec.name] = _mask(value)
            elif mask_secrets and spec.metadata.get("endpoint") and isinstance(value, str):
                out[spec.name] = without_credentials(str(value))
            else:
                out[spec.name] = to_plain(value, mask_secrets=mask_secrets)
        return out
    if isinstance(obj, Duration):
        return obj.render()
    if isinstance(obj, dict):
        return {k: to_plain(v, mask_secrets=mask_secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v, mask_secrets=mask_secrets) for v in obj]
    if isinstance(obj, Url | HostPort) and mask_secrets:
        return without_credentials(str(obj))
    if isinstance(obj, str):
        return str(obj)
    return obj


# Up to the last @ before the query: a password holding an unescaped / or @ (a base64 token) is masked whole, at
# the price of masking a path that holds an @ too.
# Up to the last "@": a password written with a raw /, ?, # or space (it should be percent-encoded) is masked
# whole, at the cost of the host too when a path or query holds an "@" as well.
_USERINFO = re.compile(r"(?<=://).*@")
_QUERY_VALUE = re.compile(r"(?<=[?&])([^=&#?\s]+)=[^&#\s]*")  # ?api_key=... in a URL
_BARE_USERINFO = re.compile(r"^[^/:@\s]+:[^\s]+@(?=[^@/\s]+:\d+$)")  # user:password@host:port, no scheme


def without_credentials(text: str) -> str:
    """A URL or endpoint with the credentials it may carry masked: ``user:password@`` (with or without a scheme)
    and the values of its query string (``?api_key=…``). For printing configs and error messages."""
    if "://" in text:
        if "@" in text:
            text = _USERINFO.sub(SECRET_MASK + "@", text)
        if "?" in text:
            text = _QUERY_VALUE.sub(r"\1=" + SECRET_MASK, text)
        return text
    if "@" in text:
        return _BARE_USERINFO.sub(SECRET_MASK + "@", text)
    return text


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return dict.fromkeys(value, SECRET_MASK)
    return SECRET_MASK


def describe_fields(cls: type, prefix: str = "") -> Iterable[tuple[str, str, str, str]]:
    """Yield ``(path, type, default, doc)`` for every field of a config class, depth first."""
    hints = get_type_hints(cls)
    for spec in fields(cls):
        path = join_path(prefix, spec.name)
        tp = hints[spec.name]
        doc = spec.metadata.get("doc", "")
        if is_dataclass(tp):
            yield path, "mapping", "", doc
            yield from describe_fields(tp, path)  # type: ignore[arg-type]
            continue
        yield path, _type_label(tp), _default_label(spec), doc
        optional = _optional_config_type(tp)
        if optional is not None:
            yield from describe_fields(optional, path)
        item = _collection_item_type(tp)
        if item is not None:
            yield from describe_fields(item, path + ("[]" if get_origin(tp) is list else ".<name>"))


def _optional_config_type(tp: Any) -> type | None:
    """The config class of an optional section (``DnsResolverConfig | None``), whose fields are documented too."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if len(inner) == 1 and is_dataclass(inner[0]):
            return inner[0]  # type: ignore[return-value]
    return None


def _collection_item_type(tp: Any) -> type | None:
    args = get_args(tp)
    if get_origin(tp) in (list, dict) and args and is_dataclass(args[-1]):
        return args[-1]  # type: ignore[return-value]
    return None


def _type_label(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _type_label(inner[0]) + " (optional)"
    if origin is Literal:
        return " \\| ".join(f"`{c}`" for c in get_args(tp))
    if origin is list:
        return f"list of {_type_label(get_args(tp)[0])}"
    if origin is dict:
        return f"map of {_type_label(get_args(tp)[1])}"
    if is_dataclass(tp):
        return "mapping"
    return {Duration: "duration", HostPort: "host:port", Url: "URL"}.get(tp, getattr(tp, "__name__", str(tp)))


def _default_label(spec: dataclasses.Field[Any]) -> str:
    if spec.default is not MISSING:
        value = spec.default
    elif spec.default_factory is not MISSING:
        value = spec.default_factory()
    else:
        return "required"
    if spec.metadata.get("secret") and value:
        return SECRET_MASK
    plain = to_plain(value, mask_secrets=False)
    if plain in ({}, [], None, ""):
        return "—" if plain in (None, "") else f"`{plain}`"
    if isinstance(plain, bool):
        return f"`{str(plain).lower()}`"
    return f"`{plain}`"
