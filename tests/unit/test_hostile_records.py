"""The hostile corpus through the pure ``Router`` step (no broker): every record gets the reason
the corpus names, edges are scored, and nesting is refused exactly past ``MAX_DEPTH``.
The same corpus runs through a real worker in ``tests/integration/test_hostile.py``."""

from __future__ import annotations

import orjson
import pytest

from tests.consumed import Consumed
from tests.integration.hostile_corpus import EDGES, HOSTILE, Hostile
from worker.core import records
from worker.core.events import MAX_DEPTH, EventError, decode_event
from worker.core.records import DLQ_PREFIX, Router
from worker.core.settings import Settings

LABELLED = "support"
UNLABELLED = "fraud"
SETTINGS = Settings(
    topics={
        LABELLED: {"temperature": 0.7, "min_margin": 0.15, "labels": ["billing", "tech", "sales"]},
        UNLABELLED: {"temperature": 1.5, "min_margin": 0.3},
    }
)


# The same topics, routed by the Python path only (the compiled one never calls it for the
# simple events below).
PYTHON_PATH = Settings(topics=SETTINGS.model_dump()["topics"], processing={"native": False})


def record(item: Hostile, topic: str) -> Consumed:
    return Consumed(
        topic, 2, 7, 1_700_000_000_000, item.record_key(), item.value, item.record_headers()
    )


def topic_for(item: Hostile) -> str:
    return LABELLED if item.labelled_topic else UNLABELLED


def test_corpus_names_are_unique() -> None:
    names = [item.name for item in (*HOSTILE, *EDGES)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("item", HOSTILE, ids=lambda item: item.name)
def test_hostile_record_is_dead_lettered_with_its_reason(item: Hostile) -> None:
    rec = record(item, topic_for(item))
    [out] = Router(SETTINGS).process([rec])
    assert out.kind == "dead_letter"
    headers = dict(out.headers[len(rec.headers) :])
    assert headers[DLQ_PREFIX + "reason"] == item.reason.encode()
    assert (out.key, out.value, out.headers[: len(rec.headers)]) == (
        rec.key,
        rec.value,
        rec.headers,
    )
    assert len(headers[DLQ_PREFIX + "message"]) <= 1024


@pytest.mark.parametrize("item", EDGES, ids=lambda item: item.name)
def test_edge_record_is_scored(item: Hostile) -> None:
    rec = record(item, UNLABELLED)
    [out] = Router(SETTINGS).process([rec])
    assert out.kind in ("routed", "escalated"), out.headers
    assert out.value is not None
    doc = orjson.loads(out.value)
    assert doc["id"] == orjson.loads(item.value or b"")["id"]


def nested(depth: int) -> bytes:
    """A JSON event nested ``depth`` levels deep in total, counted independently of the corpus."""
    text = "[" * (depth - 1) + "1" + "]" * (depth - 1)  # the event object is level 1
    return b'{"id": "d", "logits": [1, 2], "x": ' + text.encode() + b"}"


def test_nesting_is_refused_exactly_past_the_limit() -> None:
    limits = {"max_bytes": 1 << 20, "max_classes": 10}
    decode_event(nested(MAX_DEPTH), **limits)
    with pytest.raises(EventError) as err:
        decode_event(nested(MAX_DEPTH + 1), **limits)
    assert err.value.code == "too_deep"


def test_deepest_accepted_event_can_be_written_back() -> None:
    rec = Consumed(UNLABELLED, 0, 0, 0, None, nested(MAX_DEPTH), [])
    [out] = Router(SETTINGS).process([rec])
    assert out.kind in ("routed", "escalated")
    assert out.value is not None and out.value.count(b"[") >= MAX_DEPTH - 1


def _failing(exc: BaseException) -> object:
    def decode(*_args: object, **_kwargs: object) -> object:
        raise exc

    return decode


def test_a_record_our_code_fails_on_is_dead_lettered_not_a_stopped_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stands for a defect nobody has found yet: the Python path raising what it never foresaw.
    monkeypatch.setattr(records, "decode_routable", _failing(RecursionError("deep inside")))
    router = Router(PYTHON_PATH)
    value = b'{"id": "ok", "logits": [2.0, 1.0]}'
    rec = Consumed(UNLABELLED, 1, 42, 0, b"k", value, [("trace", b"t1")])
    [out] = router.process([rec])
    assert out.kind == "dead_letter"
    assert (out.key, out.value, out.headers[:1]) == (b"k", value, [("trace", b"t1")])
    headers = dict(out.headers[1:])
    assert headers[DLQ_PREFIX + "reason"] == b"internal_error"
    assert headers[DLQ_PREFIX + "error_class"] == b"RecursionError"
    assert headers[DLQ_PREFIX + "message"] == b"deep inside"


def test_running_out_of_memory_is_not_blamed_on_the_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(records, "decode_routable", _failing(MemoryError()))
    router = Router(PYTHON_PATH)
    rec = Consumed(UNLABELLED, 1, 42, 0, None, b'{"id": "ok", "logits": [2.0, 1.0]}', [])
    with pytest.raises(MemoryError):
        router.process([rec])
