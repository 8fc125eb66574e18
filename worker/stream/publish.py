"""Hand a batch of outputs to the producer as record batches, one per output partition.

``AIOKafkaProducer.send`` pays for a coroutine, a metadata check and a delivery future per
record; appending to a ``BatchBuilder`` and handing it over with ``send_batch`` pays for them
once per batch (the cost of each: ``docs/performance.md``). The records, their partitions and
their order are the ones ``send`` would give:

* the partition comes from the producer's default partitioner (murmur2 of the key, as the Java
  client; a random partition for a record without a key), with the key hashed by the compiled
  module (``worker.core.native``) when it is installed: aiokafka's murmur2 is pure Python;
* records of one partition go into its batches in the order of ``outputs``, and batches of a
  partition are queued in order (the accumulator keeps one undrained batch per partition);
* the producer's idempotence, ``acks`` and transactions apply to these batches as to any.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from worker.core import native
from worker.core.records import Outbound
from worker.stream.limits import TopicLimit, record_size


class Sent(NamedTuple):
    """One record batch handed to the producer: its delivery future and its outputs."""

    future: asyncio.Future[Any]
    outputs: list[Outbound]


class Publisher:
    def __init__(
        self, producer: AIOKafkaProducer, batch_size: int, limits: Mapping[str, TopicLimit]
    ) -> None:
        self.producer = producer
        self.batch_size = batch_size
        self.limits = limits  # the topics' limits, kept current by the worker (``Fitter``)
        self._partitioner = DefaultPartitioner()  # what AIOKafkaProducer uses by default

    async def send(self, outputs: Sequence[Outbound]) -> list[Sent]:
        """Queue every output; return the record batches handed over.

        Await their futures (``worker.stream.connections.acknowledged``) before committing the
        inputs. Every output must fit its topic (``worker.stream.limits``); a record batch is
        closed before it grows past what its topic takes.
        """
        producer = self.producer
        partition_index = native.partition_index
        partitions: dict[str, list[int]] = {}
        caps: dict[str, int | None] = {}
        open_batches: dict[tuple[str, int], tuple[Any, list[Outbound]]] = {}
        sent: list[Sent] = []
        for o in outputs:
            topic = o.topic
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = sorted(await producer.partitions_for(topic))
                limit = self.limits.get(topic)
                small = limit is not None and limit.max_bytes < self.batch_size
                caps[topic] = limit.max_bytes if small and limit is not None else None
            key = o.key
            if key is not None and partition_index is not None:
                partition = known[partition_index(key, len(known))]
            else:
                partition = self._partitioner(key, known, known)
            slot = (topic, partition)
            held = open_batches.get(slot)
            if held is None:
                held = open_batches[slot] = (producer.create_batch(), [])
            cap = caps[topic]
            if cap is not None and held[1] and held[0].size() + record_size(o) > cap:
                sent.append(await self._hand_over(held, topic, partition))
                held = open_batches[slot] = (producer.create_batch(), [])
            if held[0].append(timestamp=None, key=o.key, value=o.value, headers=o.headers) is None:
                # full: hand it over and start the next one
                sent.append(await self._hand_over(held, topic, partition))
                held = open_batches[slot] = (producer.create_batch(), [])
                held[0].append(timestamp=None, key=o.key, value=o.value, headers=o.headers)
            held[1].append(o)
        for (topic, partition), held in open_batches.items():
            sent.append(await self._hand_over(held, topic, partition))
        return sent

    async def _hand_over(
        self, held: tuple[Any, list[Outbound]], topic: str, partition: int
    ) -> Sent:
        batch, outs = held
        return Sent(await self.producer.send_batch(batch, topic, partition=partition), outs)
