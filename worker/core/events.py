"""The input event: strict decoding from raw bytes (the output event is in ``schema``).

The consumer hands us raw bytes (no ``value_deserializer``), so a record that cannot be read
is refused here with a reason code and goes to the dead-letter topic instead of blocking its
partition. Every refusal has its own code, written into the dead-letter headers:

==========================  ======================================================
``payload_too_large``        more bytes than ``limits.max_event_bytes``
``not_utf8``                 the bytes are not UTF-8
``not_json``                 not JSON (RFC 8259)
``non_finite_number``        a NaN/Infinity literal, or a number overflowing a double
``not_object``               JSON, but not an object
``missing_field``            no ``id`` or no ``logits`` (or null)
``wrong_type``               a field of the wrong type: numbers as strings, booleans…
``too_few_classes``          fewer than two logits
``too_many_classes``         more logits than ``limits.max_classes``
``labels_length_mismatch``   ``labels`` not as long as ``logits``
``too_deep``                 arrays and objects nested deeper than ``MAX_DEPTH``
==========================  ======================================================

In JSON a masked class (``-inf``) is written ``null`` inside ``logits``: JSON has no infinity.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictStr,
    ValidationError,
    field_validator,
)

Reason = Literal[
    "payload_too_large",
    "not_utf8",
    "not_json",
    "non_finite_number",
    "not_object",
    "missing_field",
    "wrong_type",
    "too_few_classes",
    "too_many_classes",
    "labels_length_mismatch",
    "too_deep",
]

# Deepest nesting of arrays and objects accepted (the event object itself is level 1). Far
# beyond any real event, and well inside what the output encoder can write back: orjson's
# ``dumps`` refuses documents nested 255 levels deep, and ``loads`` stops at 1024.
MAX_DEPTH = 128
# Bounds of ``InputEvent`` that the fast checks here and the compiled path apply as well.
MIN_CLASSES = 2
MAX_ID_CHARS = 1024


# orjson reads an integer outside the 64-bit range as a double, rounding it. Such an integer
# has at least 19 digits: a document holding a run of 19 digits is read again with every
# integer exact, so that carried values reach the output unchanged.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_INT_MIN, _INT_END = -(2**63), 2**64  # the integers orjson reads and writes exactly


class ExactInt(int):
    """An integer orjson cannot hold; ``dumps_document`` writes it back digit for digit."""


def _exact_int(text: str) -> int:
    value = int(text)
    return value if _INT_MIN <= value < _INT_END else ExactInt(value)


def _exact(value: object) -> orjson.Fragment:
    if isinstance(value, ExactInt):
        return orjson.Fragment(int.__repr__(value).encode())
    raise TypeError(f"{type(value).__name__} is not JSON")


def loads_document(raw: bytes) -> Any:
    """``orjson.loads``, but integers past 64 bits kept exact (orjson refuses a document
    holding one past the double range; ``_classify_unreadable`` names that).

    Raises ``EventError`` (``too_deep``) for a document nested deeper than ``MAX_DEPTH``: the
    exact re-read is the standard library's parser, which recurses, so it only reads documents
    that passed the depth check."""
    doc = orjson.loads(raw)
    # Counting brackets is a fast C-level scan; only a document that could be too deep is walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(doc, MAX_DEPTH):
        raise EventError("too_deep", f"arrays and objects nested deeper than {MAX_DEPTH} levels")
    if _LONG_DIGITS.search(raw) is not None:
        doc = json.loads(raw, parse_int=_exact_int)  # orjson accepted it: valid JSON
    return doc


def dumps_document(doc: Any) -> bytes:
    """``orjson.dumps`` of a decoded document, integers of any size included."""
    return orjson.dumps(doc, default=_exact, option=orjson.OPT_PASSTHROUGH_SUBCLASS)


class EventError(ValueError):
    """An event that cannot be decoded; ``code`` is its dead-letter reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InputEvent(BaseModel):
    """A classifier's logit event. Unknown fields are kept and carried to the output."""

    # Strict scalar types: a number given as a string, or a boolean, is refused, not coerced.
    model_config = ConfigDict(frozen=True, extra="allow")

    id: StrictStr = Field(min_length=1, max_length=MAX_ID_CHARS)
    # The count is checked by the validator below, which names the refusal; the schema says it.
    logits: tuple[StrictFloat | None, ...] = Field(
        description="null is a masked class (a logit of -inf)",
        json_schema_extra={"minItems": MIN_CLASSES},
    )
    labels: tuple[StrictStr, ...] | None = Field(None, description="one per logit, in order")
    model: StrictStr | None = None
    ts: StrictStr | None = None
    metadata: dict[StrictStr, Any] | None = None

    @field_validator("logits")
    @classmethod
    def _enough_classes(cls, v: tuple[float | None, ...]) -> tuple[float | None, ...]:
        if len(v) < MIN_CLASSES:
            raise EventError("too_few_classes", f"need at least {MIN_CLASSES} logits, got {len(v)}")
        return v

    def logit_values(self) -> list[float]:
        """The logits as floats, ``null`` read as ``-inf`` (a masked class)."""
        return [-math.inf if x is None else x for x in self.logits]


def decode_event(raw: bytes | None, *, max_bytes: int, max_classes: int) -> InputEvent:
    """Bytes of one record to a validated event, or ``EventError`` with its reason code."""
    return decode_document(raw, max_bytes=max_bytes, max_classes=max_classes)[1]


