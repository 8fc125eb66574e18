"""A corpus of hostile records, each with the dead-letter reason the worker must give it.

The reasons are written down here by hand, from the product contract and the table in
``worker/core/events.py``, not computed by the code under test. ``EDGES`` are the records that look
suspicious but are legal events (``labels: null``, a masked class, deep but allowed nesting…):
the worker must score them, not dead-letter them.

Every record carries its own key and headers, some of them binary, empty or repeated, so that a
test can check they come out byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from worker.core.events import MAX_DEPTH

MAX_EVENT_BYTES = 1_048_576  # the default limits.max_event_bytes


@dataclass(frozen=True)
class Hostile:
    name: str
    value: bytes | None
    reason: str  # the expected ``dlq.reason``; "" for an edge that must be scored
    # Only meaningful on an input topic that configures labels (``topic_labels_mismatch``).
    labelled_topic: bool = False
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default=())

    def record_key(self) -> bytes | None:
        return self.key if self.key is not None else f"hostile-{self.name}".encode()

    def record_headers(self) -> list[tuple[str, bytes]]:
        base = [("hostile", self.name.encode()), ("bin", b"\x00\xff\xfe\x80"), ("empty", b"")]
        return [*base, ("dup", b"1"), ("dup", b"2"), *self.headers]


def _event(**fields: object) -> bytes:
    return orjson.dumps({"id": "h", "logits": [2.0, 1.0], **fields})


def _nested(depth: int) -> bytes:
    """An event whose ``metadata`` makes the whole document ``depth`` levels deep."""
    lists = depth - 2  # the event object is level 1, metadata's object level 2
    return (
        b'{"id": "deep", "logits": [2, 1], "metadata": {"x": ' + b"[" * lists + b"]" * lists + b"}}"
    )


_PAD = b"x" * (2 * 1024 * 1024)

HOSTILE: tuple[Hostile, ...] = (
    # not JSON at all
    Hostile("garbage", b"this is not json", "not_json"),
    Hostile("truncated", b'{"id": "t", "logits": [1, 2', "not_json"),
    Hostile("empty_bytes", b"", "not_json"),
    Hostile("trailing_garbage", b'{"id": "t", "logits": [1, 2]} x', "not_json"),
    Hostile("single_quotes", b"{'id': 't', 'logits': [1, 2]}", "not_json"),
    Hostile("utf8_bom", b'\xef\xbb\xbf{"id": "t", "logits": [1, 2]}', "not_json"),
    Hostile("raw_control_char", b'{"id": "t\x00", "logits": [1, 2]}', "not_json"),
    Hostile("lone_surrogate_escape", b'{"id": "\\ud800", "logits": [1, 2]}', "not_json"),
    Hostile("tombstone", None, "not_json"),
    # not UTF-8
    Hostile("invalid_utf8", b'{"id": "\xff\xfe", "logits": [1, 2]}', "not_utf8"),
    Hostile("latin1", '{"id": "café", "logits": [1, 2]}'.encode("latin-1"), "not_utf8"),
    Hostile("utf16", '{"id": "t", "logits": [1, 2]}'.encode("utf-16"), "not_utf8"),
    # numbers JSON cannot carry
    Hostile("nan_literal", b'{"id": "t", "logits": [NaN, 1]}', "non_finite_number"),
    Hostile("infinity_literal", b'{"id": "t", "logits": [Infinity, 1]}', "non_finite_number"),
    Hostile("neg_infinity_literal", b'{"id": "t", "logits": [-Infinity, 1]}', "non_finite_number"),
    Hostile("overflow_1e999", b'{"id": "t", "logits": [1e999, 1]}', "non_finite_number"),
    Hostile("overflow_neg_1e999", b'{"id": "t", "logits": [-1e999, 1]}', "non_finite_number"),
    Hostile(
        "overflow_integer", b'{"id": "t", "logits": [' + b"9" * 400 + b", 1]}", "non_finite_number"
    ),
    Hostile(
        "overflow_in_metadata",
        b'{"id": "t", "logits": [1, 2], "metadata": {"x": 1e999}}',
        "non_finite_number",
    ),
    Hostile(  # an integer is carried exactly, up to the double range only (docs/events.md)
        "overflow_integer_in_extra_field",
        b'{"id": "t", "logits": [1, 2], "n": 1' + b"0" * 309 + b"}",
        "non_finite_number",
    ),
    # JSON, but not an object
    Hostile("json_string", b'"hello"', "not_object"),
    Hostile("json_number", b"42", "not_object"),
    Hostile("json_null", b"null", "not_object"),
    Hostile("json_true", b"true", "not_object"),
    Hostile("json_array", b"[3.2, 2.8, 0.5]", "not_object"),
    # required fields missing or null
    Hostile("empty_object", b"{}", "missing_field"),
    Hostile("no_id", b'{"logits": [1, 2]}', "missing_field"),
    Hostile("no_logits", b'{"id": "t"}', "missing_field"),
    Hostile("null_id", b'{"id": null, "logits": [1, 2]}', "missing_field"),
    Hostile("null_logits", b'{"id": "t", "logits": null}', "missing_field"),
    # wrong types: nothing is coerced
    Hostile("number_as_string", _event(logits=["3.2", "2.8"]), "wrong_type"),
    Hostile("boolean_logits", _event(logits=[True, False]), "wrong_type"),
    Hostile("nested_logits", _event(logits=[[1, 2], [3, 4]]), "wrong_type"),
    Hostile("logits_object", _event(logits={"a": 1, "b": 2}), "wrong_type"),
    Hostile("logits_string", _event(logits="1,2"), "wrong_type"),
    Hostile("id_number", _event(id=5), "wrong_type"),
    Hostile("id_empty", _event(id=""), "wrong_type"),
    Hostile("id_huge", _event(id="i" * 100_000), "wrong_type"),
    Hostile("labels_numbers", _event(labels=[1, 2]), "wrong_type"),
    Hostile("labels_string", _event(labels="a,b"), "wrong_type"),
    Hostile("labels_null_item", _event(labels=["a", None]), "wrong_type"),
    Hostile("metadata_list", _event(metadata=[1, 2]), "wrong_type"),
    Hostile("model_number", _event(model=3), "wrong_type"),
    # vectors that cannot be scored
    Hostile("empty_vector", _event(logits=[]), "too_few_classes"),
    Hostile("one_class", _event(logits=[1.5]), "too_few_classes"),
    Hostile("one_class_masked", _event(logits=[None]), "too_few_classes"),
    Hostile(
        "duplicate_key_last_wins",
        b'{"id": "t", "logits": [1, 2], "logits": [3]}',
        "too_few_classes",
    ),
    Hostile("too_many_classes", _event(logits=[0.0] * 10_001), "too_many_classes"),
    Hostile(
        "labels_too_short", _event(logits=[1, 2, 3], labels=["a", "b"]), "labels_length_mismatch"
    ),
    Hostile("labels_too_long", _event(labels=["a", "b", "c"]), "labels_length_mismatch"),
    Hostile("labels_empty", _event(labels=[]), "labels_length_mismatch"),
    Hostile("all_masked", _event(logits=[None, None, None]), "no_finite_logit"),
    Hostile(
        "topic_labels_wrong_width",
        _event(logits=[1.0, 2.0]),  # the labelled test topic has three labels
        "topic_labels_mismatch",
        labelled_topic=True,
    ),
    # too big, too deep
    Hostile("payload_2mb", _event(pad=_PAD.decode()), "payload_too_large"),
    Hostile(
        "payload_limit_plus_one",
        _event(pad="p" * (MAX_EVENT_BYTES + 1 - len(_event(pad="")))),
        "payload_too_large",
    ),
    Hostile("deep_100k", b"[" * 100_000 + b"]" * 100_000, "too_deep"),
    Hostile("deep_100k_in_event", _nested(100_000), "too_deep"),
    Hostile("deep_past_limit", _nested(MAX_DEPTH + 1), "too_deep"),
    Hostile("deep_past_encoder", _nested(300), "too_deep"),
    # A run of 19 digits sends a document to the exact-integer reader, which recurses: deep
    # nesting must be refused before it gets there, not overflow the interpreter's stack.
    Hostile(
        "deep_with_long_integer",
        _nested(1_000).replace(b'"deep"', b'"1234567890123456789"'),
        "too_deep",
    ),
    # odd keys: carried byte for byte
    Hostile("binary_key", b"\x00\x01", "not_json", key=b"\xff\x00\xfe"),
    Hostile("empty_key", b"\x00\x01", "not_json", key=b""),
    Hostile("big_header", b"\x00\x02", "not_json", headers=(("big", b"h" * 100_000),)),
)

EDGES: tuple[Hostile, ...] = (
    Hostile("labels_null", _event(labels=None), ""),
    Hostile("metadata_null", _event(metadata=None), ""),
    Hostile("model_and_ts_null", _event(model=None, ts=None), ""),
    Hostile("one_masked_class", _event(logits=[None, 2.0, 1.0]), ""),
    Hostile("integers", _event(logits=[3, -2]), ""),
    Hostile("u64_in_metadata", _event(metadata={"n": 18_446_744_073_709_551_615}), ""),
    Hostile("huge_gap", _event(logits=[1.7e308, -1.7e308]), ""),
    Hostile("unicode_id", _event(id="évènement-😀"), ""),
    Hostile("id_at_length_limit", _event(id="i" * 1024), ""),
    Hostile("unknown_fields", _event(extra={"a": [1, {"b": None}]}, decision="forged"), ""),
    Hostile("deep_at_limit", _nested(MAX_DEPTH), ""),
    Hostile("payload_at_limit", _event(pad="p" * (MAX_EVENT_BYTES - len(_event(pad="")))), ""),
)
