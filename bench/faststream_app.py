"""The same job written as a FastStream application (FastStream's Kafka broker is aiokafka, the
worker's client), for comparison. Two settings sets, both at-least-once:

* ``default``: a typical FastStream app. One message per handler call, each output published
  and its acknowledgement awaited, the offset committed after each message
  (``AckPolicy.ACK``: FastStream's own default, ``ACK_FIRST``, is Kafka's auto-commit, which can
  commit a record before its output is written). Every other setting is FastStream's default:
  ``fetch_min_bytes=1``, ``fetch_max_wait_ms=500``, producer ``max_batch_size=16384``,
  ``linger_ms=0``, ``acks=1``.
* ``tuned``: the worker's fetch and batch settings. A batch subscriber (up to 2,000 records a
  call, the worker's batch), ``fetch_min_bytes=196608``, ``fetch_max_wait_ms=10``; every
  output of the batch sent without waiting, then all acknowledgements awaited at once, then
  one commit for the batch (``AckPolicy.ACK`` on a batch subscriber); producer batches of up
  to 1 MiB, idempotent with ``acks=all`` as the worker's.

The scoring is the Quix peer's (``bench.quix_app``): plain Python per message. Refused records
go to the dead-letter topic unchanged, with the worker's reason in a ``dlq.reason`` header.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import orjson
from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from bench.refusals import Refused, decode
from bench.spec import FirstConsumed, Spec

WORKER_VERSION = "faststream-bench"
TUNED_BATCH = 2_000  # the worker's processing.batch_records under at-least-once


def make_scorer(policy: dict[str, Any]) -> Any:
    temperature = float(policy["temperature"])
    min_margin = float(policy["min_margin"])
    min_top1 = policy.get("min_top1")
    topic_labels = policy.get("labels")
    policy_out = {"min_margin": min_margin, "min_top1": min_top1}

    def score(record: ConsumerRecord) -> tuple[str, bytes]:
        """(routed | escalated, output value); Refused for a dead letter."""
        doc = decode(record.value)
        event_labels = doc.get("labels")
        if event_labels is None and topic_labels and len(topic_labels) != len(doc["logits"]):
            raise Refused("topic_labels_mismatch")
        xs = [-math.inf if x is None else float(x) for x in doc["logits"]]
        top = max(xs)
        if top == -math.inf:
            raise Refused("no_finite_logit")
        z = [(x - top) / temperature for x in xs]
        e = [math.exp(v) for v in z]
        total = math.fsum(e)
        p = [v / total for v in e]
        entropy = (
            math.log(total)
            + math.fsum(ei * -zi for ei, zi in zip(e, z, strict=True) if ei > 0.0) / total
        )
        top1 = max(p)
        best = p.index(top1)  # the first maximum: the lowest index on a tie
        others = p.copy()
        others[best] = -math.inf
        top2 = max(others)
        margin = top1 - top2
        reason = None
        if margin < min_margin:
            reason = "low_margin"
        elif min_top1 is not None and top1 < min_top1:
            reason = "low_top1"
        labels = event_labels or topic_labels
        doc.update(
            decision="routed" if reason is None else "escalated",
            label=labels[best] if labels else str(best),
            class_index=best,
            probabilities=p,
            top1=top1,
            top2=top2,
            margin=margin,
            entropy=entropy,
            temperature=temperature,
            policy=policy_out,
            reason=reason,
            source={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": record.timestamp,
            },
            config_version="",
            worker_version=WORKER_VERSION,
        )
        return doc["decision"], orjson.dumps(doc)

    return score


def _headers(record: ConsumerRecord, reason: str | None = None) -> dict[str, str]:
    """FastStream takes headers as text: the input's, and the reason for a dead letter."""
    out = {k: v.decode(errors="replace") for k, v in record.headers or ()}
    if reason is not None:
        out["dlq.reason"] = reason
    return out


def build(spec: Spec, first: FirstConsumed, tuned: bool) -> KafkaBroker:
    outputs = spec["outputs"]
    scorers = {topic: make_scorer(policy) for topic, policy in spec["inputs"].items()}
    producer: dict[str, Any] = (
        {"max_batch_size": 1_048_576, "enable_idempotence": True, "acks": "all"} if tuned else {}
    )
    # FastStream logs every message it handles at INFO; the worker logs none: these go at
    # DEBUG, under its logger's INFO, so only its warnings and errors are written.
    broker = KafkaBroker(
        spec["bootstrap"], client_id="bench-faststream", log_level=logging.DEBUG, **producer
    )

    def destination(record: ConsumerRecord) -> tuple[str, bytes, dict[str, str]]:
        try:
            decision, value = scorers[record.topic](record)
        except Refused as exc:
            return outputs["dead_letter"], record.value or b"", _headers(record, exc.args[0])
        return outputs[decision], value, _headers(record)

    topics = sorted(spec["inputs"])
    common: dict[str, Any] = {
        "group_id": spec["group"],
        "auto_offset_reset": "earliest",
        "ack_policy": AckPolicy.ACK,
    }

    async def one(msg: KafkaMessage) -> None:
        if not first.done:
            first()
        record: ConsumerRecord = msg.raw_message
        topic, value, headers = destination(record)
        await broker.publish(value, topic, key=record.key, headers=headers)

    async def many(msg: KafkaMessage) -> None:
        if not first.done:
            first()
        records: tuple[ConsumerRecord, ...] = msg.raw_message
        sent = []
        for record in records:
            topic, value, headers = destination(record)
            sent.append(
                await broker.publish(value, topic, key=record.key, headers=headers, no_confirm=True)
            )
        await asyncio.gather(*sent)  # every output acknowledged before the batch is committed

    # As @broker.subscriber(...) would decorate them.
    if tuned:
        broker.subscriber(
            *topics, batch=True, max_records=TUNED_BATCH, fetch_min_bytes=196_608,
            fetch_max_wait_ms=10, **common,
        )(many)  # fmt: skip
    else:
        broker.subscriber(*topics, **common)(one)
    return broker


async def serve(spec: Spec, first: FirstConsumed, stop: asyncio.Event) -> int:
    broker = build(spec, first, tuned=bool(spec["peer"].get("tuned")))
    await broker.start()
    try:
        await stop.wait()
    finally:
        await broker.stop()
    return 0
