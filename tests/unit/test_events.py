"""Strict decoding of raw record bytes: every refusal carries its own reason code."""

from __future__ import annotations

import math

import orjson
import pytest

from worker.core.events import EventError, InputEvent, decode_event

LIMITS = {"max_bytes": 1_048_576, "max_classes": 10_000}


def decode(raw: bytes, **limits: int) -> InputEvent:
    return decode_event(raw, **{**LIMITS, **limits})


def test_product_example_decodes_with_extra_fields_kept() -> None:
    raw = (
        b'{"id": "evt-123", "logits": [3.2, 2.8, 0.5], "labels": ["billing", "tech", "sales"],'
        b' "model": "intent-v3", "ts": "2026-11-26T12:00:00Z", "metadata": {"tenant": "acme"},'
        b' "trace": "abc"}'
    )
    event = decode(raw)
    assert event.id == "evt-123"
    assert event.logits == (3.2, 2.8, 0.5)
    assert event.labels == ("billing", "tech", "sales")
    assert event.metadata == {"tenant": "acme"}
    assert event.model_extra == {"trace": "abc"}


def test_null_logit_is_a_masked_class() -> None:
    event = decode(b'{"id": "a", "logits": [null, 1, 2.5]}')
    assert event.logit_values() == [-math.inf, 1.0, 2.5]


def test_integers_are_numbers() -> None:
    assert decode(b'{"id": "a", "logits": [3, -2]}').logits == (3.0, -2.0)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"id": "caf\xe9", "logits": [1, 2]}', "not_utf8"),
        (b"not json", "not_json"),
        (b'{"id": "a", "logits": [1, 2]', "not_json"),
        (b"", "not_json"),
        (b'{"id": "a", "logits": [NaN, 1]}', "non_finite_number"),
        (b'{"id": "a", "logits": [Infinity, 1]}', "non_finite_number"),
        (b'{"id": "a", "logits": [-Infinity, 1]}', "non_finite_number"),
        (b'{"id": "a", "logits": [1e999, 1]}', "non_finite_number"),
        (b'{"id": "a", "logits": [-1e999, 1]}', "non_finite_number"),
        (b"[3.2, 2.8]", "not_object"),
        (b'"evt"', "not_object"),
        (b"null", "not_object"),
        (b'{"logits": [1, 2]}', "missing_field"),
        (b'{"id": "a"}', "missing_field"),
        (b'{"id": null, "logits": [1, 2]}', "missing_field"),
        (b'{"id": "a", "logits": null}', "missing_field"),
        (b'{"id": "a", "logits": ["3.2", 2.8]}', "wrong_type"),
        (b'{"id": "a", "logits": [true, false]}', "wrong_type"),
        (b'{"id": "a", "logits": [[1], 2]}', "wrong_type"),
        (b'{"id": "a", "logits": "3.2,2.8"}', "wrong_type"),
        (b'{"id": "a", "logits": {"x": 1}}', "wrong_type"),
        (b'{"id": 7, "logits": [1, 2]}', "wrong_type"),
        (b'{"id": "", "logits": [1, 2]}', "wrong_type"),
        (b'{"id": "a", "logits": [1, 2], "labels": [1, 2]}', "wrong_type"),
        (b'{"id": "a", "logits": [1, 2], "metadata": [1]}', "wrong_type"),
        (b'{"id": "a", "logits": []}', "too_few_classes"),
        (b'{"id": "a", "logits": [1]}', "too_few_classes"),
        (b'{"id": "a", "logits": [1, 2], "labels": ["x"]}', "labels_length_mismatch"),
    ],
)
def test_refusals_name_their_reason(raw: bytes, code: str) -> None:
    with pytest.raises(EventError) as err:
        decode(raw)
    assert err.value.code == code


def test_too_many_classes() -> None:
    raw = orjson.dumps({"id": "a", "logits": [0.0] * 11})
    assert decode(raw, max_classes=11).logits == (0.0,) * 11
    with pytest.raises(EventError) as err:
        decode(raw, max_classes=10)
    assert err.value.code == "too_many_classes"


def test_payload_too_large() -> None:
    raw = orjson.dumps({"id": "a", "logits": [1.0, 2.0], "pad": "x" * 2000})
    assert decode(raw, max_bytes=len(raw)).id == "a"
    with pytest.raises(EventError) as err:
        decode(raw, max_bytes=len(raw) - 1)
    assert err.value.code == "payload_too_large"


def test_tombstone_is_refused() -> None:
    with pytest.raises(EventError) as err:
        decode_event(None, **LIMITS)
    assert err.value.code == "not_json"


def test_deeply_nested_json_is_refused_not_crashed() -> None:
    raw = b'{"id": "a", "logits": [1, 2], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(EventError) as err:
        decode(raw)
    assert err.value.code == "too_deep"
