"""A broken config gets path-qualified errors at load, and a config that loads builds: property tests over the
shipped configs with random edits (values replaced by any YAML value, keys removed or added)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config.loader import load_text
from agent.config.schema import ConfigInvalid
from agent.pipeline.graph import Graph
from agent.telemetry.selfmetrics import SelfMetrics
from tests.helpers import REPO

SHIPPED = [
    yaml.safe_load((REPO / path).read_text())
    for path in ("agent/default_config.yaml", "config/agent.yaml", "config/gateway.yaml", "config/sidecar-gateway.yaml")
]
SECTIONS = ("receivers", "processors", "connectors", "exporters", "service", "extensions")

ANY_YAML = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["", "0", "-1", "10s", "-5s", "http://", "localhost:0", "[::1]:4317", "${env:X}", "x" * 300]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def node_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from node_paths(child, (*prefix, key))


@st.composite
def edited_configs(draw: st.DrawFn) -> dict[str, Any]:
    config = copy.deepcopy(draw(st.sampled_from(SHIPPED)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(node_paths(config))))
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        key, action = path[-1], draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            parent[key] = draw(ANY_YAML)
        elif action == "remove":
            del parent[key]
        elif isinstance(parent[key], dict):
            parent[key][draw(st.text(min_size=1, max_size=8))] = draw(ANY_YAML)
        elif isinstance(parent[key], list):
            parent[key].append(draw(ANY_YAML))
    return config


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(edited_configs())
def test_an_edited_config_either_builds_or_is_refused_with_path_qualified_errors(config: dict[str, Any]) -> None:
    try:
        loaded = load_text(yaml.safe_dump(config), environ={})
    except ConfigInvalid as exc:
        assert exc.errors
        for error in exc.errors:
            assert error.message
            assert not error.path or error.path.split(".")[0].split("[")[0] in SECTIONS, str(error)
        return
    Graph(loaded, SelfMetrics())  # nothing a config check let through may fail here
