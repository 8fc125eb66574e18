"""The compiled hot path (``worker.core.native``) writes what the Python path writes, byte for byte.

Each record goes through ``Router.process`` twice, with ``processing.native`` on and off, and
every field of every output must be equal: topic, key, value bytes, headers, decision, reason
and the scores the metrics read. The inputs are the benchmark's traffic, the hostile corpus,
and hypothesis documents written in many JSON spellings. The compiled path may decline a
record (the Python path then does it), so the last tests check that it does take the events a
classifier sends, or the comparison would hold trivially.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.consumed import Consumed
from tests.integration.hostile_corpus import EDGES, HOSTILE
from worker.core import native
from worker.core.records import FetchedRecord, Outbound, Router, Summary, output_template
from worker.core.routing import Policy, audit_sampled, audit_threshold, score
from worker.core.schema import OUTPUT_KEYS, Slot
from worker.core.settings import Settings
from worker.devkit import traffic

if not native.available():
    # ./dev builds it wherever cargo is found and then sets this: never a silent skip there.
    if os.environ.get("LOGIT_ROUTER_EXPECT_NATIVE") == "1":
        raise RuntimeError("logit_router_native is not installed (see native/)")
    pytest.skip(
        "logit_router_native is not installed (no cargo at install)", allow_module_level=True
    )

import logit_router_native as ext  # after the skip above


def route(topic: Any, raw: bytes | None, offset: int = 0) -> Any:
    """One record through the compiled call, as the router calls it for a slice."""
    return ext.route_many([topic], [raw], [0], [offset], [0])[0]


TOPICS = {
    "plain": {"temperature": 1.0, "min_margin": 0.1},
    "cold": {"temperature": 0.7, "min_margin": 0.15, "labels": ["cat", "dog", "bird"]},
    "wide": {"temperature": 1.5, "min_margin": 0.05, "min_top1": 0.2},
    "odd": {"temperature": 1e-3, "min_margin": 0.0, "labels": ['q"uote', "é", "\n"]},
    # A shadow policy and an audit sample, alone and together.
    "shadowed": {
        "temperature": 0.7,
        "min_margin": 0.15,
        "labels": ["cat", "dog", "bird"],
        "shadow": {"temperature": 1.4, "min_margin": 0.05, "min_top1": 0.4},
    },
    "sampled": {"temperature": 1.5, "min_margin": 0.05, "audit_sample_rate": 0.4},
    "both": {
        "temperature": 1e-3,
        "min_margin": 0.0,
        "audit_sample_rate": 0.9,
        "shadow": {"temperature": 2.5, "min_margin": 0.3},
    },
}
LIMITS = {"max_event_bytes": 4096, "max_classes": 120}


def _settings(native_on: bool) -> Settings:
    return Settings(topics=TOPICS, limits=LIMITS, processing={"native": native_on})


FAST, SLOW = Router(_settings(True)), Router(_settings(False))


def both(raws: Sequence[bytes | None], topic: str = "plain") -> list[Any]:
    recs = [
        Consumed(topic, 2, 10 + i, 1_700_000_000_000 + i, b"k", raw, [("h", b"v")])
        for i, raw in enumerate(raws)
    ]
    fast, slow = FAST.process(recs), SLOW.process(recs)
    assert len(fast) == len(slow) == len(recs)
    for f, s in zip(fast, slow, strict=True):
        assert f == s, (f.value, s.value)
    # Records as the consumer hands them out are read by index, any other kind by name.
    fetched = [
        FetchedRecord(r.topic, r.partition, r.offset, r.timestamp, 0, r.key, r.value, None,
                      1, -1 if r.value is None else len(r.value), tuple(r.headers))
        for r in recs
    ]  # fmt: skip
    assert FAST.process(fetched) == fast
    assert all(type(o) is Outbound and type(o.headers) is list for o in fast)
    assert all(o.scores is None or type(o.scores) is Summary for o in fast)
    return fast


def test_the_router_uses_it_when_installed_and_not_when_switched_off() -> None:
    assert FAST.native_topics is not None
    assert SLOW.native_topics is None


@pytest.mark.parametrize("classes", [3, 10, 100])
def test_the_benchmark_traffic_is_the_same_bytes(classes: int) -> None:
    raws = [e.value for e in traffic.synthetic(1500, seed=classes, classes=classes)]
    for topic in ("wide", "plain", "sampled", "both"):
        both(raws, topic)


def test_labelled_topics_and_labels_in_the_event() -> None:
    raws = [e.value for e in traffic.synthetic(500, seed=3, classes=3)]
    raws += [e.value for e in traffic.synthetic(200, seed=4, classes=3, labels=["x", "y", "ü"])]
    both(raws, "cold")
    both(raws, "odd")
    outs = both(raws, "shadowed")
    # Shadow decisions and audit samples of both kinds were among the bytes compared.
    assert {o.shadow for o in outs if o.kind != "dead_letter"} == {"routed", "escalated"}
    assert {o.reason for o in both(raws, "both")} >= {None, "audit_sample"}


def test_the_hostile_corpus_is_the_same_bytes() -> None:
    raws = [h.value for h in (*HOSTILE, *EDGES) if h.value is None or len(h.value) < 100_000]
    both(raws, "plain")
    both(raws, "cold")
    both(raws, "both")


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=4),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
logit_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-60, 60),
    st.none(),
)
documents = st.fixed_dictionaries(
    {
        "id": st.one_of(st.text(min_size=1, max_size=6), json_values),
        "logits": st.one_of(st.lists(logit_values, min_size=0, max_size=12), json_values),
    },
    optional={
        "labels": st.one_of(st.lists(st.text(max_size=3), min_size=2, max_size=12), json_values),
        "model": json_values,
        "ts": json_values,
        "metadata": json_values,
        "sent_ns": st.integers(0, 2**63 - 1),
        "margin": json_values,  # a key the output sets: declined, then done in Python
        "extra": json_values,
    },
)
spellings = st.sampled_from(["orjson", "compact", "spaced", "ascii", "reordered", "int_logits"])


def spell(doc: dict[str, Any], how: str) -> bytes:
    try:
        return _spell(doc, how)
    except TypeError:  # an integer past 64 bits, which orjson does not write: the stdlib does
        return _spell(doc, "compact")


def _spell(doc: dict[str, Any], how: str) -> bytes:
    if how == "orjson":
        return orjson.dumps(doc)
    if how == "int_logits" and isinstance(doc.get("logits"), list):
        doc = {
            **doc,
            "logits": [
                round(x) if isinstance(x, float) and abs(x) < 1e15 else x for x in doc["logits"]
            ],
        }
        return orjson.dumps(doc)
    if how == "reordered":
        return orjson.dumps(dict(reversed(list(doc.items()))))
    text = json.dumps(
        doc,
        ensure_ascii=how == "ascii",
        separators=(",", ":") if how == "compact" else (" ,  ", " :\t"),
    )
    return text.encode()


@settings(max_examples=2000, deadline=None)
@given(documents, spellings, st.sampled_from(sorted(TOPICS)))
@example({"id": "a", "logits": [1e-7, 1e16, -0.0, 5e-324]}, "spaced", "plain")
@example(
    {"id": "a", "logits": [1.0, 2.0], "x": [2**64 - 1, 2**64, -(2**63), -(2**63) - 1]},
    "compact",
    "plain",
)
def test_any_document_in_any_spelling_is_the_same_bytes(
    doc: dict[str, Any], how: str, topic: str
) -> None:
    both([spell(doc, how)], topic)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=8))
def test_bytes_around_an_event_are_the_same_bytes(noise: bytes, cut: bytes) -> None:
    base = b'{"id": "n", "logits": [0.5, 1.5, -2.0], "metadata": {"k": [1, 2.5]}}'
    both([noise, base[: len(cut) * 4] + noise, noise + base, base.replace(b"1.5", noise)])


def test_it_takes_the_events_a_classifier_sends() -> None:
    """Declining everything would pass the comparisons above: it must take the common events."""
    raws = [e.value for e in traffic.synthetic(300, seed=9, classes=10, malformed_rate=0.0)]
    topic = FAST.native_topics["plain"]  # type: ignore[index]
    taken = [route(topic, raw, i) is not None for i, raw in enumerate(raws)]
    assert all(taken)
    for raw in (
        b'{"id": "e", "logits": [1.0, null, 2.5e-3], "metadata": {"a": {"b": [true, null]}}}',
        '{"id": "é", "logits": [1.5, 0.5], "labels": ["ü", "ß"], "ts": null}'.encode(),
    ):
        assert route(topic, raw) is not None, raw


def test_it_declines_what_the_python_path_must_judge() -> None:
    topic = FAST.native_topics["plain"]  # type: ignore[index]
    for raw in (
        *(raw for _, raw in traffic.MALFORMED),
        b'{"id": "e", "logits": [null, null]}',  # no finite logit: a refusal to name
        b'{"id": "a\\u00e9", "logits": [1.0, 2.0]}',  # an escape: left to orjson
        b'{"id": "e", "logits": [1.0, 2.0], "decision": "mine"}',  # keeps its place
    ):
        assert route(topic, raw) is None, raw


@pytest.mark.parametrize("key", OUTPUT_KEYS)
def test_an_input_with_an_output_key_is_left_to_python_and_keeps_its_place(key: str) -> None:
    """The keys to decline come from the model through Python: none is listed in Rust."""
    raw = orjson.dumps({"id": "e", key: "mine", "logits": [2.0, 0.5]})
    assert route(FAST.native_topics["both"], raw) is None  # type: ignore[index]
    [out] = both([raw], "both")
    doc = orjson.loads(out.value)
    assert list(doc) == ["id", key, "logits", *(k for k in OUTPUT_KEYS if k != key)]
    assert doc[key] != "mine"


def _with_field(name: str, value: object) -> Any:
    """The "plain" topic compiled from its template with one more field at the end."""
    policy = FAST.policies["plain"]
    fields = {**output_template("plain", policy, "v"), name: value}
    return native.topics({"t": policy}, {"t": fields}, max_bytes=4096, max_classes=10)["t"]


def test_a_field_added_to_the_template_reaches_the_compiled_path_unchanged() -> None:
    topic = _with_field("schema_version", [2, "b"])
    done = route(topic, b'{"id": "e", "logits": [2.0, 0.5]}')
    assert done is not None
    doc = orjson.loads(done[0])
    assert list(doc)[-2:] == ["worker_version", "schema_version"]
    assert doc["schema_version"] == [2, "b"]
    assert route(topic, b'{"id": "e", "logits": [2.0, 0.5], "schema_version": 1}') is None


def test_a_per_record_value_it_cannot_compute_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match='no per-record value named "colour"'):
        _with_field("colour", Slot("colour"))
    # A shadow block in the template needs a shadow policy to fill it, and the other way round.
    shadowed = FAST.policies["both"]
    fields = output_template("both", shadowed, "v")
    unshadowed = replace(shadowed, shadow=None)
    with pytest.raises(ValueError, match="shadow slots without a shadow policy"):
        native.topics({"t": unshadowed}, {"t": fields}, max_bytes=4096, max_classes=10)
    fields = output_template("both", unshadowed, "v")
    with pytest.raises(ValueError, match="or one without them"):
        native.topics({"t": shadowed}, {"t": fields}, max_bytes=4096, max_classes=10)
    limits = {"max_bytes": 1, "max_classes": 2, "min_classes": 2, "max_id_chars": 1}
    with pytest.raises(ValueError, match="one piece more than slots"):
        ext.Topic(
            1.0,
            0.1,
            None,
            None,
            audit_threshold=0.0,
            shadow=None,
            shadow_min_top1=None,
            **limits,
            max_brackets=1,
            output_keys=[],
            pieces=[],
            slots=[],
        )


@settings(max_examples=3000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
@example(1e-5)
@example(1e16)
@example(1e15)
@example(-5e-324)
def test_floats_are_written_as_orjson_writes_them(v: float) -> None:
    assert ext.format_float(v) == orjson.dumps(v)


def test_floats_from_random_bits_are_written_as_orjson_writes_them() -> None:
    rng = __import__("random").Random(5)
    for _ in range(200_000):
        v = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(v):
            assert ext.format_float(v) == orjson.dumps(v), repr(v)


def test_floats_beside_every_power_of_ten_are_written_as_orjson_writes_them() -> None:
    """Where the text switches to an exponent, and where the writer stops looking for one."""
    for k in range(-330, 309):
        p = float(f"1e{k}")
        for v in (p, math.nextafter(p, 0.0), math.nextafter(p, math.inf), 2.5 * p, 9.99 * p):
            for x in (v, -v):
                if math.isfinite(x):
                    assert ext.format_float(x) == orjson.dumps(x), repr(x)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.floats(-1e300, 1e300), max_size=40))
def test_the_sum_is_math_fsum_bit_for_bit(values: list[float]) -> None:
    assert struct.pack("<d", ext.fsum(values)) == struct.pack("<d", math.fsum(values))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.floats(-700, 700), min_size=2, max_size=120), st.floats(1e-3, 1e3))
@example([0.0, -36.0, -40.0], 1.0)  # a confident event's entropy, by log1p
@example([1e308, -1e308], 1e308)  # a gap past the float range
@example([0.0, 1e-17, -1.0], 1.0)  # the top class by its logit, where probabilities round equal
def test_scores_are_the_reference_bit_for_bit(logits: list[float], temperature: float) -> None:
    policy = Policy(temperature, 0.1)
    topic = native.topics(
        {"t": policy}, {"t": output_template("t", policy, "v")}, max_bytes=1 << 20, max_classes=200
    )["t"]
    done = route(topic, orjson.dumps({"id": "s", "logits": logits}))
    assert done is not None
    ref = score(logits, temperature)
    _, _, _, top1, margin, entropy, _ = done
    assert (top1, margin, entropy) == (ref.top1, ref.margin, ref.entropy)
    out = orjson.loads(done[0])
    assert out["probabilities"] == list(ref.probabilities)
    assert out["class_index"] == ref.class_index


ids = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'),
    min_size=1,
    max_size=40,
)


@settings(max_examples=2000, deadline=None)
@given(ids, st.floats(0.0, 1.0))
@example("evt-1", 0.0)
@example("evt-1", 1.0)
def test_the_audit_sample_is_the_rule_routing_states(event_id: str, rate: float) -> None:
    """The compiled path samples the ids ``routing.audit_sampled`` samples, at any rate."""
    policy = Policy(1.0, 0.0, audit_sample_rate=rate)
    topic = native.topics(
        {"t": policy}, {"t": output_template("t", policy, "v")}, max_bytes=4096, max_classes=10
    )["t"]
    done = route(topic, orjson.dumps({"id": event_id, "logits": [3.0, 0.0]}))
    assert done is not None
    sampled = audit_sampled(event_id, audit_threshold(rate))
    assert done[2] == ("audit_sample" if sampled else None)
    if rate in (0.0, 1.0):
        assert sampled == (rate == 1.0)  # 0 samples none, 1 samples all


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=40), st.integers(1, 1000))
@example(b"", 3)
@example(b"user-17", 3)
def test_keys_land_on_the_partition_the_default_partitioner_picks(key: bytes, n: int) -> None:
    # aiokafka's DefaultPartitioner: murmur2 (the Java client's), sign bit cleared, modulo n.
    assert ext.partition_index(key, n) == (murmur2(key) & 0x7FFFFFFF) % n


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.binary(max_size=12)), max_size=60),
    st.lists(st.integers(0, 99), min_size=1, max_size=7, unique=True),
)
def test_outputs_are_slotted_by_partition_in_order(
    outputs: list[tuple[str, bytes]], ids: list[int]
) -> None:
    partitions = {"a": sorted(ids), "b": [4], "c": sorted(ids)[:1]}
    expected: dict[tuple[str, int], list[tuple[str, bytes]]] = {}
    for o in outputs:
        known = partitions[o[0]]
        expected.setdefault((o[0], known[(murmur2(o[1]) & 0x7FFFFFFF) % len(known)]), []).append(o)
    assert ext.partition_slots(outputs, partitions) == expected


def test_outputs_without_a_key_or_known_partitions_are_left_to_python() -> None:
    assert ext.partition_slots([("a", b"k"), ("a", None)], {"a": [0, 1]}) is None
    assert ext.partition_slots([("a", b"k"), ("b", b"k")], {"a": [0, 1]}) is None
    assert ext.partition_slots([], {}) == {}


def test_a_slice_needs_one_of_everything_per_record() -> None:
    topic = FAST.native_topics["cold"]  # type: ignore[index]
    with pytest.raises(ValueError, match="unequal length"):
        ext.route_many([topic], [None, b"{}"], [1], [0], [None])
