"""Every YAML example in docs/ is one the agent accepts: a key renamed or a bound changed fails here, not in the
hands of an operator who copied it.

Agent-config examples are fragments: each is merged over the config its page builds on (``config/agent.yaml``,
or ``config/sidecar-gateway.yaml`` for the gateway page) and the result is loaded as the agent loads a file.
Price-table examples are parsed as a price file. Examples of other programs' files are named in
``OTHER_FILES`` with the test that checks them, so a new example nobody classified fails here too.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config.loader import load_text
from agent.connectors.spanmetrics.pricing import parse_table

REPO = Path(__file__).resolve().parent.parent.parent
DOCS = REPO / "docs"
BASE_CONFIGS = {"gateway.md": REPO / "config" / "sidecar-gateway.yaml"}
DEFAULT_BASE = REPO / "config" / "agent.yaml"
PACKAGED_PRICES = REPO / "agent" / "pricing.yaml"
AGENT_SECTIONS = {"receivers", "processors", "connectors", "exporters", "service"}
PRICE_TABLE_KEYS = {"last_checked", "currency", "unit", "models"}
OTHER_FILES = {
    # first line of the example -> what checks it
    "scrape_configs:": "a Prometheus scrape config (tests/integration/test_prometheus_scrape.py scrapes the agent)",
    "# my-values.yaml": "Helm values (tests/integration/test_helm_chart.py renders the chart with them)",
    "spec:": "a pod template for injecting the agent by hand (Kubernetes, not the agent)",
    "apiVersion: apps/v1": "the parent-chart template (tests/integration/test_helm_chart.py renders it)",
}


def yaml_examples() -> list[tuple[str, str]]:
    """(``page:line``, text) of every fenced ``yaml`` block under docs/."""
    examples = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for match in re.finditer(r"^```yaml\n(.*?)^```", text, re.S | re.M):
            examples.append((f"{page.name}:{text.count(chr(10), 0, match.start()) + 1}", match.group(1)))
    return examples


EXAMPLES = yaml_examples()


def merged(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{key: merged(base.get(key), value) if key in base else value for key, value in over.items()}}
    return over


def as_whole_document(text: str) -> str:
    """An example cut out of a deeper level (indented) is put back under the section its page shows it in."""
    if not text.startswith(" "):
        return text
    if text.lstrip().startswith("sending_queue:"):  # an exporter's queue (docs/delivery.md)
        return "exporters:\n  otlp/jaeger:\n" + text
    return 'last_checked: "2026-11-26"\nmodels:\n' + text  # a price table's model entry (docs/metrics.md)


def kind_of(text: str, document: Any) -> str:
    if text.splitlines()[0] in OTHER_FILES:
        return "other"
    if isinstance(document, dict) and set(document) <= AGENT_SECTIONS:
        return "agent"
    if isinstance(document, dict) and set(document) <= PRICE_TABLE_KEYS:
        return "prices"
    return "unclassified"


def test_the_docs_have_yaml_examples_of_each_kind() -> None:
    kinds = [
        "other" if text.splitlines()[0] in OTHER_FILES else kind_of(text, yaml.safe_load(as_whole_document(text)))
        for _, text in EXAMPLES
    ]
    assert kinds.count("agent") >= 8 and kinds.count("prices") >= 2 and kinds.count("other") == len(OTHER_FILES)


@pytest.mark.parametrize(("where", "text"), EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_every_yaml_example_in_the_docs_is_accepted(where: str, text: str) -> None:
    if text.splitlines()[0] in OTHER_FILES:
        return  # checked where OTHER_FILES says
    whole = as_whole_document(text)
    document = yaml.safe_load(whole)
    kind = kind_of(text, document)
    assert kind != "unclassified", f"{where}: neither an agent config nor a price table; add it to OTHER_FILES"
    if kind == "prices":
        table = parse_table(whole, where)
        assert table.models, where
        return
    pricing = document.get("connectors", {}).get("spanmetrics", {}).get("pricing", {})
    if "file" in pricing:  # a path on the operator's machine
        pricing["file"] = str(PACKAGED_PRICES)
    page = where.split(":")[0]
    base = yaml.safe_load(BASE_CONFIGS.get(page, DEFAULT_BASE).read_text())
    config = merged(copy.deepcopy(base), document)
    load_text(yaml.safe_dump(config), environ={"JAEGER_TOKEN": "example"})
