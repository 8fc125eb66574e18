"""From consumed records to the records to publish: decode, score, decide, build. No I/O.

The live pipeline, ``replay`` and the benchmarks all run a batch through ``Router.process``,
so the bytes an auditor re-computes are the bytes the worker published.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

import orjson

from worker import __version__
from worker.batch import Item, route_batch
from worker.events import EventError, InputEvent, decode_document
from worker.routing import Policy, Routing, ScoringError
from worker.settings import Settings

Kind = Literal["routed", "escalated", "dead_letter"]
Headers = list[tuple[str, bytes]]

DLQ_MESSAGE_LIMIT = 1024  # bytes of the error message kept in the dead-letter header
DLQ_PREFIX = "dlq."


class ConsumedRecord(Protocol):
    """What we read of an aiokafka ``ConsumerRecord`` (so tests and replay can pass their own)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Outbound(NamedTuple):
    """One record to publish, and what the metrics need to know about it."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    kind: Kind
    reason: str | None
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp: int
    routing: Routing | None


@dataclass(frozen=True, slots=True)
class _Pending:
    record: ConsumedRecord
    doc: dict[str, Any]
    event: InputEvent


class Router:
    """Turns a batch of consumed records into exactly one outbound record each, in order."""

    def __init__(self, settings: Settings) -> None:
        self.outputs = settings.outputs
        self.policies: dict[str, Policy] = settings.policies()
        self.max_bytes = settings.limits.max_event_bytes
        self.max_classes = settings.limits.max_classes
        self.config_version = settings.config_version

    def process(self, records: Sequence[ConsumedRecord]) -> list[Outbound]:
        out: list[Outbound | None] = [None] * len(records)
        pending: list[tuple[int, _Pending]] = []
        for i, rec in enumerate(records):
            try:
                doc, event = decode_document(
                    rec.value, max_bytes=self.max_bytes, max_classes=self.max_classes
                )
            except EventError as exc:
                out[i] = self.dead_letter(rec, exc.code, exc)
                continue
            pending.append((i, _Pending(rec, doc, event)))
        items = [
            Item(p.event.logit_values(), self.policies[p.record.topic], p.event.labels)
            for _, p in pending
        ]
        for (i, p), result in zip(pending, route_batch(items), strict=True):
            if isinstance(result, ScoringError):
                out[i] = self.dead_letter(p.record, result.code, result)
            else:
                out[i] = self._decided(p, result)
        return out  # type: ignore[return-value]  # every slot is filled above

    def _decided(self, p: _Pending, routing: Routing) -> Outbound:
        rec = p.record
        policy = self.policies[rec.topic]
        s = routing.scores
        doc = dict(p.doc)
        doc.update(
            decision=routing.decision,
            label=routing.label,
            class_index=s.class_index,
            probabilities=s.probabilities,
            top1=s.top1,
            top2=s.top2,
            margin=s.margin,
            entropy=s.entropy,
            temperature=policy.temperature,
            policy={"min_margin": policy.min_margin, "min_top1": policy.min_top1},
            reason=routing.reason,
            source={
                "topic": rec.topic,
                "partition": rec.partition,
                "offset": rec.offset,
                "timestamp": rec.timestamp,
            },
            config_version=self.config_version,
            worker_version=__version__,
        )
        topic = self.outputs.routed if routing.decision == "routed" else self.outputs.escalated
        return Outbound(
            topic=topic,
            key=rec.key,
            value=orjson.dumps(doc),
            headers=list(rec.headers),
            kind=routing.decision,
            reason=routing.reason,
            source_topic=rec.topic,
            source_partition=rec.partition,
            source_offset=rec.offset,
            source_timestamp=rec.timestamp,
            routing=routing,
        )

    def dead_letter(self, rec: ConsumedRecord, reason: str, error: Exception) -> Outbound:
        """The record unchanged, byte for byte, with why and where in added headers."""
        headers = list(rec.headers)
        headers += [
            (DLQ_PREFIX + "reason", reason.encode()),
            (DLQ_PREFIX + "error_class", type(error).__name__.encode()),
            (DLQ_PREFIX + "message", bounded(str(error), DLQ_MESSAGE_LIMIT)),
            (DLQ_PREFIX + "source.topic", rec.topic.encode()),
            (DLQ_PREFIX + "source.partition", str(rec.partition).encode()),
            (DLQ_PREFIX + "source.offset", str(rec.offset).encode()),
            (DLQ_PREFIX + "source.timestamp", str(rec.timestamp).encode()),
            (DLQ_PREFIX + "worker_version", __version__.encode()),
        ]
        return Outbound(
            topic=self.outputs.dead_letter,
            key=rec.key,
            value=rec.value,
            headers=headers,
            kind="dead_letter",
            reason=reason,
            source_topic=rec.topic,
            source_partition=rec.partition,
            source_offset=rec.offset,
            source_timestamp=rec.timestamp,
            routing=None,
        )


def bounded(text: str, limit: int) -> bytes:
    """UTF-8 of ``text`` cut to at most ``limit`` bytes, never inside a character."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    return data[: limit - 3].decode("utf-8", "ignore").encode() + b"..."
