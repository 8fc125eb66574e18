"""From consumed records to the records to publish: decode, score, decide, build. No I/O.

The live pipeline, ``replay`` and the benchmarks all run a batch through ``Router.process``,
so the bytes an auditor re-computes are the bytes the worker published. Each record goes
through the compiled hot path (``worker.core.native``) when it is installed and accepts the record,
else through the Python path here; on one platform both write the same bytes (on another,
``exp`` and ``log`` may differ in the last bit: see ``worker.core.routing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import orjson

from worker import __version__
from worker.core import native
from worker.core.events import EventError, decode_routable, dumps_document
from worker.core.native import Compiled
from worker.core.routing import Decision, Policy, Routing, ScoringError, route
from worker.core.schema import ABSENT, PER_RECORD, template
from worker.core.settings import Settings

if TYPE_CHECKING:
    from logit_router_native import RouteJob

Kind = Literal["routed", "escalated", "dead_letter"]
Headers = list[tuple[str, bytes]]

DLQ_MESSAGE_LIMIT = 1024  # bytes of the error message kept in the dead-letter header
DLQ_PREFIX = "dlq."
# Why an output, or its dead letter, could not be written where it was meant to go.
WriteRefusal = Literal["output_too_large", "output_refused", "dead_letter_too_large"]
PRIOR_PREFIX = "prior."  # before the dlq.* headers a record already carried


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


class FetchedRecord(NamedTuple):
    """A consumed record: aiokafka's ``ConsumerRecord`` fields, in its order."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    checksum: int | None
    serialized_key_size: int
    serialized_value_size: int
    headers: tuple[tuple[str, bytes], ...]


class Summary(NamedTuple):
    """What the metrics read of a scored event."""

    top1: float
    margin: float
    entropy: float


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
    scores: Summary | None  # None for a dead letter
    shadow: Decision | None = None  # the shadow policy's decision, for topics with one


# The dead-letter reason of a record this code failed on in a way it did not foresee.
INTERNAL_ERROR = "internal_error"


