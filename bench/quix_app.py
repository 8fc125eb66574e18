"""The same job written as a typical Quix Streams 3.x application, for comparison.

One ``StreamingDataFrame`` per input topic: read the value as bytes, decode it with orjson,
check it as the worker does (``bench.refusals``), score it one message at a time in plain
Python (``math.exp`` over a list is faster than numpy for vectors of 3 to 100 classes, one at
a time), and produce it to the routed, escalated or dead-letter topic chosen per message.
Dead-letter records keep the value byte for byte and get the reason in a header. Quix's
defaults are kept (at-least-once, its producer and consumer settings, its commit interval
unless the bench is told otherwise).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from quixstreams import Application, message_context
from quixstreams.models.serializers import SerializationContext, Serializer

from bench.refusals import Refused, decode
from bench.spec import FirstConsumed, Spec

WORKER_VERSION = "quix-bench"


class Dead(NamedTuple):
    raw: bytes
    reason: str


class DeadSerializer(Serializer):
    """The dead-letter topic carries the input value unchanged."""

    def __call__(self, value: Any, ctx: SerializationContext) -> bytes:
        raw: bytes = value.raw
        return raw


def make_scorer(policy: dict[str, Any], first: FirstConsumed) -> Any:
    temperature = float(policy["temperature"])
    min_margin = float(policy["min_margin"])
    min_top1 = policy.get("min_top1")
    topic_labels = policy.get("labels")
    policy_out = {"min_margin": min_margin, "min_top1": min_top1}

    def score(value: bytes, key: Any, timestamp: int, headers: Any) -> dict[str, Any] | Dead:
        if not first.done:
            first()
        try:
            doc = decode(value)
        except Refused as exc:
            return Dead(value, exc.args[0])
        if doc.get("labels") is None and topic_labels and len(topic_labels) != len(doc["logits"]):
            return Dead(value, "topic_labels_mismatch")
        xs = [-math.inf if x is None else float(x) for x in doc["logits"]]
        top = max(xs)
        if top == -math.inf:
            return Dead(value, "no_finite_logit")
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
        others[best] = -1.0
        top2 = max(others)
        margin = top1 - top2
        reason = None
        if margin < min_margin:
            reason = "low_margin"
        elif min_top1 is not None and top1 < min_top1:
            reason = "low_top1"
        labels = doc.get("labels") or topic_labels
        ctx = message_context()
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
                "topic": ctx.topic,
                "partition": ctx.partition,
                "offset": ctx.offset,
                "timestamp": timestamp,
            },
            worker_version=WORKER_VERSION,
        )
        return doc

    return score


def run_quix(spec: Spec, first: FirstConsumed) -> int:
    app = Application(
        broker_address=spec["bootstrap"],
        consumer_group=spec["group"],
        auto_offset_reset="earliest",
        commit_interval=spec["quix_commit_interval"],
        loglevel="WARNING",
        use_changelog_topics=False,
    )
    outputs = spec["outputs"]
    routed = app.topic(outputs["routed"], value_serializer="json")
    escalated = app.topic(outputs["escalated"], value_serializer="json")
    dead = app.topic(outputs["dead_letter"], value_serializer=DeadSerializer())

    def choose(value: Any, key: Any, timestamp: int, headers: Any) -> Any:
        if isinstance(value, Dead):
            return dead
        return routed if value["decision"] == "routed" else escalated

    def with_reason(value: Any, key: Any, timestamp: int, headers: Any) -> Any:
        if isinstance(value, Dead):
            return [*(headers or ()), ("dlq.reason", value.reason.encode())]
        return headers

    for name, policy in sorted(spec["inputs"].items()):
        sdf = app.dataframe(app.topic(name, value_deserializer="bytes"))
        sdf = sdf.apply(make_scorer(policy, first), metadata=True)
        sdf = sdf.set_headers(with_reason)
        sdf.to_topic(choose)
    app.run()
    return 0
