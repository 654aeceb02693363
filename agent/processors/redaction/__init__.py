"""``redaction`` processor: secrets and prompt content never leave the agent.

Attribute keys matching ``key_patterns`` get ``[REDACTED]`` values; credential-shaped text (``sk-…`` keys,
``Bearer …``, AWS access keys …) is masked wherever it appears, log bodies included; GenAI prompt and completion
content is removed unless ``capture_content``. Span metrics are computed before it (in their own pipeline) and
need none of that content.
"""

from __future__ import annotations

from agent.component import Factory, Kind, Signal
from agent.processors.redaction.config import RedactionConfig
from agent.processors.redaction.processor import RedactionProcessor, create

FACTORY: Factory[RedactionConfig] = Factory(
    kind=Kind.PROCESSOR,
    type="redaction",
    config_class=RedactionConfig,
    signals=frozenset({Signal.TRACES, Signal.LOGS, Signal.METRICS}),
    create=create,
    description="Redacts secrets (by attribute key and by credential shape, log bodies and metric labels "
    "included) and drops GenAI prompt/completion content unless capture_content; counted per rule.",
    mutates_data=True,
    retains_data=False,  # rewrites each batch in place and passes it straight on
)

__all__ = ["FACTORY", "RedactionConfig", "RedactionProcessor"]
