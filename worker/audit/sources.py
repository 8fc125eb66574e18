"""Recorded events for ``whatif`` and ``plot margins``: from a topic range or a JSONL file.

A JSONL file holds one event a line: either input events as classifiers publish them, or the
worker's output events (read back from the routed or escalated topics), which carry the input
fields, logits included, plus ``source.topic``. Both decode with the worker's own strict
decoder; a line it would dead-letter is counted as not readable, not guessed at.

The topic of a line is its ``source.topic`` when it has one; otherwise the one ``--topic``
given, or else the file's name. With ``--topic``, lines of other topics are left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from worker.audit import ranges
from worker.audit.progress import Progress
from worker.audit.whatif import Sample
from worker.core.events import EventError, decode_document
from worker.core.settings import Limits, Settings


@dataclass
class Loaded:
    """Samples per topic, and how many records of each topic could not be read."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)
    unreadable: Counter[str] = field(default_factory=Counter)

    def add(self, topic: str, raw: bytes | None, limits: Limits) -> None:
        try:
            _, event = decode_document(
                raw, max_bytes=limits.max_event_bytes, max_classes=limits.max_classes
            )
        except EventError:
            self.unreadable[topic] += 1
            self.samples.setdefault(topic, [])
            return
        self.samples.setdefault(topic, []).append(Sample(event.logit_values(), event.labels))

    def topics(self) -> list[str]:
        return sorted(self.samples)


def from_lines(
    lines: Iterable[bytes], name: str, only: Sequence[str] = (), limits: Limits | None = None
) -> Loaded:
    """Events of a JSONL file (already split in lines); blank lines are skipped."""
    limits = limits or Limits()
    default = only[0] if len(only) == 1 else name
    loaded = Loaded()
    for line in lines:
        raw = line.strip()
        if not raw:
            continue
        topic = _source_topic(raw) or default
        if only and topic not in only:
            continue
        loaded.add(topic, raw, limits)
    return loaded


def from_file(path: Path, only: Sequence[str] = (), limits: Limits | None = None) -> Loaded:
    with path.open("rb") as fh:
        return from_lines(fh, path.name, only, limits)


def _source_topic(raw: bytes) -> str | None:
    try:
        doc: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    source = doc.get("source") if isinstance(doc, dict) else None
    topic = source.get("topic") if isinstance(source, dict) else None
    return topic if isinstance(topic, str) else None


async def from_topics(
    settings: Settings,
    topics: Sequence[str],
    start: ranges.Bound | None,
    end: ranges.Bound | None,
    progress: bool | None = None,
) -> tuple[Loaded, dict[str, list[ranges.Span]]]:
    """Events of each topic's range, fixed when called; also the spans that were read."""
    loaded = Loaded()
    fixed = {t: await ranges.resolve(settings.kafka, t, start, end) for t in topics}
    bar = Progress(
        "reading", sum(s.size for spans in fixed.values() for s in spans), enabled=progress
    )
    try:
        for topic, spans in fixed.items():
            loaded.samples.setdefault(topic, [])
            async for batch in ranges.read(settings.kafka, spans, 10_000, bar.advance):
                for rec in batch:
                    loaded.add(topic, rec.value, settings.limits)
    finally:
        bar.close()
    return loaded, fixed