class Router:
    """Turns a batch of consumed records into exactly one outbound record each, in order."""

    def __init__(self, settings: Settings) -> None:
        self.outputs = settings.outputs
        self.policies: dict[str, Policy] = settings.policies()
        self.max_bytes = settings.limits.max_event_bytes
        self.max_classes = settings.limits.max_classes
        self.config_version = settings.config_version
        # Built once per topic; both paths lay out their outputs from these.
        self._templates = {
            topic: output_template(topic, p, self.config_version)
            for topic, p in self.policies.items()
        }
        self.native_topics: dict[str, Any] | None = None
        if native.in_use(settings):
            self.native_topics = native.topics(
                self.policies,
                self._templates,
                max_bytes=self.max_bytes,
                max_classes=self.max_classes,
            )

    def process(self, records: Sequence[ConsumedRecord]) -> list[Outbound]:
        return self.finish(records, self.compiled(records))

    def compiled(self, records: Sequence[ConsumedRecord]) -> list[Compiled | None] | None:
        """The compiled hot path's part: per record its output, or ``None`` where the Python
        path must do it; ``None`` for the lot when the compiled module is not in use."""
        topics, route_many = self.native_topics, native.route_many
        if topics is None or route_many is None:
            return None
        return route_many(*_columns(topics, records))

    def begin(self, records: Sequence[ConsumedRecord], notify_fd: int) -> RouteJob | None:
        """``compiled`` on the compiled module's routing threads: the job, which writes a byte
        to ``notify_fd`` when done; ``None`` when the compiled module is not in use."""
        topics = self.native_topics
        if topics is None or native.RouteJob is None:
            return None
        return native.RouteJob(*_columns(topics, records), notify_fd)

    def finish(
        self, records: Sequence[ConsumedRecord], compiled: Sequence[Compiled | None] | None
    ) -> list[Outbound]:
        """One output per record, in order: the compiled result where there is one, else the
        Python path's."""
        if compiled is None:
            return [self._process_one(rec) for rec in records]
        build = native.outbounds
        assert build is not None  # noqa: S101 - compiled results come from the same module
        texts = (self.outputs.routed, self.outputs.escalated, "routed", "escalated")
        built = build(list(records), list(compiled), _KINDS, texts)
        if None in built:
            for i in [i for i, o in enumerate(built) if o is None]:
                built[i] = self._process_one(records[i])
        return built  # every None replaced

    def _process_one(self, rec: ConsumedRecord) -> Outbound:
        """The Python path: the reference the compiled one is held to.

        Whatever a record makes this code raise costs that record a dead letter
        (``internal_error``, with the exception's class and message in its headers), not its
        partition's progress: a record that raised once would raise again after every restart.
        Only running out of memory, which is the process's state and not the record's, is
        raised."""
        try:
            return self._decoded_and_routed(rec)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any defect of ours, one record at a time
            return self.dead_letter(rec, INTERNAL_ERROR, exc)

    def _decoded_and_routed(self, rec: ConsumedRecord) -> Outbound:
        try:
            doc, logits, labels = decode_routable(
                rec.value, max_bytes=self.max_bytes, max_classes=self.max_classes
            )
        except EventError as exc:
            return self.dead_letter(rec, exc.code, exc)
        policy = self.policies[rec.topic]
        try:
            routing = route(logits, policy, labels, doc["id"])
        except ScoringError as exc:
            return self.dead_letter(rec, exc.code, exc)
        # What the shadow policy would decide: never sampled, never where the event goes.
        shadow = None if policy.shadow is None else route(logits, policy.shadow, labels)
        return self._decided(rec, doc, routing, shadow)

    def _decided(
        self, rec: ConsumedRecord, doc: dict[str, Any], routing: Routing, shadow: Routing | None
    ) -> Outbound:
        """The input document (ours alone: decoded for this batch) plus decision and provenance.

        The keys come in the order of the topic's template; a key the input already had keeps
        its place and takes the new value (``dict.update``).
        """
        topic = rec.topic
        s = routing.scores
        fields = self._templates[topic].copy()
        fields["decision"] = routing.decision
        fields["label"] = routing.label
        fields["class_index"] = s.class_index
        fields["probabilities"] = s.probabilities
        fields["top1"] = s.top1
        fields["top2"] = s.top2
        fields["margin"] = s.margin
        fields["entropy"] = s.entropy
        fields["reason"] = routing.reason
        if shadow is not None:
            fields["shadow"] = {
                "decision": shadow.decision,
                "reason": shadow.reason,
                "margin": shadow.scores.margin,
            }
        fields["source"] = {
            **fields["source"],
            "partition": rec.partition,
            "offset": rec.offset,
            "timestamp": rec.timestamp,
        }
        doc.update(fields)
        try:
            value = dumps_document(doc)
        except orjson.JSONEncodeError as exc:
            # Decoding should refuse anything orjson cannot write back; should a case slip
            # through, the record is dead-lettered rather than stopping the partition.
            return self.dead_letter(rec, "not_encodable", exc)
        routed = routing.decision == "routed"
        return Outbound(
            self.outputs.routed if routed else self.outputs.escalated,
            rec.key,
            value,
            list(rec.headers),
            routing.decision,
            routing.reason,
            topic,
            rec.partition,
            rec.offset,
            rec.timestamp,
            Summary(s.top1, s.margin, s.entropy),
            None if shadow is None else shadow.decision,
        )

    def dead_letter(self, rec: ConsumedRecord, reason: str, error: Exception) -> Outbound:
        """The record unchanged, byte for byte, with why and where in added headers. ``dlq.*``
        headers it already carries (a dead letter fed back in) are renamed ``prior.dlq.*``, so
        the ``dlq.*`` a reader finds are this worker's."""
        headers = [
            (PRIOR_PREFIX + name if name.startswith(DLQ_PREFIX) else name, value)
            for name, value in rec.headers
        ]
        headers += _dlq_headers(rec, reason, error)
        return self._to_dead_letter_topic(rec, rec.key, rec.value, headers, reason)

    def claim_check(self, rec: ConsumedRecord, reason: str, error: Exception) -> Outbound:
        """A dead letter too large for the dead-letter topic, in its place: no key, no value and
        none of the record's own headers; this worker's headers say where the original lies in
        the input topic, why it was refused, and how large its dead letter was."""
        headers = _dlq_headers(rec, "dead_letter_too_large", error)
        headers.append((DLQ_PREFIX + "original_reason", reason.encode()))
        return self._to_dead_letter_topic(rec, None, None, headers, "dead_letter_too_large")

    def _to_dead_letter_topic(
        self,
        rec: ConsumedRecord,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        reason: str,
    ) -> Outbound:
        return Outbound(
            topic=self.outputs.dead_letter,
            key=key,
            value=value,
            headers=headers,
            kind="dead_letter",
            reason=reason,
            source_topic=rec.topic,
            source_partition=rec.partition,
            source_offset=rec.offset,
            source_timestamp=rec.timestamp,
            scores=None,
        )


