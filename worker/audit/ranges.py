"""Ranges of a topic for ``replay``, ``whatif`` and ``plot margins``: parse, fix, read.

A bound (``--from`` / ``--to``) is either an ISO-8601 time with a timezone
(``2026-11-26T12:00:00Z``) or ``partition:offset`` pairs (``0:120`` or ``0:120,2:7``).

* A time bound stands, on every partition, for the first offset whose record timestamp is at
  or after that time (Kafka's ListOffsets by timestamp, ``consumer.offsets_for_times``); past
  the last record it is the end of the partition.
* ``partition:offset`` bounds also choose the partitions: only the partitions they name are
  read. When both bounds name partitions, they must name the same ones.
* The range is half-open, ``[from, to)``, like Kafka's own end offsets: ``--from 0:100 --to
  0:200`` reads offsets 100 to 199. No ``--from`` is the start of each partition, no ``--to``
  its end.

The range is fixed once, when a command starts (``resolve``): records published later are
not read, so the same range gives the same records however long the read takes. Reading is by
hand-assigned partitions on a consumer outside any group (``admin.standalone_consumer``): it
never joins the worker's group and never commits.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import TopicPartition

from worker.core.kafka_settings import KafkaSettings
from worker.stream import admin

_PAIRS = re.compile(r"^\s*\d+\s*:\s*\d+\s*(,\s*\d+\s*:\s*\d+\s*)*$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
STALL_TIMEOUT_S = 60.0  # no progress on a partition for this long: the read gives up


class RangeError(ValueError):
    """A bound that cannot be parsed, or that does not fit the topic (exit status 2)."""


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of a range: a time in epoch milliseconds, or an offset per named partition."""

    text: str
    timestamp_ms: int | None = None
    offsets: tuple[tuple[int, int], ...] = ()

    @property
    def partitions(self) -> frozenset[int]:
        return frozenset(p for p, _ in self.offsets)