def decode_document(
    raw: bytes | None, *, max_bytes: int, max_classes: int
) -> tuple[dict[str, Any], InputEvent]:
    """Like ``decode_event``, also returning the JSON object as sent, to carry it unchanged."""
    if raw is None:
        raise EventError("not_json", "record has no value (tombstone)")
    if len(raw) > max_bytes:
        raise EventError("payload_too_large", f"{len(raw)} bytes, limit {max_bytes}")
    try:
        doc = loads_document(raw)
    except orjson.JSONDecodeError as exc:
        raise _classify_unreadable(raw, exc) from None
    if not isinstance(doc, dict):
        raise EventError("not_object", f"top-level JSON is {_json_type(doc)}, not an object")
    logits = doc.get("logits")
    if isinstance(logits, list) and len(logits) > max_classes:
        raise EventError("too_many_classes", f"{len(logits)} classes, limit {max_classes}")
    try:
        event = InputEvent.model_validate(doc)
    except ValidationError as exc:
        raise _classify_invalid(exc) from None
    if event.labels is not None and len(event.labels) != len(event.logits):
        raise EventError(
            "labels_length_mismatch",
            f"{len(event.labels)} labels for {len(event.logits)} logits",
        )
    return doc, event


def _classify_unreadable(raw: bytes, exc: orjson.JSONDecodeError) -> EventError:
    """orjson refused the bytes; say why in the terms a producer can act on."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return EventError("not_utf8", f"invalid UTF-8 at byte {err.start}")

    def refuse_constant(name: str) -> float:
        raise EventError("non_finite_number", f"{name} is not a JSON number")

    def checked_float(token: str) -> float:
        value = float(token)
        if math.isinf(value):
            raise EventError("non_finite_number", f"{token[:40]} overflows a double")
        return value

    try:
        # An integer literal overflows a double as surely as 1e999 does (orjson reads every
        # number as a double or a 64-bit integer), so integers are checked the same way.
        json.loads(
            text,
            parse_constant=refuse_constant,
            parse_float=checked_float,
            parse_int=checked_float,
        )
    except EventError as err:
        return err
    except RecursionError:
        return EventError("too_deep", f"arrays and objects nested deeper than {MAX_DEPTH} levels")
    except ValueError:
        pass
    return EventError("not_json", str(exc))


def _deeper_than(doc: object, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[object]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _classify_invalid(exc: ValidationError) -> EventError:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in err["loc"]) or "event"
    ctx = err.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, EventError):
        # A fresh error, not ``inner`` itself: ``exc`` holds ``inner``, and re-raising ``inner``
        # here would make ``exc`` its ``__context__``, a cycle whose tracebacks keep the caller's
        # frames (a whole batch of records and outputs) alive until a full GC pass.
        return EventError(inner.code, str(inner))
    if err["type"] == "missing" or (where in ("id", "logits") and err.get("input") is None):
        return EventError("missing_field", f"{where} is required")
    return EventError("wrong_type", f"{where}: {err['msg']}")


def _json_type(doc: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(doc), "a number"
    )


# A document with at most this many brackets cannot nest deeper than this many levels, so no
# depth limit of at least this much could refuse it: such documents may take the fast paths
# (the check below, and the compiled one, which ``native`` hands this value).
FAST_MAX_BRACKETS = 64

Routable = tuple[dict[str, Any], list[float], tuple[str, ...] | None]
_FLOAT = {float}
_FLOAT_OR_NULL = {float, type(None)}
_STR = {str}


def decode_routable(raw: bytes | None, *, max_bytes: int, max_classes: int) -> Routable:
    """What routing needs from one record: the JSON object as sent, the logits as floats
    (``null`` read as ``-inf``) and the event's labels; or ``EventError`` with its reason code.

    It accepts, returns and refuses exactly what ``decode_document`` does. A plain check
    accepts the common well-formed event without building an ``InputEvent`` (validating the
    model costs more than parsing the JSON); whatever that check is not sure of, including
    every event to refuse, goes through ``decode_document``, which decides and names the reason.
    """
    fast = _plainly_valid(raw, max_bytes, max_classes)
    if fast is not None:
        return fast
    doc, event = decode_document(raw, max_bytes=max_bytes, max_classes=max_classes)
    return doc, event.logit_values(), event.labels


def _plainly_valid(raw: bytes | None, max_bytes: int, max_classes: int) -> Routable | None:
    """The event when it is valid beyond doubt, in the types ``InputEvent`` accepts without
    conversion (floats, not integers, among the logits); ``None`` to let the model decide."""
    if raw is None or len(raw) > max_bytes:
        return None
    if raw.count(b"[") + raw.count(b"{") > FAST_MAX_BRACKETS:
        return None
    if _LONG_DIGITS.search(raw) is not None:
        return None  # maybe an integer orjson would round
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict:
        return None
    ident = doc.get("id")
    if type(ident) is not str or not 1 <= len(ident) <= MAX_ID_CHARS:
        return None
    logits = doc.get("logits")
    if type(logits) is not list or not MIN_CLASSES <= len(logits) <= max_classes:
        return None
    kinds = set(map(type, logits))  # one pass in C, where a Python loop costs ~50 ns a logit
    if kinds == _FLOAT:
        values: list[float] = logits  # read, never written: the document stays as sent
    elif kinds <= _FLOAT_OR_NULL:
        values = [-math.inf if x is None else x for x in logits]
    else:
        return None
    labels = doc.get("labels")
    if labels is not None:
        if type(labels) is not list or len(labels) != len(logits):
            return None
        if set(map(type, labels)) != _STR:
            return None
        labels = tuple(labels)
    for name in ("model", "ts"):
        value = doc.get(name)
        if value is not None and type(value) is not str:
            return None
    metadata = doc.get("metadata")
    if metadata is not None and type(metadata) is not dict:
        return None
    return doc, values, labels
