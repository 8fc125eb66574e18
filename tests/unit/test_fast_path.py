"""The worker's fast path decides exactly as the reference path does, and leaves no garbage
cycles behind (a cycle through a traceback keeps a whole batch alive until a full GC pass)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.consumed import Consumed
from worker.core.events import EventError, decode_document, decode_routable
from worker.core.records import Router
from worker.core.settings import Settings
from worker.devkit import traffic

LIMITS = {"max_bytes": 4096, "max_classes": 20}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner)
)
logits = st.one_of(
    st.lists(st.one_of(st.floats(-50, 50), st.none()), min_size=0, max_size=25),
    st.lists(st.one_of(st.floats(-50, 50), st.integers(-5, 5), st.booleans()), max_size=4),
    values,
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=3), values, st.just("x" * 1025)),
        "logits": logits,
        "labels": st.one_of(st.lists(st.text(max_size=2), max_size=25), values),
        "model": values,
        "ts": values,
        "metadata": values,
        "extra": values,
        "_private": values,
    },
)


def outcome(decode: Any, raw: bytes | None) -> tuple[Any, ...]:
    try:
        result = decode(raw, **LIMITS)
    except EventError as exc:
        return ("refused", exc.code, str(exc))
    if isinstance(result[1], list):  # decode_routable: (doc, logits, labels)
        return ("ok", result[0], result[1], result[2])
    doc, event = result
    return ("ok", doc, event.logit_values(), event.labels)


@settings(max_examples=1500, deadline=None)
@given(documents)
def test_routable_decoding_agrees_with_the_model_on_any_document(doc: dict[str, Any]) -> None:
    raw = orjson.dumps(doc)
    assert outcome(decode_routable, raw) == outcome(decode_document, raw)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"\xff\xfe{}",
        b'{"id": "a", "logits": [NaN, 1]}',
        b'{"id": "a", "logits": [1e999, 1]}',
        b"[1.0, 2.0]",
        b'{"id": "a", "logits": [1.0, 2.0], "pad": "' + b"x" * 5000 + b'"}',
        b'{"id": "a", "logits": [1.0, 2.0], "x": ' + b"[" * 200 + b"]" * 200 + b"}",
        b'{"id": "a", "logits": [3, -2]}',
        b'{"id": "a", "logits": [null, null]}',
        *(raw for _, raw in traffic.MALFORMED),
    ],
)
def test_routable_decoding_agrees_on_records_to_refuse(raw: bytes | None) -> None:
    assert outcome(decode_routable, raw) == outcome(decode_document, raw)


def test_a_batch_with_every_kind_of_refusal_is_freed_once_done() -> None:
    """Nothing of a batch may outlive it: not through a cycle, nor through a reference the
    garbage collector cannot see (pydantic keeps the error raised in a validator from Rust)."""
    settings_ = Settings(topics={"t": {"labels": ["a", "b", "c"]}})
    raws = [raw for _, raw in traffic.MALFORMED]
    raws += [
        b'{"id": "x", "logits": [1.0]}',  # too_few_classes, raised inside the model
        b'{"id": "x", "logits": [null, null, null]}',  # no_finite_logit, from scoring
        b'{"id": "x", "logits": [1.0, 2.0]}',  # topic_labels_mismatch, from scoring
    ]
    raws += [e.value for e in traffic.synthetic(200, seed=1, classes=3)]
    records = [Consumed("t", 0, i, 0, None, raw, []) for i, raw in enumerate(raws)]
    watch = [weakref.ref(r) for r in records]
    outputs = Router(settings_).process(records)
    assert len(outputs) == len(records)
    del outputs, records
    gc.collect()
    alive = [w() for w in watch if w() is not None]
    assert alive == []
