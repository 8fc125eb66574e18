"""A replayed decision against the one first published: pure functions, no I/O.

Both sides are reduced to a ``View``: what an auditor reads of a decision (decision, label,
class index, reason, probabilities, and the config version that made it). A dead-letter record
is the decision ``dead_letter`` with its ``dlq.reason`` as the reason.

Two views differ by the first of these that does not match, most serious first:

``decision``       routed / escalated / dead_letter changed
``label``          same decision, another class (label or class index)
``reason``         same decision and class, another reason (``low_margin`` for ``low_top1``)
``probabilities``  only the probabilities moved, by more than the tolerance

Everything else (margin, top-1, entropy) follows from the probabilities; the config version is
reported beside the difference, not counted as one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import orjson

from worker.core.records import DLQ_PREFIX, Outbound

Kind = Literal["decision", "label", "reason", "probabilities"]
KINDS: tuple[Kind, ...] = ("decision", "label", "reason", "probabilities")


Raw = tuple[bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]  # key, value, headers


class View(NamedTuple):
    decision: str
    label: str | None
    class_index: int | None
    reason: str | None
    probabilities: tuple[float, ...] | None
    margin: float | None
    temperature: float | None
    policy: Mapping[str, Any] | None
    config_version: str | None
    id: str | None
    raw: Raw

    def public(self) -> dict[str, Any]:
        """The JSON an auditor reads (no raw bytes, no id: the report line has it)."""
        return {k: v for k, v in self._asdict().items() if k not in ("id", "raw")}


Source = tuple[str, int, int]  # input topic, partition, offset


def view_of_outbound(o: Outbound) -> View:
    """What the replay would publish for one record."""
    raw = (o.key, o.value, tuple(o.headers))
    if o.scores is None:
        return View("dead_letter", None, None, o.reason, None, None, None, None, None, None, raw)
    doc = orjson.loads(o.value) if o.value is not None else {}
    return _scored_view(doc, raw)


def view_of_output(
    topic_kind: Literal["scored", "dead_letter"],
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
) -> tuple[Source, View] | None:
    """Where an output record came from and what it said; ``None`` if it is not ours."""
    raw = (key, value, tuple(headers))
    if topic_kind == "dead_letter":
        h = dict(headers)
        try:
            source = (
                h[DLQ_PREFIX + "source.topic"].decode(),
                int(h[DLQ_PREFIX + "source.partition"]),
                int(h[DLQ_PREFIX + "source.offset"]),
            )
            reason = h[DLQ_PREFIX + "reason"].decode()
        except (KeyError, ValueError):
            return None
        return source, View(
            "dead_letter", None, None, reason, None, None, None, None, None, None, raw
        )
    try:
        doc = orjson.loads(value or b"")
        src = doc["source"]
        source = (str(src["topic"]), int(src["partition"]), int(src["offset"]))
        return source, _scored_view(doc, raw)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _scored_view(doc: dict[str, Any], raw: Raw) -> View:
    probs = doc.get("probabilities")
    return View(
        decision=str(doc["decision"]),
        label=doc.get("label"),
        class_index=doc.get("class_index"),
        reason=doc.get("reason"),
        probabilities=tuple(probs) if isinstance(probs, list) else None,
        margin=doc.get("margin"),
        temperature=doc.get("temperature"),
        policy=doc.get("policy"),
        config_version=doc.get("config_version"),
        id=doc.get("id") if isinstance(doc.get("id"), str) else None,
        raw=raw,
    )


def max_abs_difference(a: View, b: View) -> float | None:
    """The largest change of any probability; ``None`` when either side has none to compare."""
    if a.probabilities is None or b.probabilities is None:
        return None
    if len(a.probabilities) != len(b.probabilities):
        return float("inf")
    pairs = zip(a.probabilities, b.probabilities, strict=True)
    return max((abs(x - y) for x, y in pairs), default=0.0)


def kind_of(original: View, replayed: View, tolerance: float = 0.0) -> Kind | None:
    """The most serious way the two differ, or ``None`` when they agree."""
    if original.decision != replayed.decision:
        return "decision"
    if (original.label, original.class_index) != (replayed.label, replayed.class_index):
        return "label"
    if original.reason != replayed.reason:
        return "reason"
    diff = max_abs_difference(original, replayed)
    if diff is not None and diff > tolerance:
        return "probabilities"
    return None


def worst(
    originals: Sequence[View], replayed: View, tolerance: float = 0.0
) -> tuple[View, Kind | None]:
    """Of several published originals (a redelivered input), the one that differs most.

    An input published more than once (at-least-once) agrees only if every copy agrees; the
    first copy differing in the most serious way is the one reported.
    """
    rank = {k: i for i, k in enumerate(KINDS)}
    best: tuple[View, Kind | None] = (originals[0], kind_of(originals[0], replayed, tolerance))
    for original in originals[1:]:
        kind = kind_of(original, replayed, tolerance)
        if kind is not None and (best[1] is None or rank[kind] < rank[best[1]]):
            best = (original, kind)
    return best
