"""Which span attributes the connector reads: a ``key -> slot`` table built once from the config, and roles.

A span's attributes are scanned once: each key of interest puts its value in a slot of a per-span list and
ORs its *roles* (workflow name, step type, one bit per GenAI concept...) into an int. Recording then skips
every role the span has no key for without looking at the slots: most spans carry one role, or none.
"""

from __future__ import annotations

import re

from agent.connectors.spanmetrics.config import GenAiAttributesConfig, SpanMetricsConfig
from agent.connectors.spanmetrics.genai import ALIASES, VERCEL_5_CACHE_READ, Concept

ROLE_WORKFLOW = 1 << 0
ROLE_STEP_TYPE = 1 << 1
ROLE_STEP_STATUS = 1 << 2
ROLE_ERROR_TYPE = 1 << 3
ROLE_COMPONENT = 1 << 4


def concept_role(concept: Concept) -> int:
    return 1 << (5 + concept)


ROLE_PROVIDER = concept_role(Concept.PROVIDER)
ROLE_REQUEST_MODEL = concept_role(Concept.REQUEST_MODEL)
ROLE_RESPONSE_MODEL = concept_role(Concept.RESPONSE_MODEL)
ROLE_OPERATION = concept_role(Concept.OPERATION)
ROLE_OPENINFERENCE_KIND = concept_role(Concept.OPENINFERENCE_KIND)
ROLE_TRACELOOP_KIND = concept_role(Concept.TRACELOOP_KIND)
ROLE_INPUT = concept_role(Concept.INPUT)
ROLE_OUTPUT = concept_role(Concept.OUTPUT)
ROLE_TOTAL = concept_role(Concept.TOTAL)
ROLE_CACHE_READ = concept_role(Concept.CACHE_READ)
ROLE_CACHE_WRITE = concept_role(Concept.CACHE_WRITE)
ROLE_REASONING = concept_role(Concept.REASONING)
ROLE_INPUT_DETAILS = concept_role(Concept.INPUT_DETAILS)
ROLE_OUTPUT_DETAILS = concept_role(Concept.OUTPUT_DETAILS)
ROLE_MODEL = ROLE_REQUEST_MODEL | ROLE_RESPONSE_MODEL


_EXTRA_KEYS_OF = {
    Concept.PROVIDER: "provider",
    Concept.REQUEST_MODEL: "request_model",
    Concept.RESPONSE_MODEL: "response_model",
    Concept.INPUT: "input_tokens",
    Concept.OUTPUT: "output_tokens",
    Concept.TOTAL: "total_tokens",
    Concept.CACHE_READ: "cache_read_tokens",
    Concept.CACHE_WRITE: "cache_write_tokens",
    Concept.REASONING: "reasoning_tokens",
}


def aliases_with(extra: GenAiAttributesConfig) -> dict[Concept, tuple[str, ...]]:
    """The built-in aliases of each GenAI concept, after the operator's own keys for it."""
    out = {}
    for concept, aliases in ALIASES.items():
        own = tuple(getattr(extra, _EXTRA_KEYS_OF[concept])) if concept in _EXTRA_KEYS_OF else ()
        out[concept] = (*own, *(key for key in aliases if key not in own))
    return out


class AttributeScanner:
    """Every attribute key the connector reads, mapped to a slot of a per-span value list and to its roles.

    The slots of each role are exposed as tuples in priority order (``workflow``, ``step_type``... and one per
    GenAI concept: ``operation``, ``input``...), ready for :func:`~agent.connectors.spanmetrics.genai.first_text`
    and friends.
    """

    def __init__(self, cfg: SpanMetricsConfig) -> None:
        attrs = cfg.attributes
        aliases_of = aliases_with(cfg.genai.attributes)
        roles: dict[str, int] = {}  # key -> roles, in first-seen order (the slot order)
        for concept, aliases in aliases_of.items():
            for key in aliases:
                roles[key] = roles.get(key, 0) | concept_role(concept)
        for role, keys in (
            (ROLE_WORKFLOW, attrs.workflow_name),
            (ROLE_STEP_TYPE, attrs.step_type),
            (ROLE_STEP_STATUS, attrs.step_status),
            (ROLE_ERROR_TYPE, attrs.error_type),
            (ROLE_COMPONENT, attrs.component),
        ):
            for key in keys:
                roles[key] = roles.get(key, 0) | role
        self.slot_of = {key: index for index, key in enumerate(roles)}
        self.roles_of_slot = list(roles.values())
        self.size = len(roles)
        slot_of = self.slot_of
        # Indexed by Concept (an IntEnum): the slots of each concept's aliases, by priority.
        slots = [tuple(slot_of[key] for key in aliases_of[concept]) for concept in Concept]
        self.workflow = tuple(slot_of[k] for k in attrs.workflow_name)
        self.step_type = tuple(slot_of[k] for k in attrs.step_type)
        self.step_status = tuple(slot_of[k] for k in attrs.step_status)
        self.error_type = tuple(slot_of[k] for k in attrs.error_type)
        self.component = tuple(slot_of[k] for k in attrs.component)
        self.provider = slots[Concept.PROVIDER]
        self.request_model = slots[Concept.REQUEST_MODEL]
        self.response_model = slots[Concept.RESPONSE_MODEL]
        self.operation = slots[Concept.OPERATION]
        self.openinference_kind = slots[Concept.OPENINFERENCE_KIND]
        self.traceloop_kind = slots[Concept.TRACELOOP_KIND]
        self.input = slots[Concept.INPUT]
        self.output = slots[Concept.OUTPUT]
        self.total = slots[Concept.TOTAL]
        self.cache_read = slots[Concept.CACHE_READ]
        self.vercel_5_cache_read = slot_of[VERCEL_5_CACHE_READ]
        self.cache_write = slots[Concept.CACHE_WRITE]
        self.reasoning = slots[Concept.REASONING]
        self.input_details = slots[Concept.INPUT_DETAILS]
        self.output_details = slots[Concept.OUTPUT_DETAILS]


_ENUM_VARIANT = re.compile(r"[A-Z][A-Za-z0-9]*")
_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def step_type_label(value: str) -> str:
    """A step type as the metric catalogue spells it: an enum variant's name in CamelCase, as a Rust
    orchestrator's ``step_type = ?step.step_type`` span field records it (``VectorSearch``), becomes
    snake_case (``vector_search``); anything else is kept as it is."""
    if not _ENUM_VARIANT.fullmatch(value):
        return value
    return _WORD_START.sub("_", value).lower()
