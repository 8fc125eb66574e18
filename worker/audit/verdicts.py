"""Reviewers' verdicts joined to the outputs the worker published, for ``calibrate``.

A verdict is a JSON object ``{"id": "evt-123", "label": "billing"}``: the label by name, or
by class index (an integer, or its digits as text when the topic has no label names). It
comes from a topic (read like every audit range, ``worker.audit.ranges``) or a JSONL file.

Outputs are the routed and escalated records of one input topic (``source.topic``), read
over ``[--from, --to)``; verdicts over ``[--from, end)``, the end fixed when the command
starts. What cannot be used is counted, never fatal:

* ``malformed``: not a JSON object with a non-empty string ``id`` and a ``label`` that is a
  non-empty string or a whole number >= 0.
* ``late``: the record's timestamp is at or after ``--to``. It arrived after the window
  closed, so it is left out: a closed window gives the same report whenever it is run.
  A file has no timestamps; nothing in it is late.
* ``duplicates``: more than one verdict for an id. The last one read wins, reading in order
  of record timestamp, then partition, then offset (a file: the later line): a reviewer's
  correction replaces the first answer.
* ``unknown_id``: no output of the topic in the window has the id (an event before
  ``--from``, or never published); ``other_topic`` when the id is another input topic's.
* ``unknown_label``: a name that is not one of the event's classes, or an index past them;
  ``masked_label``: the label is a class the event masked (a logit of ``null``), which no
  temperature can give any probability.
* ``routed_not_sampled``: verdicts on events the worker routed and did not sample for audit.
  Their chance of being reviewed is unknown, and the audit sample already stands for the
  routed events: they are left out of the fit unless ``--ground-truth`` says every event has
  a verdict.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from worker.audit import ranges
from worker.audit.progress import Progress
from worker.core.events import EventError, decode_document
from worker.core.settings import Limits, Settings

UNCERTAIN, AUDIT_SAMPLE, ROUTED = "uncertain", "audit_sample", "routed"


@dataclass(frozen=True, slots=True)
class Output:
    """What calibration needs of one published event."""

    logits: tuple[float, ...]
    labels: tuple[str, ...] | None
    kind: str  # UNCERTAIN, AUDIT_SAMPLE or ROUTED


@dataclass
class Outputs:
    """The topic's published events by id, and the ids of the other input topics."""

    by_id: dict[str, Output] = field(default_factory=dict)
    others: set[str] = field(default_factory=set)
    read: int = 0
    duplicates: int = 0
    unreadable: int = 0

    def add(self, raw: bytes | None, topic: str, limits: Limits) -> None:
        self.read += 1
        found = read_output(raw, topic, limits)
        if found is None:
            self.unreadable += 1
            return
        event_id, out = found
        if out is None:
            self.others.add(event_id)
            return
        if event_id in self.by_id:
            self.duplicates += 1  # a redelivery: the same decision again, the last kept
        self.by_id[event_id] = out


def read_output(raw: bytes | None, topic: str, limits: Limits) -> tuple[str, Output | None] | None:
    """(id, what calibration needs) of one published record; the output is None when the
    event is another input topic's; None when the record cannot be read."""
    try:
        doc, event = decode_document(
            raw, max_bytes=limits.max_event_bytes, max_classes=limits.max_classes
        )
        source = doc["source"]["topic"]
        decision, reason = doc["decision"], doc["reason"]
    except (EventError, KeyError, TypeError):
        return None
    if source != topic:
        return event.id, None
    if decision == "routed":
        kind = ROUTED
    else:
        kind = AUDIT_SAMPLE if reason == AUDIT_SAMPLE else UNCERTAIN
    return event.id, Output(tuple(event.logit_values()), event.labels, kind)


@dataclass(frozen=True, slots=True)
class Verdict:
    id: str
    label: str | int
    order: tuple[int, int, int]  # (timestamp, partition, offset), or (0, 0, line)
    late: bool = False


def parse(raw: bytes | None) -> tuple[str, str | int] | None:
    """(id, label) of a verdict record, or None when it is malformed."""
    try:
        doc: Any = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    vid, label = doc.get("id"), doc.get("label")
    if not isinstance(vid, str) or not vid:
        return None
    if isinstance(label, bool) or not isinstance(label, str | int):
        return None
    if (isinstance(label, str) and not label) or (isinstance(label, int) and label < 0):
        return None
    return vid, label