def _dlq_headers(rec: ConsumedRecord, reason: str, error: Exception) -> Headers:
    return [
        (DLQ_PREFIX + "reason", reason.encode()),
        (DLQ_PREFIX + "error_class", type(error).__name__.encode()),
        (DLQ_PREFIX + "message", bounded(str(error), DLQ_MESSAGE_LIMIT)),
        (DLQ_PREFIX + "source.topic", rec.topic.encode()),
        (DLQ_PREFIX + "source.partition", str(rec.partition).encode()),
        (DLQ_PREFIX + "source.offset", str(rec.offset).encode()),
        (DLQ_PREFIX + "source.timestamp", str(rec.timestamp).encode()),
        (DLQ_PREFIX + "worker_version", __version__.encode()),
    ]


def _columns(
    topics: dict[str, Any], records: Sequence[ConsumedRecord]
) -> tuple[list[Any], list[bytes | None], list[int], list[int], list[int | None]]:
    """What the compiled calls take: per record its topic's compiled ``Topic``, value,
    partition, offset and timestamp."""
    return (
        [topics[r.topic] for r in records],
        [r.value for r in records],
        [r.partition for r in records],
        [r.offset for r in records],
        [r.timestamp for r in records],
    )


# What ``native.outbounds`` makes outputs of; records of the third type are read by index.
_KINDS = (Outbound, Summary, FetchedRecord)


def output_template(topic: str, policy: Policy, config_version: str) -> dict[str, Any]:
    """What an input topic's outputs add to the event: constants set, per-record values to fill
    (``_decided`` in Python, the compiled path in Rust)."""
    return template(
        {
            "decision": PER_RECORD,
            "label": PER_RECORD,
            "class_index": PER_RECORD,
            "probabilities": PER_RECORD,
            "top1": PER_RECORD,
            "top2": PER_RECORD,
            "margin": PER_RECORD,
            "entropy": PER_RECORD,
            "temperature": policy.temperature,
            "policy": {"min_margin": policy.min_margin, "min_top1": policy.min_top1},
            "reason": PER_RECORD,
            "shadow": ABSENT
            if policy.shadow is None
            else {"decision": PER_RECORD, "reason": PER_RECORD, "margin": PER_RECORD},
            "source": {
                "topic": topic,
                "partition": PER_RECORD,
                "offset": PER_RECORD,
                "timestamp": PER_RECORD,
            },
            "config_version": config_version,
            "worker_version": __version__,
        }
    )


def bounded(text: str, limit: int) -> bytes:
    """UTF-8 of ``text`` cut to at most ``limit`` bytes, never inside a character."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    return data[: limit - 3].decode("utf-8", "ignore").encode() + b"..."
