"""What the worker refuses, and why, for the benchmark's Python peers (``bench.quix_app``,
``bench.faststream_app``): the reason codes of ``worker.core.events``, checked in the order
its event model checks them, so that a peer's dead letters carry the worker's reasons."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

_NUMBER_OR_NULL = {float, int, type(None)}


class Refused(Exception):
    """The record goes to the dead-letter topic; ``args[0]`` is the worker's reason code."""


def unreadable(raw: bytes) -> str:
    """Why orjson refused ``raw``, in the worker's terms (``worker.core.events``)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"

    def refuse(_token: str) -> float:
        raise Refused("non_finite_number")

    def checked(token: str) -> float:
        if math.isinf(value := float(token)):
            raise Refused("non_finite_number")
        return value

    try:
        json.loads(text, parse_constant=refuse, parse_float=checked, parse_int=checked)
    except Refused as exc:
        return str(exc.args[0])
    except ValueError:
        pass
    return "not_json"


def decode(raw: bytes | None) -> dict[str, Any]:
    """The event, checked field by field in the order the worker's event model does."""
    if raw is None:
        raise Refused("not_json")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Refused(unreadable(raw)) from None
    if not isinstance(doc, dict):
        raise Refused("not_object")
    ident, logits, labels = doc.get("id"), doc.get("logits"), doc.get("labels")
    if ident is None:
        raise Refused("missing_field")
    if not isinstance(ident, str):
        raise Refused("wrong_type")
    if logits is None:
        raise Refused("missing_field")
    # bool is an int to Python, not a number to the worker: set(map(type)) tells them apart.
    if not isinstance(logits, list) or not set(map(type, logits)) <= _NUMBER_OR_NULL:
        raise Refused("wrong_type")
    if len(logits) < 2:
        raise Refused("too_few_classes")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(s, str) for s in labels):
            raise Refused("wrong_type")
        if len(labels) != len(logits):
            raise Refused("labels_length_mismatch")
    return doc
