"""Hostile input on a real broker: every malformed record of the corpus, mixed into a valid
stream on several partitions of both input topics, lands in the dead-letter topic exactly once
with its reason and its key, value and headers byte for byte; the worker keeps going, commits to
the end, and scores the valid records around them as ``worker.core.routing.route`` says."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from tests.integration.helpers import (
    BIG,
    make_settings,
    read_inputs,
    read_outputs,
    running_worker,
    wait_until_committed,
)
from tests.integration.hostile_corpus import EDGES, HOSTILE, Hostile
from worker.core.records import DLQ_PREFIX
from worker.core.routing import route
from worker.core.settings import Settings
from worker.stream import admin, history

pytestmark = pytest.mark.integration

PARTITIONS = 3
# The test broker writes 1 MiB log segments, and Kafka refuses a record batch larger than the
# topic's segment (RECORD_LIST_TOO_LARGE) whatever max.message.bytes says: the 2 MB record and
# the outputs of events near the 1 MiB limit need larger segments.
TOPIC_CONFIG = {**BIG, "segment.bytes": str(32 * 1024 * 1024)}


def valid_event(n: int, classes: int) -> bytes:
    """A plain valid event; every third one is uncertain, so both decisions occur."""
    logits = [float(c) * 0.37 for c in range(classes)]
    logits[n % classes] += 0.05 if n % 3 == 0 else 4.0
    return orjson.dumps({"id": f"valid-{n}", "logits": logits, "model": "m"})


Planned = tuple[str, int, Hostile | None, bytes | None, bytes | None, list[Any]]


def plan(settings: Settings) -> list[Planned]:
    """(topic, partition, item or None, key, value, headers) in send order: a valid record before
    and after every hostile one, hostile records spread over every partition of both topics."""
    labelled = next(t for t, p in settings.topics.items() if p.labels)
    unlabelled = next(t for t, p in settings.topics.items() if not p.labels)
    out: list[Planned] = []
    n = 0

    def valid(topic: str, partition: int) -> None:
        nonlocal n
        classes = 3 if topic == labelled else 2
        headers = [("trace", f"v{n}".encode())]
        out.append((topic, partition, None, f"k{n}".encode(), valid_event(n, classes), headers))
        n += 1

    for i, item in enumerate((*HOSTILE, *EDGES)):
        # edges have two classes: the labelled topic's three labels would not fit them
        topic = labelled if item.labelled_topic or (i % 2 and item.reason) else unlabelled
        partition = (i // 2) % PARTITIONS
        valid(topic, partition)
        out.append((topic, partition, item, item.record_key(), item.value, item.record_headers()))
        valid(topic, partition)
    return out


async def send(settings: Settings, records: list[Any]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        enable_idempotence=True,
        max_request_size=8_388_608,
        linger_ms=5,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers, partition=partition)
            for topic, partition, _, key, value, headers in records
        ]
        for f in futures:
            await f
    finally:
        await producer.stop()


def expected_scoring(settings: Settings, topic: str, value: bytes) -> tuple[str, str | None, str]:
    """What the core decides for a valid record, computed from its JSON here, not by the worker."""
    doc = orjson.loads(value)
    logits = [-math.inf if x is None else float(x) for x in doc["logits"]]
    r = route(logits, settings.policies()[topic], doc.get("labels"))
    return r.decision, r.reason, r.label


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_hostile_records_are_dead_lettered_and_the_stream_goes_on(
    bootstrap: str, uid: str, guarantee: str
) -> None:
    settings = make_settings(bootstrap, uid, processing={"guarantee": guarantee})
    o = settings.outputs
    names = [*settings.topics, o.routed, o.escalated, o.dead_letter]
    await admin.create_topics(settings.kafka, names, PARTITIONS, TOPIC_CONFIG)
    await history.create_topic(settings.kafka, o.config_history)
    records = plan(settings)
    registry = CollectorRegistry()
    async with running_worker(settings, registry):
        await send(settings, records)
        await wait_until_committed(settings)  # the worker got past every hostile record

    inputs = {(r.topic, r.partition, r.offset): r for r in await read_inputs(settings)}
    assert len(inputs) == len(records)
    by_source = (await read_outputs(settings)).by_source()
    assert set(by_source) == set(inputs), "an output without an input, or the reverse"

    sent = {r[3]: r[2] for r in records}  # every record has a key of its own
    reasons: Counter[tuple[str, str]] = Counter()
    for src, rec in inputs.items():
        outs = by_source[src]
        assert len(outs) == 1, f"{src} has {len(outs)} outputs"
        kind, out = outs[0]
        item = sent[rec.key]
        where = f"{item.name if item else 'valid'} at {src}"
        if item is not None and item.reason:
            assert kind == "dead_letter", where
            headers = list(out.headers)
            original = item.record_headers()
            assert headers[: len(original)] == original, where
            added = dict(headers[len(original) :])
            assert added[DLQ_PREFIX + "reason"] == item.reason.encode(), where
            assert added[DLQ_PREFIX + "source.offset"] == str(rec.offset).encode(), where
            assert (out.key, out.value) == (item.record_key(), item.value), where
            reasons[(rec.topic, item.reason)] += 1
        else:
            decision, reason, label = expected_scoring(settings, rec.topic, rec.value)
            assert kind == decision, where
            doc = orjson.loads(out.value)
            assert (doc["reason"], doc["label"]) == (reason, label), where
            assert doc["id"] == orjson.loads(rec.value)["id"], where
            assert (out.key, list(out.headers)) == (rec.key, list(rec.headers)), where

    # the dead-letter counter saw the same reasons (read from the worker's own registry)
    for (topic, reason), count in reasons.items():
        got = registry.get_sample_value(
            "logit_router_dead_letters_total", {"topic": topic, "reason": reason}
        )
        assert got == count, (topic, reason)
