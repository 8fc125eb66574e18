"""``logit-router schema`` prints honest JSON Schemas: the outputs of both routing paths fit the
output schema, the inputs the worker accepts fit the input schema, and those it does not fit
are dead-lettered. The output's keys are the model's, in its order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.consumed import Consumed
from tests.integration.hostile_corpus import EDGES, HOSTILE
from tests.schemas import check_output, printed, validator
from worker.cli.main import main
from worker.core import native
from worker.core.events import InputEvent
from worker.core.records import Outbound, Router
from worker.core.schema import (
    ABSENT,
    OUTPUT_KEYS,
    PER_RECORD,
    PolicyOut,
    ShadowOut,
    Source,
    template,
)
from worker.core.settings import Settings
from worker.devkit import traffic

LABELLED, UNLABELLED, STRICT, SHADOWED = "support", "fraud", "strict", "shadowed"
TOPICS = {
    LABELLED: {"temperature": 0.7, "min_margin": 0.15, "labels": ["billing", "tech", "sales"]},
    UNLABELLED: {"temperature": 1.5, "min_margin": 0.3},
    STRICT: {"temperature": 1.0, "min_margin": 0.05, "min_top1": 0.9},
    SHADOWED: {
        "temperature": 1.0,
        "min_margin": 0.1,
        "audit_sample_rate": 0.3,
        "shadow": {"temperature": 0.6, "min_margin": 0.2, "min_top1": 0.5},
    },
}


def router(native_on: bool) -> Router:
    r = Router(Settings(topics=TOPICS, processing={"native": native_on}))
    # Where the compiled module is installed, the first router uses it: both paths are tested.
    assert (r.native_topics is not None) == (native_on and native.available())
    return r


def records() -> Iterator[Consumed]:
    offset = 0
    for topic in TOPICS:
        raws: list[bytes | None] = [
            e.value for e in traffic.synthetic(400, seed=len(topic), classes=3)
        ]
        raws += [e.value for e in traffic.synthetic(100, seed=1, classes=3, labels=["a", "b", "ç"])]
        raws += [e.value for e in traffic.synthetic(100, seed=2, classes=12)]
        raws += [h.value for h in (*HOSTILE, *EDGES) if h.value is None or len(h.value) < 100_000]
        for raw in raws:
            offset += 1
            yield Consumed(topic, 1, offset, 1_700_000_000_000 + offset, b"k", raw, [])


def routed(native_on: bool) -> list[tuple[Consumed, Outbound]]:
    recs = list(records())
    return list(zip(recs, router(native_on).process(recs), strict=True))


@pytest.mark.parametrize("which", ["input", "output"])
def test_it_prints_a_json_schema(which: str) -> None:
    schema = printed(which)
    validator(which)  # checks the schema against its dialect's metaschema
    appended = OUTPUT_KEYS if which == "output" else ()
    assert list(schema["properties"]) == [*InputEvent.model_fields, *appended]
    assert schema["additionalProperties"] is True  # unknown input fields are carried


@pytest.mark.parametrize("argv", [["schema", "routed"], ["schema"], ["schema", "input", "x"]])
def test_a_bad_argument_is_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("native_on", [True, False], ids=["compiled", "python"])
def test_every_output_of_either_path_fits_the_output_schema(native_on: bool) -> None:
    kinds: dict[str, int] = {}
    seen: set[tuple[str | None, str | None]] = set()  # (reason, shadow's reason)
    for _, out in routed(native_on):
        kinds[out.kind] = kinds.get(out.kind, 0) + 1
        if out.kind != "dead_letter":
            assert out.value is not None
            doc = orjson.loads(out.value)
            check_output(doc)
            assert ("shadow" in doc) == (out.source_topic == SHADOWED)
            seen.add((doc["reason"], doc["shadow"]["reason"] if "shadow" in doc else None))
    assert kinds.keys() == {"routed", "escalated", "dead_letter"}, kinds
    # Every reason, in the output and in its shadow block, was held to the schema above.
    assert {r for r, _ in seen} == {None, "low_margin", "low_top1", "audit_sample"}, seen
    assert {r for _, r in seen} >= {None, "low_margin", "low_top1"}, seen


def test_the_schema_refuses_what_the_worker_never_writes() -> None:
    out = next(out for _, out in routed(False) if out.kind == "escalated")
    assert out.value is not None
    good = orjson.loads(out.value)
    check_output(good)
    bads: tuple[dict[str, Any], ...] = (
        {"probabilities": [1.5, -0.5]},
        {"reason": None},  # escalated without a reason
        {"decision": "routed"},  # routed with one
        {"reason": "because"},
        {"source": {**good["source"], "offset": -1}},
        {"policy": {"min_margin": 0.1}},
        {"shadow": {"decision": "routed", "reason": "low_margin", "margin": 0.5}},
        {"shadow": {"decision": "escalated", "reason": None, "margin": 0.5}},
        {"shadow": {"decision": "routed", "reason": None}},
        {"shadow": {"decision": "routed", "reason": None, "margin": 1.5}},
    )
    for bad in bads:
        assert not validator("output").is_valid({**good, **bad}), bad
    shadow = {"decision": "escalated", "reason": "low_top1", "margin": 0.5}
    check_output({**good, "shadow": shadow})


def _loadable(raw: bytes | None) -> Any:
    try:
        return orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None


def test_every_input_the_worker_scores_fits_the_input_schema() -> None:
    """So a document that does not fit is dead-lettered; the worker refuses more than the
    schema says (its limits, unscorable logits, labels of the wrong length)."""
    schema = validator("input")
    misfits = 0
    for rec, out in routed(False):
        doc = _loadable(rec.value)
        if out.kind != "dead_letter":
            schema.validate(doc)
        elif doc is not None:
            misfits += not schema.is_valid(doc)
    assert misfits > 10  # the corpus's wrong types and missing fields, refused by both
    assert not schema.is_valid({"id": "x", "logits": [1.0]})
    assert not schema.is_valid({"id": "x", "logits": [1.0, True]})
    assert schema.is_valid({"id": "x", "logits": [1.0, None], "anything": {"else": 1}})


@pytest.mark.parametrize("native_on", [True, False], ids=["compiled", "python"])
def test_the_output_keys_are_the_models_in_its_order(native_on: bool) -> None:
    """``shadow`` sits after ``reason``, the decision it shadows, on topics with a shadow only."""
    raw = b'{"id": "e", "logits": [2.0, 0.5], "extra": 1}'
    for topic in (SHADOWED, UNLABELLED):
        [out] = router(native_on).process([Consumed(topic, 0, 5, 9, None, raw, [])])
        assert out.value is not None
        doc = orjson.loads(out.value)
        keys = [k for k in OUTPUT_KEYS if k != "shadow" or topic == SHADOWED]
        assert list(doc) == ["id", "logits", "extra", *keys]
        assert list(doc["policy"]) == list(PolicyOut.model_fields)
        assert list(doc["source"]) == list(Source.model_fields)
        if topic == SHADOWED:
            assert list(doc["shadow"]) == list(ShadowOut.model_fields)
    assert OUTPUT_KEYS.index("shadow") == OUTPUT_KEYS.index("reason") + 1


def test_a_template_must_give_every_field_and_no_other() -> None:
    values: dict[str, Any] = dict.fromkeys(OUTPUT_KEYS, PER_RECORD)
    values["policy"] = {"min_margin": 0.1, "min_top1": None}
    values["shadow"] = dict.fromkeys(ShadowOut.model_fields, PER_RECORD)
    values["source"] = dict.fromkeys(Source.model_fields, PER_RECORD)
    assert list(template(values)) == list(OUTPUT_KEYS)
    # An optional field may be absent from a topic's outputs; a required one may not.
    assert "shadow" not in template({**values, "shadow": ABSENT})
    with pytest.raises(ValueError, match="reason is required"):
        template({**values, "reason": ABSENT})
    # A nested per-record value is named by its path: the compiled path fills it by that name.
    assert template(values)["shadow"]["margin"].name == "shadow.margin"
    with pytest.raises(ValueError, match="missing \\['worker_version'\\]"):
        template({k: v for k, v in values.items() if k != "worker_version"})
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        template({**values, "colour": "red"})
    with pytest.raises(ValueError, match="Source template: missing \\['offset'\\]"):
        template({**values, "source": {"topic": "t", "partition": 0, "timestamp": None}})
