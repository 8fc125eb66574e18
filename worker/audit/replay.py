"""``logit-router replay``: re-score a fixed range of an input topic for an audit, and diff each
decision against the one first published for the same source offset.

How it works, in order:

1. The range is fixed (``ranges.resolve``): start and end offsets of every partition read.
2. The end offsets of the three live output topics are fixed too, and those topics are read
   once, in full, up to them. Each output names its input: routed and escalated events carry
   ``source.{topic,partition,offset}``, dead-letter records the ``dlq.source.*`` headers. Only
   outputs whose source lies in the range are kept.
3. The range is read partition by partition, in offset order, and every batch goes through
   ``records.Router(settings).process``: the very code the live worker runs, so the bytes and
   numbers re-computed are the ones the worker would publish under that config.
4. Each event is judged against its originals (``worker.audit.diff``) and written as one JSON line;
   a summary line ends the file.

With ``as_published``, step 3 re-scores each event with the config version its output names,
from the config history, instead of one config (``worker.audit.published``).

Nothing here joins the worker's consumer group or commits (consumers are group-less and
hand-assigned), and nothing is written to the live output topics: ``--to-topic`` refuses them
and the input topics. The output has no wall-clock time and a fixed order (partition, offset;
keys sorted), so two replays of one range under one config are byte-identical.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiokafka import TopicPartition

from worker.audit import ranges
from worker.audit.diff import (
    KINDS,
    View,
    max_abs_difference,
    view_of_outbound,
    view_of_output,
    worst,
)
from worker.audit.progress import Progress
from worker.audit.published import AsPublished
from worker.core.records import Router
from worker.core.settings import Settings
from worker.stream import admin, history
from worker.stream.connections import make_producer

JSON_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


class ReplayRefused(ValueError):
    """An argument the replay must refuse before reading anything (exit status 2)."""


@dataclass
class Originals:
    """The published outputs of the range, by source offset, in the order they were read."""

    by_offset: dict[tuple[int, int], list[View]] = field(default_factory=dict)
    unrecognised: int = 0  # records in the output topics that no worker wrote


@dataclass
class Tally:
    """Counts for the summary; fed one judged event at a time, in output order."""

    replayed: int = 0
    identical: int = 0
    same_bytes: int = 0
    different: int = 0
    missing: int = 0
    unknown_version: int = 0
    dead_lettered: int = 0
    published_more_than_once: int = 0
    max_abs_diff: float | None = None
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    # (original, replay) config versions; a dead-letter record carries none (None).
    versions: dict[str, Counter[tuple[str | None, str | None]]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, line: dict[str, Any]) -> None:
        self.replayed += 1
        if line["status"] == "unknown_version":
            self.unknown_version += 1
            return
        replay, original = line["replay"], line["original"]
        if replay["decision"] == "dead_letter":
            self.dead_lettered += 1
            self.dead_letter_reasons[replay["reason"]] += 1
        if line["originals"] > 1:
            self.published_more_than_once += 1
        if line["same_bytes"]:
            self.same_bytes += 1
        diff = line["max_abs_diff"]
        if diff is not None:
            self.max_abs_diff = diff if self.max_abs_diff is None else max(self.max_abs_diff, diff)
        status: Literal["identical", "different", "missing"] = line["status"]
        if status == "identical":
            self.identical += 1
        elif status == "missing":
            self.missing += 1
        else:
            self.different += 1
            kind = line["kind"]
            self.kinds[kind] += 1
            pair = (original["config_version"], replay["config_version"])
            self.versions[kind][pair] += 1
            self.examples.setdefault(kind, line)

    def summary(
        self, topic: str, spans: Sequence[ranges.Span], settings: Settings
    ) -> dict[str, Any]:
        differences = {
            kind: {
                "count": self.kinds[kind],
                "versions": [
                    {"original": a, "replay": b, "count": n}
                    for (a, b), n in sorted(self.versions[kind].items(), key=_by_text)
                ],
                "example": self.examples[kind],
            }
            for kind in KINDS
            if self.kinds[kind]
        }
        return {
            "type": "summary",
            "topic": topic,
            "range": [{"partition": s.partition, "from": s.start, "to": s.end} for s in spans],
            "config_version": settings.config_version,
            "replayed": self.replayed,
            "identical": self.identical,
            "same_bytes": self.same_bytes,
            "different": self.different,
            "differences": differences,
            "missing": self.missing,
            "unknown_version": self.unknown_version,
            "dead_lettered": self.dead_lettered,
            "dead_letter_reasons": dict(sorted(self.dead_letter_reasons.items())),
            "published_more_than_once": self.published_more_than_once,
            "max_abs_diff": self.max_abs_diff,
        }


def judge(
    record: Any, replayed: View, originals: Sequence[View], tolerance: float
) -> dict[str, Any]:
    """One event's line: what the replay decides, what was published, and how they differ."""
    line = _event_line(record, replayed.id, originals)
    line["replay"] = replayed.public()
    if not originals:
        return line
    original, kind = worst(originals, replayed, tolerance)
    line.update(
        id=replayed.id or original.id,
        original=original.public(),
        status="identical" if kind is None else "different",
        kind=kind,
        max_abs_diff=max_abs_difference(original, replayed),
        same_bytes=all(o.raw == replayed.raw for o in originals),
    )
    return line


