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

With the compiled module installed and no compression, the record batches are its
``RecordBatch``: filled with a partition's outputs in one call and finished (header, CRC) in
another, the bytes aiokafka's builder writes for the same records, one timestamp per call of
``send``. With compression, or without the module, they are aiokafka's ``BatchBuilder``,
filled a record at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from worker.core import native
from worker.core.records import Outbound
from worker.stream.limits import TopicLimit, record_size

_TOPIC = attrgetter("topic")


class Sent(NamedTuple):
    """One record batch handed to the producer: its delivery future and its outputs."""

    future: asyncio.Future[Any]
    outputs: list[Outbound]


class Publisher:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        batch_size: int,
        limits: Mapping[str, TopicLimit],
        *,
        transactional: bool = False,
        compression: str | None = None,
    ) -> None:
        """``transactional`` and ``compression`` must be the producer's own: the compiled
        record batches carry the one and cannot carry the other."""
        self.producer = producer
        self.batch_size = batch_size
        self.limits = limits  # the topics' limits, kept current by the worker (``Fitter``)
        self.transactional = transactional
        self._record_batch = native.RecordBatch if compression is None else None
        self._partitioner = DefaultPartitioner()  # what AIOKafkaProducer uses by default

    async def send(self, outputs: Sequence[Outbound]) -> list[Sent]:
        """Queue every output; return the record batches handed over.

        Await their futures (``worker.stream.connections.acknowledged``) before committing the
        inputs. Every output must fit its topic (``worker.stream.limits``); a record batch is
        closed before it grows past what its topic takes.
        """
        record_batch = self._record_batch
        if record_batch is None:
            return await self._send_appended(outputs)
        slots = await self._by_partition(outputs)
        stamp = int(time.time() * 1000)
        sent: list[Sent] = []
        for (topic, partition), outs in slots.items():
            cap = self._cap(topic)
            start = 0
            while start < len(outs):
                batch = record_batch(cap, stamp, is_transactional=self.transactional)
                end = batch.extend(outs, start)
                future = await self.producer.send_batch(batch, topic, partition=partition)
                sent.append(Sent(future, outs[start:end]))
                start = end
        return sent

    def _cap(self, topic: str) -> int:
        """The most bytes a record batch for ``topic`` may hold: the producer's batch size, or
        the topic's limit when that is smaller."""
        limit = self.limits.get(topic)
        return self.batch_size if limit is None else min(self.batch_size, limit.max_bytes)

    async def _by_partition(
        self, outputs: Sequence[Outbound]
    ) -> dict[tuple[str, int], list[Outbound]]:
        """The outputs by (topic, partition), each partition's in the order given."""
        partitions: dict[str, list[int]] = {}
        slot_outputs = native.partition_slots
        if slot_outputs is not None:
            for topic in set(map(_TOPIC, outputs)):
                partitions[topic] = sorted(await self.producer.partitions_for(topic))
            slotted = slot_outputs(list(outputs), partitions)
            if slotted is not None:
                return slotted
        partition_index = native.partition_index
        slots: dict[tuple[str, int], list[Outbound]] = {}
        for o in outputs:
            topic = o.topic
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = sorted(await self.producer.partitions_for(topic))
            key = o.key
            if key is not None and partition_index is not None:
                partition = known[partition_index(key, len(known))]
            else:
                partition = self._partitioner(key, known, known)
            held = slots.get((topic, partition))
            if held is None:
                slots[topic, partition] = [o]
            else:
                held.append(o)
        return slots

    async def _send_appended(self, outputs: Sequence[Outbound]) -> list[Sent]:
        """``send`` with aiokafka's own record batches, filled a record at a time."""
        producer = self.producer
        sent: list[Sent] = []
        for (topic, partition), outs in (await self._by_partition(outputs)).items():
            limit = self.limits.get(topic)
            cap = (
                limit.max_bytes if limit is not None and limit.max_bytes < self.batch_size else None
            )
            held: tuple[Any, list[Outbound]] = (producer.create_batch(), [])
            for o in outs:
                if cap is not None and held[1] and held[0].size() + record_size(o) > cap:
                    sent.append(await self._hand_over(held, topic, partition))
                    held = (producer.create_batch(), [])
                if (
                    held[0].append(timestamp=None, key=o.key, value=o.value, headers=o.headers)
                    is None
                ):
                    # full: hand it over and start the next one
                    sent.append(await self._hand_over(held, topic, partition))
                    held = (producer.create_batch(), [])
                    held[0].append(timestamp=None, key=o.key, value=o.value, headers=o.headers)
                held[1].append(o)
            sent.append(await self._hand_over(held, topic, partition))
        return sent

    async def _hand_over(
        self, held: tuple[Any, list[Outbound]], topic: str, partition: int
    ) -> Sent:
        batch, outs = held
        return Sent(await self.producer.send_batch(batch, topic, partition=partition), outs)