@dataclass
class Verdicts:
    """The verdicts that stand (the last per id, not late) and the count of each problem."""

    standing: dict[str, Verdict] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, raw: bytes | None, order: tuple[int, int, int], late: bool) -> None:
        self.add_parsed(parse(raw), order, late)

    def add_parsed(
        self, parsed: tuple[str, str | int] | None, order: tuple[int, int, int], late: bool
    ) -> None:
        """``add`` of a record ``parse`` has already read (None: malformed)."""
        self.counts["read"] += 1
        if parsed is None:
            self.counts["malformed"] += 1
            return
        if late:
            self.counts["late"] += 1
            return
        vid, label = parsed
        old = self.standing.get(vid)
        if old is not None:
            self.counts["duplicates"] += 1
            if old.order > order:
                return
        self.standing[vid] = Verdict(vid, label, order)


def verdicts_from_lines(lines: Iterable[bytes]) -> Verdicts:
    found = Verdicts()
    for n, line in enumerate(lines):
        if line.strip():
            found.add(line.strip(), (0, 0, n), late=False)
    return found


def outputs_from_lines(lines: Iterable[bytes], topic: str, limits: Limits) -> Outputs:
    found = Outputs()
    for line in lines:
        if line.strip():
            found.add(line.strip(), topic, limits)
    return found


def read_lines(path: Path) -> list[bytes]:
    with path.open("rb") as fh:
        return fh.readlines()


async def outputs_from_topics(
    settings: Settings,
    topic: str,
    start: ranges.Bound | None,
    end: ranges.Bound | None,
    progress: bool | None = None,
) -> Outputs:
    """The topic's events in the routed and escalated topics over ``[start, end)``."""
    found = Outputs()
    names = (settings.outputs.routed, settings.outputs.escalated)
    spans = [s for name in names for s in await ranges.resolve(settings.kafka, name, start, end)]
    bar = Progress("outputs", sum(s.size for s in spans), enabled=progress)
    try:
        async for batch in ranges.read(settings.kafka, spans, 10_000, bar.advance):
            for rec in batch:
                found.add(rec.value, topic, settings.limits)
    finally:
        bar.close()
    return found


async def verdicts_from_topic(
    settings: Settings,
    name: str,
    start: ranges.Bound | None,
    end: ranges.Bound | None,
    progress: bool | None = None,
) -> Verdicts:
    """The verdicts topic over ``[start, its end now)``; records at or after ``end`` are late."""
    spans = await ranges.resolve(settings.kafka, name, start, None)
    cutoff = end.timestamp_ms if end is not None else None
    found = Verdicts()
    records: list[Any] = []
    bar = Progress("verdicts", sum(s.size for s in spans), enabled=progress)
    try:
        async for batch in ranges.read(settings.kafka, spans, 10_000, bar.advance):
            records.extend(batch)
    finally:
        bar.close()
    for rec in sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset)):
        late = cutoff is not None and rec.timestamp >= cutoff
        found.add(rec.value, (rec.timestamp, rec.partition, rec.offset), late)
    return found


# --- the join ----------------------------------------------------------------------------


@dataclass
class Joined:
    """The verdicts usable for a fit, as arrays (logits padded with -inf to the widest)."""

    logits: np.ndarray[Any, np.dtype[np.float64]]
    labels: np.ndarray[Any, np.dtype[np.int64]]
    kinds: list[str]
    counts: Counter[str]


def class_index(label: str | int, n: int, names: Sequence[str] | None) -> int | None:
    """The class a verdict names, or None when the event has no such class."""
    if isinstance(label, int):
        return label if label < n else None
    if names is not None:
        return names.index(label) if label in names else None
    if label.isdigit() and int(label) < n:  # the worker's label for an unnamed class
        return int(label)
    return None


def join(
    outputs: Outputs,
    verdicts: Verdicts,
    topic_labels: Sequence[str] | None,
    ground_truth: bool = False,
) -> Joined:
    counts = Counter(verdicts.counts)
    rows: list[tuple[tuple[float, ...], int, str]] = []
    for vid, verdict in verdicts.standing.items():
        out = outputs.by_id.get(vid)
        if out is None:
            counts["other_topic" if vid in outputs.others else "unknown_id"] += 1
            continue
        names = out.labels if out.labels is not None else topic_labels
        index = class_index(verdict.label, len(out.logits), names)
        if index is None:
            counts["unknown_label"] += 1
            continue
        if out.logits[index] == -math.inf:
            counts["masked_label"] += 1
            continue
        if out.kind == ROUTED and not ground_truth:
            counts["routed_not_sampled"] += 1
            continue
        rows.append((out.logits, index, out.kind))
        counts["used"] += 1
    width = max((len(r[0]) for r in rows), default=2)
    logits = np.full((len(rows), width), -np.inf)
    for i, (row, _, _) in enumerate(rows):
        logits[i, : len(row)] = row
    labels = np.array([r[1] for r in rows], dtype=np.int64)
    return Joined(logits, labels, [r[2] for r in rows], counts)
