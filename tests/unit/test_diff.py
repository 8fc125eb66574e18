"""How a replayed decision is compared with the published one (worker.audit.diff)."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
import pytest

from worker.audit.diff import View, kind_of, view_of_outbound, view_of_output, worst
from worker.core.records import Router
from worker.core.settings import Settings


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: int = 0
    key: bytes | None = b"k"
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: [("trace", b"1")])


def routed(settings: Settings, value: bytes, offset: int = 7) -> View:
    (out,) = Router(settings).process([Record("t", 2, offset, value)])
    return view_of_outbound(out)


S1 = Settings(topics={"t": {"temperature": 1.0, "min_margin": 0.15}})
LAB = b'{"id": "lab", "logits": [3.2, 2.8, 0.5]}'


def test_the_published_record_reads_back_as_the_same_view() -> None:
    (out,) = Router(S1).process([Record("t", 2, 7, LAB)])
    seen = view_of_output("scored", out.key, out.value, out.headers)
    assert seen is not None
    source, view = seen
    assert source == ("t", 2, 7)
    assert view == view_of_outbound(out)
    assert kind_of(view, view_of_outbound(out)) is None
    assert (view.decision, view.label, view.id) == ("routed", "0", "lab")


def test_dead_letters_read_back_by_their_headers() -> None:
    (out,) = Router(S1).process([Record("t", 1, 3, b"not json")])
    seen = view_of_output("dead_letter", out.key, out.value, out.headers)
    assert seen is not None
    assert seen[0] == ("t", 1, 3)
    assert (seen[1].decision, seen[1].reason) == ("dead_letter", "not_json")
    assert seen[1] == view_of_outbound(out)


@pytest.mark.parametrize(
    "value", [b"not json", b"{}", b'{"source": {"topic": "t"}}', b'{"source": 5}', None]
)
def test_records_no_worker_wrote_are_not_recognised(value: bytes | None) -> None:
    assert view_of_output("scored", None, value, []) is None
    assert view_of_output("dead_letter", None, value, [("dlq.reason", b"x")]) is None


def test_kinds_go_from_most_to_least_serious() -> None:
    base = routed(S1, LAB)
    assert kind_of(base, routed(S1, LAB)) is None
    # A higher threshold escalates it: the decision changes (reason too, but decision wins).
    s2 = Settings(topics={"t": {"temperature": 1.0, "min_margin": 0.5}})
    assert kind_of(base, routed(s2, LAB)) == "decision"
    # Other labels, same decision.
    s3 = Settings(topics={"t": {"temperature": 1.0, "min_margin": 0.15, "labels": ["a", "b", "c"]}})
    assert kind_of(base, routed(s3, LAB)) == "label"
    # Another temperature, same decision and label: only the probabilities move.
    s4 = Settings(topics={"t": {"temperature": 1.1, "min_margin": 0.15}})
    moved = routed(s4, LAB)
    assert kind_of(base, moved) == "probabilities"
    assert base.probabilities is not None and moved.probabilities is not None
    diff = max(abs(a - b) for a, b in zip(base.probabilities, moved.probabilities, strict=True))
    assert kind_of(base, moved, tolerance=diff) is None
    assert kind_of(base, moved, tolerance=diff / 2) == "probabilities"
    # Same decision and class, another reason.
    low_margin = routed(Settings(topics={"t": {"min_margin": 0.5, "min_top1": 0.9}}), LAB)
    low_top1 = routed(Settings(topics={"t": {"min_margin": 0.1, "min_top1": 0.9}}), LAB)
    assert (low_margin.reason, low_top1.reason) == ("low_margin", "low_top1")
    assert kind_of(low_margin, low_top1) == "reason"


def test_a_redelivered_input_agrees_only_if_every_copy_agrees() -> None:
    base = routed(S1, LAB)
    other = routed(Settings(topics={"t": {"temperature": 1.1, "min_margin": 0.15}}), LAB)
    escalated = routed(Settings(topics={"t": {"min_margin": 0.9}}), LAB)
    assert worst([base, base], base) == (base, None)
    assert worst([base, other], base) == (other, "probabilities")
    assert worst([other, escalated, base], base) == (escalated, "decision")


def test_views_serialise_without_raw_bytes() -> None:
    doc = routed(S1, LAB).public()
    assert "raw" not in doc
    assert orjson.loads(orjson.dumps(doc))["probabilities"] == list(doc["probabilities"])
