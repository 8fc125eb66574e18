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
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from worker.core import native
from worker.core.records import Outbound


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, max_request_size: int) -> None:
        self.producer = producer
        self.max_request_size = max_request_size
        self._partitioner = DefaultPartitioner()  # what AIOKafkaProducer uses by default

    async def send(self, outputs: Sequence[Outbound]) -> list[asyncio.Future[Any]]:
        """Queue every output; return one delivery future per record batch.

        Await them (``worker.stream.connections.acknowledged``) before committing the inputs.
        """
        producer = self.producer
        partition_index = native.partition_index
        partitions: dict[str, list[int]] = {}
        open_batches: dict[tuple[str, int], Any] = {}
        futures: list[asyncio.Future[Any]] = []
        for o in outputs:
            topic = o.topic
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = sorted(await producer.partitions_for(topic))
            key = o.key
            if key is not None and partition_index is not None:
                partition = known[partition_index(key, len(known))]
            else:
                partition = self._partitioner(key, known, known)
            slot = (topic, partition)
            batch = open_batches.get(slot)
            if batch is None:
                batch = open_batches[slot] = producer.create_batch()
            meta = batch.append(timestamp=None, key=o.key, value=o.value, headers=o.headers)
            if meta is None:  # full: hand it over and start the next one
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = open_batches[slot] = producer.create_batch()
                meta = batch.append(timestamp=None, key=o.key, value=o.value, headers=o.headers)
            if meta.size > self.max_request_size:
                raise MessageSizeTooLargeError(
                    f"an output to {topic} is {meta.size} bytes, larger than "
                    f"max_request_size ({self.max_request_size})"
                )
        for (topic, partition), batch in open_batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures
