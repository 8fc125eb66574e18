"""``worker.stream.publish.Publisher`` on a real broker: the records land where
``producer.send`` would put them, in the same order, byte for byte, however many record
batches they take."""

from __future__ import annotations

import random
from typing import Any

import pytest

from worker.core.kafka_settings import KafkaSettings
from worker.core.records import Outbound
from worker.stream import admin
from worker.stream.connections import acknowledged, make_producer
from worker.stream.limits import TopicLimit
from worker.stream.publish import Publisher

pytestmark = pytest.mark.integration


def outputs(topic: str, n: int) -> list[Outbound]:
    rng = random.Random(5)
    out = []
    for i in range(n):
        key = f"user-{rng.randrange(300)}".encode()
        value = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 900)))
        headers = [("trace", str(i).encode()), ("empty", b"")][: rng.randrange(3)]
        out.append(Outbound(topic, key, value, headers, "routed", None, "in", 0, i, 0, None))
    return out


def placed(records: list[Any]) -> dict[int, list[tuple[Any, ...]]]:
    """Per partition, the records in log order: key, value and headers."""
    by_partition: dict[int, list[tuple[Any, ...]]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition.setdefault(r.partition, []).append((r.key, r.value, list(r.headers)))
    return by_partition


# Uncompressed, the compiled module's record batches (when installed); compressed, aiokafka's.
@pytest.mark.parametrize("compression", [None, "gzip"])
async def test_batches_land_where_and_in_the_order_send_puts_them(
    bootstrap: str, uid: str, compression: str | None
) -> None:
    # Small batches, so one partition's records of one call span many record batches.
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap, max_batch_size=2048, compression_type=compression
    )
    ours, reference = f"publish-{uid}", f"send-{uid}"
    await admin.create_topics(kafka, [ours, reference], partitions=5)
    producer = make_producer(kafka)
    await producer.start()
    try:
        sent = outputs(ours, 3000)
        publisher = Publisher(producer, kafka.max_batch_size, {}, compression=compression)
        handed = await publisher.send(sent)
        assert len(handed) > 5 * 2  # several batches per partition
        assert sorted(id(o) for h in handed for o in h.outputs) == sorted(map(id, sent))
        await acknowledged([h.future for h in handed])
        await acknowledged(
            [
                await producer.send(reference, o.value, key=o.key, headers=o.headers)
                for o in outputs(reference, 3000)
            ]
        )
    finally:
        await producer.stop()
    got, want = await admin.read_topic(kafka, ours), await admin.read_topic(kafka, reference)
    assert len(got) == 3000
    assert placed(got) == placed(want)
    assert len(placed(got)) == 5


async def test_record_batches_close_before_they_pass_a_small_topics_limit(
    bootstrap: str, uid: str
) -> None:
    """A topic that takes smaller records than the producer's batch size gets record batches
    it takes: were they filled to the batch size, the broker would refuse them."""
    kafka = KafkaSettings(bootstrap_servers=bootstrap, max_batch_size=16384)
    topic = f"publish-small-{uid}"
    await admin.create_topics(kafka, [topic], partitions=1, configs={"max.message.bytes": "3000"})
    limits = {topic: TopicLimit(max_bytes=3000, compacted=False)}
    producer = make_producer(kafka)
    await producer.start()
    try:
        sent = [
            Outbound(topic, b"k", b"x" * 900, [], "routed", None, "in", 0, i, 0, None)
            for i in range(20)
        ]
        handed = await Publisher(producer, kafka.max_batch_size, limits).send(sent)
        await acknowledged([h.future for h in handed])  # the broker took every batch
    finally:
        await producer.stop()
    assert all(1 <= len(h.outputs) <= 3 for h in handed)
    assert len(await admin.read_topic(kafka, topic)) == 20
