"""Load the agent config: YAML, ``${env:…}`` substitution, typed component configs, pipeline checks."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from agent.component import Factory, Kind, Signal
from agent.config.schema import (
    ConfigError,
    ConfigInvalid,
    EnvText,
    HostPort,
    YamlFloat,
    YamlInt,
    build,
    join_path,
    to_plain,
)
from agent.config.service import NO_EXTENSIONS, PipelineConfig, ServiceConfig, pipeline_id_problem

# ${env:NAME}, ${env:NAME:-default}, ${NAME} (the Collector's default provider is env too), $$ for a literal $;
# a "${" that is none of these is reported.
_ENV_NAME = re.compile(r"(?:env:)?([A-Za-z_][A-Za-z0-9_]*)")
_BAD_REFERENCE = "'${' starts no valid reference: write ${env:NAME} or ${env:NAME:-default} ($$ for a $)"
_COMPONENT_ID = re.compile(r"[a-z][a-z0-9_]*(/[A-Za-z0-9_.\-]+)?")  # whole ids only (fullmatch)
_SECTIONS = ("receivers", "processors", "exporters", "connectors", "service")


@dataclass(frozen=True)
class ComponentConfig:
    id: str
    kind: Kind
    factory: Factory[Any]
    config: Any


@dataclass(frozen=True)
class AgentConfig:
    receivers: dict[str, ComponentConfig] = field(default_factory=dict)
    processors: dict[str, ComponentConfig] = field(default_factory=dict)
    exporters: dict[str, ComponentConfig] = field(default_factory=dict)
    connectors: dict[str, ComponentConfig] = field(default_factory=dict)
    service: ServiceConfig = field(default_factory=ServiceConfig)

    def section(self, kind: Kind) -> dict[str, ComponentConfig]:
        return getattr(self, kind.section)

    def unused_components(self) -> list[str]:
        """Components defined but in no pipeline, as paths (``processors.redaction``): they are never built, as in
        the Collector, which is worth a warning: a `redaction` or `memory_limiter` forgotten in the pipelines
        leaves secrets in the data or memory unbounded."""
        kinds = (Kind.RECEIVER, Kind.PROCESSOR, Kind.CONNECTOR, Kind.EXPORTER)
        return [
            f"{kind.section}.{cid}" for kind in kinds for cid in self.section(kind) if not self.in_a_pipeline(kind, cid)
        ]

    def in_a_pipeline(self, kind: Kind, component_id: str) -> bool:
        """Whether a pipeline names this component where one of its kind goes. Per section: an exporter ``otlp``
        no pipeline uses is unused also when a receiver ``otlp`` is (the Collector's usual layout)."""
        pipelines = [pipeline for pipeline in self.service.pipelines.values() if pipeline]
        if kind in (Kind.RECEIVER, Kind.CONNECTOR) and any(component_id in p.receivers for p in pipelines):
            return True
        if kind in (Kind.EXPORTER, Kind.CONNECTOR) and any(component_id in p.exporters for p in pipelines):
            return True
        return kind is Kind.PROCESSOR and any(component_id in p.processors for p in pipelines)

    def effective(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        """The config with every default filled in, as plain data (``print-config``)."""
        out: dict[str, Any] = {}
        for kind in (Kind.RECEIVER, Kind.PROCESSOR, Kind.CONNECTOR, Kind.EXPORTER):
            components = self.section(kind)
            if components:
                out[kind.section] = {
                    cid: to_plain(c.config, mask_secrets=mask_secrets) for cid, c in components.items()
                }
        out["service"] = to_plain(self.service, mask_secrets=mask_secrets)
        return out


def default_config_text() -> str:
    return resources.files("agent").joinpath("default_config.yaml").read_text()


def load_path(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Load a config file, or the packaged default config when ``path`` is None."""
    if path is None:
        return load_text(default_config_text(), environ)
    try:
        size = Path(path).stat().st_size
        if size > MAX_CONFIG_BYTES:
            # Parsing takes seconds per MB (34 s for 9 MB): refuse before, rather than hold a start or a reload.
            message = f"config file {path} is {size:_} bytes; at most {MAX_CONFIG_BYTES:_} (4 MiB) are read"
            raise ConfigInvalid([ConfigError("", message)])
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigInvalid([ConfigError("", f"cannot read config file {path}: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigInvalid([ConfigError("", f"config file {path} is not UTF-8 text: {exc}")]) from None
    return load_text(text, environ)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _keys_written_twice(loader: yaml.SafeLoader, root: yaml.Node | None) -> list[ConfigError]:
    """Each key written again in one mapping, at its config path: an error, as in the Collector, since keeping the
    last one silently would drop half of what the operator wrote (two ``traces:`` pipelines). Found on the
    composed nodes, so that the path is known and the other problems are listed beside it; keys are compared as
    YAML builds them (``1``, ``0x1`` and ``true`` are one key of a Python dict)."""
    found: list[tuple[int, ConfigError]] = []
    visited: set[int] = set()  # an anchor's node is walked once, at its own place, however often it is used
    pending: list[tuple[yaml.Node, str]] = [] if root is None else [(root, "")]
    while pending:  # depth first, in document order: an anchor comes before its aliases
        node, path = pending.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            pending.extend(reversed([(item, join_path(path, index)) for index, item in enumerate(node.value)]))
        elif isinstance(node, yaml.MappingNode):
            children: list[tuple[yaml.Node, str]] = []
            first: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue  # `<<: *anchor` may be overridden; a list or mapping as a key is refused when built
                key = loader.construct_object(key_node, deep=True)
                child = join_path(path, str(key))
                try:
                    earlier = first.get(key)
                    first[key] = key_node  # a third is reported against the second
                except TypeError:  # not hashable: refused when the document is built
                    continue
                if earlier is not None:
                    found.append((key_node.start_mark.line, ConfigError(child, _written_twice(earlier, key_node))))
                children.append((value_node, child))
            pending.extend(reversed(children))
    return [error for _, error in sorted(found, key=lambda item: item[0])]


def _written_twice(earlier: yaml.Node, later: yaml.Node) -> str:
    if earlier is later:  # an alias of the key (`*k`): the composed node is the anchored one, where it was written
        where = f"line {earlier.start_mark.line + 1}, and again as an alias of it"
    else:
        where = f"lines {earlier.start_mark.line + 1} and {later.start_mark.line + 1}"
    return f"written twice in one mapping ({where}); a key may appear once"


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML whose numbers remember how they were written (:class:`YamlInt`, :class:`YamlFloat`)."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> YamlInt:  # type: ignore[override]
        number = YamlInt(super().construct_yaml_int(node))
        number.source = node.value
        return number

    def construct_yaml_float(self, node: yaml.ScalarNode) -> YamlFloat:  # type: ignore[override]
        number = YamlFloat(super().construct_yaml_float(node))
        number.source = node.value
        return number


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)
_ConfigLoader.add_constructor("tag:yaml.org,2002:float", _ConfigLoader.construct_yaml_float)


def parse_yaml(text: str) -> tuple[Any, list[ConfigError]]:
    """The document, and the keys it writes twice (the last one is what the document holds)."""
    loader = _ConfigLoader(text)
    try:
        root = loader.get_single_node()
        written_twice = _keys_written_twice(loader, root)  # first: building merges `<<` keys into the nodes
        return (loader.construct_document(root) if root is not None else None), written_twice
    finally:
        loader.dispose()


def load_text(text: str, environ: Mapping[str, str] | None = None) -> AgentConfig:
    try:
        raw, written_twice = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigInvalid([ConfigError("", f"not valid YAML: {exc}")]) from None
    except ValueError as exc:  # PyYAML's own value errors, e.g. a date like 2001-13-45
        raise ConfigInvalid([ConfigError("", f"not valid YAML: {exc}")]) from None
    except (KeyError, IndexError, AttributeError, TypeError) as exc:
        # PyYAML's own, for a tagged value it has no reading of: `!!bool maybe`, `!!int ''`, `!!timestamp x`
        raise ConfigInvalid([ConfigError("", f"not valid YAML: a tagged value it cannot read ({exc!r})")]) from None
    except RecursionError:
        raise ConfigInvalid([ConfigError("", "not valid YAML: nested too deeply")]) from None
    if expands_past(raw, MAX_CONFIG_VALUES):
        message = f"holds more than {MAX_CONFIG_VALUES} values, counting each use of a YAML alias"
        raise ConfigInvalid([ConfigError("", message)])
    errors: list[ConfigError] = written_twice
    environ = os.environ if environ is None else environ
    substituted: dict[str, _Substituted] = {}
    bare = _bare_references(raw, "")
    raw = substitute_env(raw, "", environ, errors, substituted)
    substitution_failed = {e.path for e in errors}
    substitution_errors = len(errors)
    config = parse(raw, errors)
    # A value whose variable is missing fails validation too; the missing variable is the one thing to say.
    errors[substitution_errors:] = [
        _with_bare_reference_hint(_naming_variables(e, substituted), bare)
        for e in errors[substitution_errors:]
        if e.path not in substitution_failed
    ]
    if errors:
        raise ConfigInvalid(errors)
    assert config is not None
    return config


# A config is a few KB; price tables are files of their own.
MAX_CONFIG_BYTES = 4 * 2**20

# A YAML alias is one object however often it is used, but every walk of the config (substitution, parsing)
# visits it at each use: nine levels of ten aliases each are a few lines of text and 10**9 values to walk.
MAX_CONFIG_VALUES = 100_000


def expands_past(node: Any, budget: int) -> bool:
    """Whether walking ``node`` as a tree (aliases expanded) visits more than ``budget`` values."""
    pending = [node]
    while pending:
        budget -= 1
        if budget < 0:
            return True
        current = pending.pop()
        if isinstance(current, dict):
            pending.extend(current.values())
        elif isinstance(current, list):
            pending.extend(current)
    return False


@dataclass(frozen=True)
class _Substituted:
    names: list[str]  # the variables a value took, in order
    structure: bool  # the value is a list or mapping: errors below its path are about it too


def _naming_variables(error: ConfigError, substituted: Mapping[str, _Substituted]) -> ConfigError:
    """``error`` saying which environment variables its value came from, when it did: an operator who set only
    ``OTEL_SIDECAR_CRITICAL_SERVICES`` does not know which setting reads it."""
    path = error.path
    while path:
        found = substituted.get(path)
        if found is not None and (path == error.path or found.structure):
            variables = ", ".join(f"${{env:{name}}}" for name in found.names)
            return ConfigError(error.path, f"{error.message} (the value comes from {variables})")
        path = _parent_path(path)
    return error


# $NAME, which the Collector once read as an environment variable and this agent (as the Collector now) takes as
# text; not $$NAME, a literal $ followed by NAME.
_BARE_REFERENCE = re.compile(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")


def _bare_references(node: Any, path: str, found: dict[str, str] | None = None) -> dict[str, str]:
    """The paths of string values holding a ``$NAME``, and the first such name in each."""
    found = {} if found is None else found
    if isinstance(node, dict):
        for key, value in node.items():
            _bare_references(value, join_path(path, str(key)), found)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _bare_references(value, join_path(path, index), found)
    elif isinstance(node, str) and (match := _BARE_REFERENCE.search(node)):
        found[path] = match.group(1)
    return found


def _with_bare_reference_hint(error: ConfigError, bare: Mapping[str, str]) -> ConfigError:
    """A value refused while it holds ``$NAME`` is most likely an environment variable written the old way: say
    how to write it. A value accepted with one is left alone (a password may hold a $)."""
    name = bare.get(error.path)
    if name is None:
        return error
    hint = f"${name} is taken as text: write ${{env:{name}}} for the environment variable"
    return ConfigError(error.path, f"{error.message} ({hint})")


def _parent_path(path: str) -> str:
    """``a.b`` for ``a.b.c`` and for ``a.b[0]``; "" at the top."""
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


def substitute_env(
    node: Any,
    path: str,
    environ: Mapping[str, str],
    errors: list[ConfigError],
    substituted: dict[str, _Substituted] | None = None,
) -> Any:
    """Replace ``${env:NAME}``, ``${env:NAME:-default}`` and ``${NAME}`` in every string value; ``$$`` is a
    literal ``$``.

    A value that is a single reference is re-read as YAML, so ``${env:PORT}`` can yield a number, a list or a
    mapping; it keeps its exact text beside (:class:`EnvText`), which is what a string field takes: the field
    type decides, not the look of the text (a regex ``[0-9]`` is not a list to a string field).
    """
    if isinstance(node, dict):
        return {k: substitute_env(v, join_path(path, str(k)), environ, errors, substituted) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute_env(v, join_path(path, i), environ, errors, substituted) for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node
    problems: list[str] = []
    used: list[str] = []
    try:
        result, end = _reference(node, 0, environ, problems, used) if node.startswith("${") else ("", -1)
        whole = end == len(node) and not problems
        if not whole:
            problems.clear()
            used.clear()
            result, _, _ = _expand(node, 0, environ, problems, used, in_default=False)
    except RecursionError:
        errors.append(ConfigError(path, "references nested too deeply"))
        return node
    errors.extend(ConfigError(path, problem) for problem in problems)
    value: Any = result
    if whole and result:
        try:
            parsed = yaml.safe_load(result)
        except (yaml.YAMLError, ValueError, RecursionError):
            parsed = result
        if parsed != result and not expands_past(parsed, MAX_CONFIG_VALUES):
            value = EnvText(result, parsed)  # else as text: a field wanting a structure says it got a string
    if substituted is not None and used:
        structure = isinstance(value, EnvText) and isinstance(value.parsed, dict | list)
        substituted[path] = _Substituted(list(dict.fromkeys(used)), structure)
    return value


def _expand(
    text: str, start: int, environ: Mapping[str, str], problems: list[str], used: list[str], *, in_default: bool
) -> tuple[str, int, bool]:
    """``text`` from ``start`` with its references replaced, to its end, or in a default to the ``}`` closing it;
    the index after what was read; and whether a default was closed. ``used``: the variables whose values it
    took."""
    out: list[str] = []
    index = start
    while index < len(text):
        if in_default and text[index] == "}":
            return "".join(out), index + 1, True
        if text.startswith("$$", index):
            out.append("$")
            index += 2
        elif text.startswith("${", index):
            value, index = _reference(text, index, environ, problems, used)
            out.append(value)
        else:
            out.append(text[index])
            index += 1
    return "".join(out), index, False


def _reference(
    text: str, start: int, environ: Mapping[str, str], problems: list[str], used: list[str]
) -> tuple[str, int]:
    """The value of the reference at ``text[start:]`` (``${env:NAME}``, ``${env:NAME:-default}``, ``${NAME}``) and
    the index after it. A default may hold references itself, expanded innermost first as the Collector does;
    the problems and variables of those count only when the default is used."""
    name_match = _ENV_NAME.match(text, start + 2)
    if name_match is None:
        problems.append(_BAD_REFERENCE)
        return "${", start + 2
    name, after_name = name_match.group(1), name_match.end()
    default: str | None = None
    default_problems: list[str] = []
    default_used: list[str] = []
    if text.startswith("}", after_name):
        end = after_name + 1
    elif text.startswith(":-", after_name):
        default, end, closed = _expand(text, after_name + 2, environ, default_problems, default_used, in_default=True)
        if not closed:
            problems.append(f"'}}' missing: the default of {name} runs to the end of the value")
    else:
        problems.append(_BAD_REFERENCE)
        return "${", start + 2
    if name in environ:
        used.append(name)
        return environ[name], end
    if default is not None:
        problems.extend(default_problems)
        used.extend(default_used)
        return default, end
    problems.append(f"environment variable {name} is not set and has no default")
    return "", end


def parse(raw: Any, errors: list[ConfigError]) -> AgentConfig | None:
    from agent.registry import factories_for

    raw = EnvText.structure(raw)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(ConfigError("", "the config must be a mapping with receivers, exporters and service"))
        return None
    for key in raw:
        if key == "extensions":
            errors.append(ConfigError(str(key), NO_EXTENSIONS))
        elif key not in _SECTIONS:
            errors.append(ConfigError(str(key), f"unknown section; expected one of {', '.join(_SECTIONS)}"))
    sections: dict[str, dict[str, ComponentConfig]] = {}
    # Defined but with errors, by id: the kinds it was defined as, each with its type when that is known. A pipeline
    # naming one where that kind goes is not wrong too, though what signals one of a known type takes is checked.
    invalid: dict[str, list[tuple[Kind, ComponentConfig | None]]] = {}
    for kind in (Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER, Kind.CONNECTOR):
        section = EnvText.structure(raw.get(kind.section))
        factories = factories_for(kind)
        sections[kind.section] = _parse_components(kind, section, factories, errors)
        if isinstance(section, dict):
            for cid in section:
                if cid not in sections[kind.section]:
                    factory = factories.get(str(cid).split("/", 1)[0])
                    typed = ComponentConfig(str(cid), kind, factory, None) if factory else None
                    invalid.setdefault(str(cid), []).append((kind, typed))
    service = build(ServiceConfig, raw.get("service"), "service", errors)
    # Settings that stand for nothing written: failed, or holding a variable that was not set (its value is "").
    failed = [error.path for error in errors]
    if service is None:
        # Still name the pipelines' undefined or wrong components: validate lists every problem, not the first.
        salvaged = AgentConfig(service=ServiceConfig(), **sections)
        for pipeline_id, pipeline in _pipelines_as_written(raw.get("service")).items():
            problem = pipeline_id_problem(pipeline_id)
            bad_id = ConfigError(f"service.pipelines.{pipeline_id}", problem) if problem else None
            if bad_id is not None and bad_id not in errors:
                errors.append(bad_id)
            _check_pipeline(salvaged, pipeline_id, pipeline, invalid, errors)
        _check_across_sections_salvaged(raw, sections, failed, errors)
        return None
    config = AgentConfig(service=service, **sections)
    for pipeline_id, pipeline in service.pipelines.items():
        if pipeline is not None:
            _check_pipeline(config, pipeline_id, pipeline, invalid, errors)
    if failed:
        _check_across_sections_salvaged(raw, sections, failed, errors)
    else:
        _check_across_sections(config, errors)
    _check_listen_addresses(config, errors)
    return config


def _check_across_sections(config: AgentConfig, errors: list[ConfigError]) -> None:
    _check_connectors_used_both_ways(config, errors)
    _cross_check_components(config, errors)  # an unknown class is the cause of a class none takes: said first
    _check_every_class_routed(config, errors)


def _check_across_sections_salvaged(
    raw: dict[Any, Any], sections: dict[str, dict[str, ComponentConfig]], failed: list[str], errors: list[ConfigError]
) -> None:
    """The checks across sections, run although some settings ``failed`` (their paths), so that one run of
    validate finds what a second would (an unknown retention class beside a misspelt log level). Each section
    holding one takes part with it left out, its default standing in; what the checks then say under a setting
    left out, or say of a component that had one left out from another's check, would be about a default, not
    the config, and is not said. Nothing is checked when ``service.pipelines`` or ``service.retention`` failed:
    what these checks read."""
    from agent.registry import factories_for

    service = _salvaged(ServiceConfig, raw.get("service"), "service", failed, {"pipelines", "retention"})
    if service is None:
        return
    left_out: list[str] = []  # paths of the settings left out
    salvaged_components: list[str] = []
    salvaged_sections = {section: dict(components) for section, components in sections.items()}
    for kind in (Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER, Kind.CONNECTOR):
        section = EnvText.structure(raw.get(kind.section))
        for cid, body in section.items() if isinstance(section, dict) else ():
            factory = factories_for(kind).get(str(cid).split("/", 1)[0])
            if factory is None or not _COMPONENT_ID.fullmatch(str(cid)):
                continue
            path = join_path(kind.section, cid)
            keys = _settings_left_out(failed, path)
            if cid in sections[kind.section] and keys == set():
                continue  # nothing failed in it: taken as parsed
            salvaged_sections[kind.section].pop(cid, None)
            settings = _salvaged(factory.config_class, body, path, failed)
            if settings is not None:
                salvaged_sections[kind.section][cid] = ComponentConfig(cid, kind, factory, settings)
                salvaged_components.append(path)
                left_out += [join_path(path, key) for key in keys or ()]
    found: list[ConfigError] = []
    _check_across_sections(AgentConfig(service=service, **salvaged_sections), found)
    for error in found:
        under_a_default = any(_is_under(error.path, path) for path in left_out)
        of_another_salvaged = any(
            re.search(re.escape(path) + r"(?![\w/.-])", error.message) and not _is_under(error.path, path)
            for path in salvaged_components
        )
        if not under_a_default and not of_another_salvaged and error not in errors:
            errors.append(error)


def _salvaged(
    cls: type[Any], raw: Any, path: str, failed: list[str], needed: frozenset[str] | set[str] = frozenset()
) -> Any | None:
    """``cls`` built from ``raw`` without the settings whose paths are among ``failed``, or None if it cannot be
    (the section failed as a whole, a ``needed`` setting failed, or leaving them out fails it)."""
    raw = EnvText.structure(raw)
    left_out = _settings_left_out(failed, path)
    if left_out is None or left_out & needed or not isinstance(raw, dict | None):
        return None
    rest = {key: value for key, value in (raw or {}).items() if str(key) not in left_out}
    problems: list[ConfigError] = []
    built = build(cls, rest, path, problems)
    return None if problems else built


def _settings_left_out(failed: list[str], path: str) -> set[str] | None:
    """The settings of the section at ``path`` that an error's path lies in (``tls`` of
    ``exporters.otlp.tls.insecure``); None if the section itself failed."""
    keys: set[str] = set()
    for failed_path in failed:
        if failed_path == path:
            return None
        if failed_path.startswith(f"{path}."):
            keys.add(re.split(r"[.\[]", failed_path[len(path) + 1 :], maxsplit=1)[0])
    return keys


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith((f"{parent}.", f"{parent}["))


def _pipelines_as_written(raw_service: Any) -> dict[str, PipelineConfig]:
    """The pipelines of a ``service`` section that did not build, each read as far as its component lists are
    lists of names (whatever else is wrong with it or around it)."""
    raw_service = EnvText.structure(raw_service)
    pipelines = raw_service.get("pipelines") if isinstance(raw_service, dict) else None
    if not isinstance(pipelines, dict):
        return {}
    readable: dict[str, PipelineConfig] = {}
    for pipeline_id, pipeline in pipelines.items():
        if not isinstance(pipeline, dict):
            continue
        lists = {section: pipeline.get(section) or [] for section in ("receivers", "processors", "exporters")}
        if all(isinstance(names, list) and all(isinstance(n, str) for n in names) for names in lists.values()):
            readable[str(pipeline_id)] = PipelineConfig(**lists)
    return readable


def _check_listen_addresses(config: AgentConfig, errors: list[ConfigError]) -> None:
    """Two servers of this agent on one address would fail the start; say so at validation, with both paths.

    Listen addresses are the ``HostPort`` settings of the components pipelines use (a section switched off with
    ``enabled: false`` does not listen) and the admin endpoint.
    """
    listeners: list[tuple[str, HostPort]] = [
        ("service.telemetry.admin.endpoint", config.service.telemetry.admin.endpoint)
    ]
    for kind in (Kind.RECEIVER, Kind.EXPORTER):
        for component_id, component in config.section(kind).items():
            if config.in_a_pipeline(kind, component_id):
                listeners += _host_ports(component.config, join_path(kind.section, component_id))
    for index, (path, address) in enumerate(listeners):
        for other_path, other in listeners[:index]:
            if address.port == other.port and address.port != 0 and _hosts_overlap(address.host, other.host):
                errors.append(ConfigError(path, f"{address} is also where {other_path} listens"))


def _host_ports(settings: Any, path: str) -> list[tuple[str, HostPort]]:
    if not dataclasses.is_dataclass(settings) or getattr(settings, "enabled", True) is False:
        return []
    found: list[tuple[str, HostPort]] = []
    for spec in dataclasses.fields(settings):
        value = getattr(settings, spec.name)
        if isinstance(value, HostPort):
            found.append((join_path(path, spec.name), value))
        else:
            found += _host_ports(value, join_path(path, spec.name))
    return found


_ANY_HOST = frozenset({"0.0.0.0", "::", ""})


def _hosts_overlap(one: str, other: str) -> bool:
    return one == other or one in _ANY_HOST or other in _ANY_HOST


def _cross_check_components(config: AgentConfig, errors: list[ConfigError]) -> None:
    for kind in (Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER, Kind.CONNECTOR):
        for component_id, component in config.section(kind).items():
            check = component.factory.cross_check
            if check is None:
                continue
            base = join_path(kind.section, component_id)
            for sub, message in check(component.config, config):
                errors.append(ConfigError(join_path(base, sub) if sub else base, message))


def _parse_components(
    kind: Kind, raw: Any, factories: Mapping[str, Factory[Any]], errors: list[ConfigError]
) -> dict[str, ComponentConfig]:
    section = kind.section
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append(ConfigError(section, "must be a mapping of component ids to their settings"))
        return {}
    out: dict[str, ComponentConfig] = {}
    for component_id, body in raw.items():
        path = join_path(section, str(component_id))
        if not isinstance(component_id, str) or not _COMPONENT_ID.fullmatch(component_id):
            errors.append(ConfigError(path, "component id must be type or type/name (lower_snake_case type)"))
            continue
        type_name = component_id.split("/", 1)[0]
        factory = factories.get(type_name)
        if factory is None:
            known = ", ".join(sorted(factories)) or "none"
            hint = _COLLECTOR_TYPES.get((kind.value, type_name), "")
            message = f"unknown {kind.value} type {type_name!r}; known types: {known}"
            errors.append(ConfigError(path, f"{message}; {hint}" if hint else message))
            continue
        config = build(factory.config_class, body, path, errors)
        if config is not None:
            out[component_id] = ComponentConfig(component_id, kind, factory, config)
    return out


# The OpenTelemetry Collector's components a config written for it often has, and what serves their purpose here.
_COLLECTOR_TYPES = {
    ("processor", "batch"): "batching is each exporter's own here, in exporters.<id>.batch (min_size, max_size, "
    "flush_timeout): remove this processor and its pipeline entries",
    ("processor", "probabilistic_sampler"): "sampling is tail_sampling's: its probabilistic policy keeps a share of "
    "normal traces, consistent by trace id",
    ("exporter", "debug"): "to see what goes out, use the file exporter (OTLP/JSON lines), or nop to discard",
    ("exporter", "logging"): "to see what goes out, use the file exporter (OTLP/JSON lines), or nop to discard",
    ("exporter", "otlphttp"): "use otlp with protocol: http/protobuf and a base URL such as http://jaeger:4318",
}


def _check_pipeline(
    config: AgentConfig,
    pipeline_id: str,
    pipeline: PipelineConfig,
    invalid: Mapping[str, list[tuple[Kind, ComponentConfig | None]]],
    errors: list[ConfigError],
) -> None:
    try:
        signal = Signal(pipeline_id.split("/", 1)[0])
    except ValueError:
        return  # reported by ServiceConfig.validate
    base = f"service.pipelines.{pipeline_id}"
    for index, name in enumerate(pipeline.receivers):
        path = f"{base}.receivers[{index}]"
        if name in config.connectors:
            _require_output_signal(config.connectors[name], signal, path, errors)
        elif name in config.receivers:
            _require_signal(config.receivers[name], signal, path, errors)
        elif _invalid_here(invalid, name, (Kind.CONNECTOR, Kind.RECEIVER), signal, path, errors):
            continue
        else:
            errors.append(
                ConfigError(
                    path,
                    _undefined("receiver", name, "receivers or connectors", [*config.receivers, *config.connectors]),
                )
            )
    for index, name in enumerate(pipeline.processors):
        path = f"{base}.processors[{index}]"
        if name in config.processors:
            _require_signal(config.processors[name], signal, path, errors)
        elif not _invalid_here(invalid, name, (Kind.PROCESSOR,), signal, path, errors):
            errors.append(ConfigError(path, _undefined("processor", name, "processors", config.processors)))
    for index, name in enumerate(pipeline.exporters):
        path = f"{base}.exporters[{index}]"
        component = config.exporters.get(name) or config.connectors.get(name)
        if component is None and _invalid_here(invalid, name, (Kind.EXPORTER, Kind.CONNECTOR), signal, path, errors):
            continue
        if component is None:
            errors.append(
                ConfigError(
                    path,
                    _undefined("exporter", name, "exporters or connectors", [*config.exporters, *config.connectors]),
                )
            )
        else:
            _require_signal(component, signal, path, errors)


def _undefined(role: str, name: str, sections: str, defined: Iterable[str]) -> str:
    """With the defined id it most likely meant; quoted when blank at either end, else a stray space is unseen."""
    close = difflib.get_close_matches(name.strip(), list(defined), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    shown = repr(name) if not name or name != name.strip() else name
    return f"{role} {shown} is not defined under {sections}{hint}"


def _invalid_here(
    invalid: Mapping[str, list[tuple[Kind, ComponentConfig | None]]],
    name: str,
    kinds: tuple[Kind, ...],
    signal: Signal,
    path: str,
    errors: list[ConfigError],
) -> bool:
    """Whether ``name`` at ``path``, defined nowhere valid, is a component defined with errors as one of
    ``kinds`` (those a pipeline takes there, in the order valid ones are looked up: a connector before a receiver
    of the same id, an exporter before a connector). Its settings are reported already; its type, when known,
    still has to take the pipeline's signal, which is said now rather than after its settings are fixed."""
    defined = sorted(
        ((kind, typed) for kind, typed in invalid.get(name, ()) if kind in kinds), key=lambda d: kinds.index(d[0])
    )
    if not defined:
        return False  # not defined with errors as a kind that goes here: checked as any other name
    typed = [component for _, component in defined if component is not None]  # not of a type no factory knows
    if typed:
        component = typed[0]
        if component.kind is Kind.CONNECTOR and Kind.RECEIVER in kinds:  # feeding the pipeline
            _require_output_signal(component, signal, path, errors)
        else:
            _require_signal(component, signal, path, errors)
    return True


def _require_output_signal(connector: ComponentConfig, signal: Signal, path: str, errors: list[ConfigError]) -> None:
    if signal not in connector.factory.output_signals:
        errors.append(ConfigError(path, f"connector {connector.id} does not produce {signal}"))


def _require_signal(component: ComponentConfig, signal: Signal, path: str, errors: list[ConfigError]) -> None:
    if signal not in component.factory.signals:
        supported = ", ".join(sorted(component.factory.signals))
        errors.append(ConfigError(path, f"{component.id} does not support {signal} (supports {supported})"))


def _check_every_class_routed(config: AgentConfig, errors: list[ConfigError]) -> None:
    """A pipeline whose exporters all list ``retention_classes`` must take every defined class between them:
    data of a class none of them takes would otherwise be dropped without a trace (kept by the sampler,
    exported nowhere, counted nowhere). Exporters that only derive other data from the pipeline's items (Loki's
    log lines from span events, span metrics) deliver none of them, whatever classes they take."""
    defined = list(config.service.retention.classes)
    for pipeline_id, pipeline in config.service.pipelines.items():
        if pipeline is None or not pipeline.exporters:
            continue
        try:
            signal = Signal(pipeline_id.split("/", 1)[0])
        except ValueError:  # reported by _check_pipeline
            continue
        taken: set[str] = set()
        takes_all = False
        deriving: list[str] = []
        for name in pipeline.exporters:
            component = config.exporters.get(name) or config.connectors.get(name)
            if component is None:  # reported by _check_pipeline
                takes_all = True
                break
            if not component.factory.delivers_items_of(signal):
                deriving.append(name)
                continue
            classes = getattr(component.config, "retention_classes", None)
            if not classes:  # takes every class
                takes_all = True
                break
            taken.update(classes)
        if takes_all or len(deriving) == len(pipeline.exporters):  # nothing delivers: no routing by class
            continue
        missing = [name for name in defined if name not in taken]
        if missing:
            item = {Signal.TRACES: "spans", Signal.LOGS: "log records", Signal.METRICS: "data points"}[signal]
            besides = f" (beside {', '.join(deriving)}, which pass(es) on no {item})" if deriving else ""
            errors.append(
                ConfigError(
                    f"service.pipelines.{pipeline_id}.exporters",
                    f"no exporter takes retention class(es) {', '.join(missing)} (each lists retention_classes)"
                    f"{besides}: that data would be dropped; add an exporter without retention_classes or list them",
                )
            )


def _check_connectors_used_both_ways(config: AgentConfig, errors: list[ConfigError]) -> None:
    pipelines = config.service.pipelines.values()
    for connector_id in config.connectors:
        as_exporter = any(connector_id in p.exporters for p in pipelines if p)
        as_receiver = any(connector_id in p.receivers for p in pipelines if p)
        if as_exporter != as_receiver:
            missing = "a receiver" if as_exporter else "an exporter"
            errors.append(
                ConfigError(f"connectors.{connector_id}", f"a connector must also be used as {missing} in a pipeline")
            )