@dataclass(frozen=True, slots=True)
class Span:
    """The offsets ``[start, end)`` of one partition, fixed when a command starts."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)

    def __contains__(self, offset: object) -> bool:
        return isinstance(offset, int) and self.start <= offset < self.end


def parse_bound(text: str) -> Bound:
    """``2026-11-26T12:00:00Z`` or ``0:120,1:7`` to a ``Bound``; ``RangeError`` if neither."""
    if _PAIRS.match(text):
        pairs: dict[int, int] = {}
        for part in text.split(","):
            p, o = (int(x) for x in part.split(":"))
            if p in pairs:
                raise RangeError(f"partition {p} is named twice in {text!r}")
            pairs[p] = o
        return Bound(text, offsets=tuple(sorted(pairs.items())))
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RangeError(
            f"not an ISO time or partition:offset: {text!r} (e.g. 2026-11-26T12:00:00Z or 0:120)"
        ) from None
    if when.tzinfo is None:
        raise RangeError(f"give the time a timezone, e.g. {text.strip()}Z: {text!r}")
    ms = (when - _EPOCH) // timedelta(milliseconds=1)
    if ms < 0:
        raise RangeError(f"time before 1970 has no Kafka offset: {text!r}")
    return Bound(text, timestamp_ms=ms)


def check_order(start: Bound | None, end: Bound | None) -> None:
    """Refuse what is wrong before touching Kafka: mixed partitions, ``--from`` after ``--to``."""
    if start is None or end is None:
        return
    if start.timestamp_ms is not None and end.timestamp_ms is not None:
        if start.timestamp_ms > end.timestamp_ms:
            raise RangeError(f"--from {start.text} is later than --to {end.text}")
        return
    if start.offsets and end.offsets:
        if start.partitions != end.partitions:
            raise RangeError(
                f"--from names partitions {sorted(start.partitions)}, "
                f"--to names {sorted(end.partitions)}: name the same ones"
            )
        ends = dict(end.offsets)
        for p, o in start.offsets:
            if o > ends[p]:
                raise RangeError(f"--from {p}:{o} is after --to {p}:{ends[p]}")


async def resolve(
    kafka: KafkaSettings, topic: str, start: Bound | None, end: Bound | None
) -> list[Span]:
    """Fix the range now: one span per partition read, in partition order."""
    check_order(start, end)
    tps = await admin.partitions(kafka, [topic])
    if not tps:
        raise LookupError(f"topic {topic} does not exist")
    chosen = _chosen(topic, tps, start, end)
    async with admin.standalone_consumer(kafka) as consumer:
        first: dict[TopicPartition, int] = await consumer.beginning_offsets(chosen)
        last: dict[TopicPartition, int] = await consumer.end_offsets(chosen)
        lo = await _offsets(consumer, start, chosen, first)
        hi = await _offsets(consumer, end, chosen, last)
    spans = []
    for tp in chosen:
        a = min(max(lo[tp], first[tp]), last[tp])
        b = min(max(hi[tp], a), last[tp])
        spans.append(Span(topic, tp.partition, a, b))
    return spans


def _chosen(
    topic: str, tps: Sequence[TopicPartition], start: Bound | None, end: Bound | None
) -> list[TopicPartition]:
    named: set[int] = set()
    for bound in (start, end):
        if bound is not None and bound.offsets:
            named |= bound.partitions
    if not named:
        return sorted(tps, key=lambda tp: tp.partition)
    have = {tp.partition for tp in tps}
    unknown = sorted(named - have)
    if unknown:
        raise RangeError(
            f"topic {topic} has partitions 0..{max(have)}, not {', '.join(map(str, unknown))}"
        )
    return [TopicPartition(topic, p) for p in sorted(named)]


async def _offsets(
    consumer: Any,
    bound: Bound | None,
    tps: Sequence[TopicPartition],
    default: dict[TopicPartition, int],
) -> dict[TopicPartition, int]:
    if bound is None:
        return dict(default)
    if bound.offsets:
        given = dict(bound.offsets)
        return {tp: given[tp.partition] for tp in tps}
    found = await consumer.offsets_for_times({tp: bound.timestamp_ms for tp in tps})
    ends: dict[TopicPartition, int] = await consumer.end_offsets(list(tps))
    return {tp: ends[tp] if found.get(tp) is None else found[tp].offset for tp in tps}


async def read(
    kafka: KafkaSettings,
    spans: Sequence[Span],
    batch_records: int = 1000,
    on_progress: Callable[[int], None] | None = None,
) -> AsyncIterator[list[Any]]:
    """The records of each span in offset order, partition after partition, in batches.

    ``on_progress`` gets the number of offsets passed (records, plus any gap of transaction
    markers or compacted records), so that a caller can show progress against span sizes.
    """
    async with admin.standalone_consumer(kafka) as consumer:
        for span in spans:
            if span.size == 0:
                continue
            tp = TopicPartition(span.topic, span.partition)
            consumer.assign([tp])
            consumer.seek(tp, span.start)
            done = span.start
            moved = time.monotonic()
            while done < span.end:
                fetched = await consumer.getmany(tp, timeout_ms=500, max_records=batch_records)
                records = [r for r in fetched.get(tp, []) if r.offset < span.end]
                position = min(await consumer.position(tp), span.end)
                if position > done:
                    if on_progress is not None:
                        on_progress(position - done)
                    done = position
                    moved = time.monotonic()
                elif time.monotonic() - moved > STALL_TIMEOUT_S:
                    raise TimeoutError(
                        f"{span.topic}[{span.partition}] stopped at offset {done} "
                        f"before {span.end} for {STALL_TIMEOUT_S:g}s"
                    )
                if records:
                    yield records


def describe(spans: Sequence[Span]) -> str:
    """``p0 100..199, p1 empty`` for people."""
    parts = []
    for s in spans:
        parts.append(f"p{s.partition} {s.start}..{s.end - 1}" if s.size else f"p{s.partition} -")
    return ", ".join(parts)
