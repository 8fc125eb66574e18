"""The output event, defined once: its model is the contract and the source of its key order.

``OutputEvent``'s own fields, in order, are the keys the worker appends to an input event. Both
routing paths lay their output out from it: the Python path (``records``) fills a per-topic
``template`` for each record, and the compiled path (``native``) is handed that template's
bytes, so a field added here reaches both without writing its name twice. ``logit-router
schema`` prints the JSON Schema of ``InputEvent`` and ``OutputEvent``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from worker.core.events import InputEvent
from worker.core.routing import Decision, EscalationReason

Probability = Annotated[float, Field(ge=0.0, le=1.0)]

# The dialect pydantic writes; named in the printed schema so that validators need not guess.
DIALECT = "https://json-schema.org/draft/2020-12/schema"


class PolicyOut(BaseModel):
    """The thresholds the decision was taken with (the input topic's policy)."""

    model_config = ConfigDict(frozen=True)

    min_margin: Probability
    min_top1: Probability | None


class Source(BaseModel):
    """Where the input event was read."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    timestamp: int | None


_ROUTED, _ESCALATED = get_args(Decision)
# An escalated event says why; a routed one has no reason (the output's and its shadow's).
_REASON_FITS_DECISION: JsonDict = {
    "if": {"properties": {"decision": {"const": _ROUTED}}},
    "then": {"properties": {"reason": {"type": "null"}}},
    "else": {"properties": {"reason": {"enum": list(get_args(EscalationReason))}}},
}


class ShadowOut(BaseModel):
    """What the topic's shadow policy decided for the event; it changed nothing."""

    model_config = ConfigDict(frozen=True, json_schema_extra=_REASON_FITS_DECISION)

    decision: Decision
    reason: EscalationReason | None
    margin: Probability = Field(description="top1 - top2 at the shadow's temperature")


class OutputEvent(InputEvent):
    """What the routed and escalated topics carry: the input event's fields as sent (unknown
    ones too), then these, in this order. A key the input already had keeps its place."""

    model_config = ConfigDict(json_schema_extra=_REASON_FITS_DECISION)

    decision: Decision
    label: str = Field(description="the event's label, else the topic's, else the class index")
    class_index: int = Field(ge=0)
    probabilities: tuple[Probability, ...]
    top1: Probability
    top2: Probability
    margin: Probability = Field(description="top1 - top2")
    entropy: float = Field(ge=0.0, description="in nats")
    temperature: float = Field(gt=0.0)
    policy: PolicyOut
    reason: EscalationReason | None
    # Beside the live decision it shadows; only topics with a shadow policy have the key.
    shadow: ShadowOut | None = Field(
        None, description="present only for input topics with a shadow policy"
    )
    source: Source
    config_version: str
    worker_version: str


# The keys the worker sets on an input event, in the order it appends them.
OUTPUT_KEYS: tuple[str, ...] = tuple(
    name for name in OutputEvent.model_fields if name not in InputEvent.model_fields
)

SCHEMAS: dict[str, type[BaseModel]] = {"input": InputEvent, "output": OutputEvent}


def json_schema(which: str) -> dict[str, Any]:
    """The JSON Schema of the input or the output event."""
    return {"$schema": DIALECT, **SCHEMAS[which].model_json_schema()}


class Slot:
    """A place in a template whose value each record gives; ``name`` is its field's path
    (``margin``, ``shadow.margin``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


PER_RECORD: Any = object()  # given to ``template`` for a field each record sets
ABSENT: Any = object()  # given for an optional field that this topic's outputs do not have


def template(values: Mapping[str, Any]) -> dict[str, Any]:
    """The output fields for one input topic, in ``OutputEvent``'s order: the values given, with
    each ``PER_RECORD`` turned into a ``Slot`` and each ``ABSENT`` field left out. Every field
    needs a value, and only fields may have one, so that a field added to the model cannot be
    left out silently."""
    return _laid_out(OutputEvent, OUTPUT_KEYS, values, "")


def _laid_out(
    model: type[BaseModel], names: tuple[str, ...], values: Mapping[str, Any], prefix: str
) -> dict[str, Any]:
    if set(values) != set(names):
        missing, unknown = set(names) - set(values), set(values) - set(names)
        raise ValueError(
            f"{model.__name__} template: missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    out: dict[str, Any] = {}
    for name in names:
        value, field = values[name], model.model_fields[name]
        if value is ABSENT:
            if field.is_required():
                raise ValueError(f"{model.__name__} template: {name} is required")
            continue
        nested = _model_of(field.annotation)
        if nested is not None and isinstance(value, Mapping):
            value = _laid_out(nested, tuple(nested.model_fields), value, f"{prefix}{name}.")
        out[name] = Slot(prefix + name) if value is PER_RECORD else value
    return out


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, also when it may be null (``ShadowOut | None``)."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