def unknown_version(record: Any, version: str | None, originals: Sequence[View]) -> dict[str, Any]:
    """The line of an event that cannot be re-scored: the history lacks its version."""
    line = _event_line(record, originals[0].id if originals else None, originals)
    line.update(
        status="unknown_version",
        config_version=version,
        original=originals[0].public() if originals else None,
    )
    return line


def _event_line(record: Any, event_id: str | None, originals: Sequence[View]) -> dict[str, Any]:
    return {
        "type": "event",
        "source": {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
        },
        "id": event_id,
        "replay": None,
        "originals": len(originals),
        "original": None,
        "status": "missing",
        "kind": None,
        "max_abs_diff": None,
        "same_bytes": None,
    }


async def read_originals(
    settings: Settings, topic: str, spans: Sequence[ranges.Span], progress: Progress
) -> Originals:
    """One pass over the live outputs, up to the end offsets fixed now; keep the range's."""
    outputs = settings.outputs
    kinds = {
        outputs.routed: "scored",
        outputs.escalated: "scored",
        outputs.dead_letter: "dead_letter",
    }
    tps = await admin.partitions(settings.kafka, kinds)
    by_partition = {s.partition: s for s in spans}
    found = Originals()
    async with admin.standalone_consumer(settings.kafka) as consumer:
        first: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
        last: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        fixed = [ranges.Span(tp.topic, tp.partition, first[tp], last[tp]) for tp in tps]
    progress.total = sum(s.size for s in fixed)
    async for batch in ranges.read(settings.kafka, fixed, 10_000, progress.advance):
        for rec in batch:
            seen = view_of_output(kinds[rec.topic], rec.key, rec.value, rec.headers)  # type: ignore[arg-type]
            if seen is None:
                found.unrecognised += 1
                continue
            (src_topic, partition, offset), view = seen
            span = by_partition.get(partition)
            if src_topic == topic and span is not None and offset in span:
                found.by_offset.setdefault((partition, offset), []).append(view)
    progress.close()
    return found


def check_target(
    settings: Settings, topic: str, to_topic: str | None, as_published: bool = False
) -> None:
    """The topic needs a policy (unless the history gives it one), and ``--to-topic`` must be
    a topic of its own: never a live output, never an input."""
    if topic not in settings.topics and not as_published:
        known = ", ".join(sorted(settings.topics))
        raise ReplayRefused(f"topic {topic} has no policy in the config (configured: {known})")
    if to_topic is None:
        return
    o = settings.outputs
    if to_topic in (o.routed, o.escalated, o.dead_letter):
        raise ReplayRefused(
            f"--to-topic {to_topic} is a live output topic; name a topic of its own"
        )
    if to_topic in settings.topics or to_topic == topic:
        raise ReplayRefused(f"--to-topic {to_topic} is an input topic; name a topic of its own")


