"""Topic housekeeping shared by ``demo``, ``replay``, tests and benchmarks: create topics,
read a topic to its end, and wait for a group to commit up to the end of its inputs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from worker.core.kafka_settings import KafkaSettings
from worker.stream.connections import make_admin, make_consumer, stop_consumer

CREATE_TIMEOUT_S = 30.0


async def create_topics(
    kafka: KafkaSettings,
    names: Iterable[str],
    partitions: int = 3,
    configs: Mapping[str, str] | None = None,
) -> None:
    """Create the topics unless they exist, and return once the brokers' metadata shows them."""
    names = list(names)
    admin = make_admin(kafka)
    await admin.start()
    try:
        new = [NewTopic(n, partitions, 1, topic_configs=dict(configs or {})) for n in names]
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass
        # The controller answers before every broker's metadata has the topics, and a worker
        # started at once would find them missing.
        deadline = time.monotonic() + CREATE_TIMEOUT_S
        while not all(t["error_code"] == 0 for t in await admin.describe_topics(names)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {names} not in the metadata after creating them")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


@asynccontextmanager
async def standalone_consumer(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group, for reading by hand.

    aiokafka's group-less coordinator starts a background task in ``start`` and awaits it,
    cancelled, in ``stop``; if the task never got to run, ``stop`` raises CancelledError into
    the caller. One turn of the loop before stopping lets the task start.
    """
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        yield consumer
    finally:
        await asyncio.sleep(0)
        await stop_consumer(consumer)


async def partitions(kafka: KafkaSettings, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of the given topics (none for a topic that does not exist)."""
    client = make_admin(kafka)
    await client.start()
    try:
        described = await client.describe_topics(list(topics))
    finally:
        await client.close()
    return [
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t["error_code"] == 0
        for p in sorted(t["partitions"], key=lambda p: p["partition"])
    ]


async def end_offsets(kafka: KafkaSettings, topics: Iterable[str]) -> dict[TopicPartition, int]:
    tps = await partitions(kafka, topics)
    async with standalone_consumer(kafka) as consumer:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends


async def read_topic(kafka: KafkaSettings, topic: str, timeout_s: float = 60.0) -> list[Any]:
    """Every record of ``topic`` from the beginning to its end offsets at the time of the call."""
    tps = await partitions(kafka, [topic])
    if not tps:
        return []
    async with standalone_consumer(kafka) as consumer:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took longer than {timeout_s:g}s")
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp in sorted(batch):
                out.extend(batch[tp])
        return out


async def wait_for_commits(
    kafka: KafkaSettings, group_id: str, targets: Mapping[TopicPartition, int], timeout_s: float
) -> dict[TopicPartition, int]:
    """Poll the group's committed offsets until they reach ``targets``; return the last seen."""
    consumer = make_consumer(kafka, group_id=group_id)
    await consumer.start()  # not subscribed: reads committed offsets without joining
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            seen = {tp: (await consumer.committed(tp)) or 0 for tp in targets}
            if all(seen[tp] >= end for tp, end in targets.items()):
                return seen
            if time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.2)
    finally:
        await stop_consumer(consumer)