async def replay(
    settings: Settings,
    topic: str,
    start: ranges.Bound | None,
    end: ranges.Bound | None,
    *,
    write: Callable[[bytes], object] | None = None,
    to_topic: str | None = None,
    tolerance: float = 0.0,
    progress: bool | None = None,
    as_published: bool = False,
) -> dict[str, Any]:
    """Replay the range; ``write`` gets each JSON line; return the summary."""
    check_target(settings, topic, to_topic, as_published)
    kafka = settings.kafka
    spans = await ranges.resolve(kafka, topic, start, end)
    if to_topic is not None and not await admin.partitions(kafka, [to_topic]):
        raise LookupError(f"--to-topic {to_topic} does not exist (create it first)")
    originals = await read_originals(
        settings, topic, spans, Progress("originals", 0, enabled=progress)
    )
    published = await _published(settings, originals) if as_published else None
    router = Router(settings)
    tally = Tally()
    bar = Progress("replay", sum(s.size for s in spans), enabled=progress)
    producer = make_producer(kafka) if to_topic is not None else None
    if producer is not None:
        await producer.start()
    try:
        batch_size = settings.processing.batch_records
        async for batch in ranges.read(kafka, spans, batch_size, bar.advance):
            if published is not None:
                scored = published.process(batch)
            else:
                scored = [(o, settings.config_version) for o in router.process(batch)]
            for rec, (out, version) in zip(batch, scored, strict=True):
                found = originals.by_offset.get((rec.partition, rec.offset), [])
                if out is None:
                    line = unknown_version(rec, version, found)
                else:
                    line = judge(rec, view_of_outbound(out), found, tolerance)
                if published is not None:  # a dead letter's view names no version: say it here
                    line["config_version"] = version or settings.config_version
                tally.add(line)
                if write is not None:
                    write(orjson.dumps(line, option=JSON_OPTS))
            if producer is not None:
                futures = [
                    await producer.send(to_topic, o.value, key=o.key, headers=o.headers)
                    for o, _ in scored
                    if o is not None
                ]
                for future in futures:
                    await future
    finally:
        if producer is not None:
            await producer.stop()
        bar.close()
    summary = tally.summary(topic, spans, settings)
    summary["unrecognised_outputs"] = originals.unrecognised
    summary["as_published"] = as_published
    if published is not None:
        summary["versions_used"] = dict(sorted(published.used.items()))
        summary["unknown_versions"] = dict(sorted(published.unknown.items()))
    if write is not None:
        write(orjson.dumps(summary, option=JSON_OPTS))
    return summary


async def _published(settings: Settings, originals: Originals) -> AsPublished:
    """Each event's recorded version, with the documents of the config history."""
    recorded = await history.read_history(settings.kafka, settings.outputs.config_history)
    documents = {e.version: e.document for e in recorded}
    return AsPublished(settings, documents, originals.by_offset)


def human(summary: dict[str, Any]) -> str:
    """The summary for people, a few lines."""
    spans = [
        ranges.Span(summary["topic"], r["partition"], r["from"], r["to"]) for r in summary["range"]
    ]
    lines = [
        f"replay of {summary['topic']} ({ranges.describe(spans)})",
        _config_line(summary),
        f"  replayed           {summary['replayed']}",
        f"  identical          {summary['identical']}  ({summary['same_bytes']} byte for byte)",
        f"  different          {summary['different']}",
    ]
    for kind, d in summary["differences"].items():
        ex = d["example"]
        src = ex["source"]
        before, after = ex["original"], ex["replay"]
        versions = "; ".join(
            f"{_short(v['original'])} -> {_short(v['replay'])} ({v['count']})"
            for v in d["versions"]
        )
        lines.append(f"    {kind:<15}{d['count']}  {versions}")
        lines.append(
            f"      e.g. {src['topic']}[{src['partition']}]@{src['offset']} id={ex['id']}: "
            f"{_said(before)} -> {_said(after)}"
        )
    if summary["unknown_version"]:
        unknown = ", ".join(_short(v) for v in summary["unknown_versions"])
        lines.append(
            f"  version unknown    {summary['unknown_version']}  (not in history: {unknown})"
        )
    lines += [
        f"  original missing   {summary['missing']}",
        f"  dead-lettered      {summary['dead_lettered']}"
        + _reasons(summary["dead_letter_reasons"]),
    ]
    if summary["published_more_than_once"]:
        lines.append(f"  published twice+   {summary['published_more_than_once']} (redelivered)")
    if summary["max_abs_diff"] is not None:
        lines.append(f"  max |dp|           {summary['max_abs_diff']:.3g}")
    return "\n".join(lines) + "\n"


def _config_line(summary: dict[str, Any]) -> str:
    if not summary["as_published"]:
        return f"  config             {summary['config_version']}"
    used = "; ".join(f"{_short(v)} ({n})" for v, n in summary["versions_used"].items())
    return f"  config             as published: {used or 'none'}"


def _by_text(item: tuple[tuple[str | None, str | None], int]) -> tuple[str, str]:
    (a, b), _ = item
    return (a or "", b or "")


def _short(version: str | None) -> str:
    if version is None:
        return "(none)"
    return version if len(version) <= 19 else version[:19] + "…"


def _said(view: dict[str, Any]) -> str:
    text = f"{view['decision']}"
    if view["label"] is not None:
        text += f" {view['label']}"
    if view["reason"] is not None:
        text += f" ({view['reason']})"
    if view["margin"] is not None:
        text += f" margin={view['margin']:.4f}"
    return text


def _reasons(reasons: dict[str, int]) -> str:
    if not reasons:
        return ""
    return "  (" + ", ".join(f"{r} {n}" for r, n in reasons.items()) + ")"


def differs(summary: dict[str, Any]) -> bool:
    """What ``--fail-on-diff`` fails on: any difference, an original that cannot be found, or
    a version the history does not hold."""
    return bool(summary["different"] or summary["missing"] or summary["unknown_version"])
