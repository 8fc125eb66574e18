"""At-least-once: one idempotent producer; a batch is committed after all its outputs are
acknowledged. A crash before the commit redelivers the batch, so an output may be written twice,
never lost.

Batches overlap: while batch N is acknowledged and committed (round trips to the broker, the
CPU idle), batch N+1 is routed and sent; one producer keeps each partition's order. Commits are
chained: N+1's offsets are committed only after N's, and not at all if N failed, so commits
never go backwards or past a failed batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from worker.core.records import Outbound
from worker.stream.connections import FatalError, acknowledged, make_producer, start_within
from worker.stream.guarantee import Batches, Guarantee, Settling
from worker.stream.publish import Publisher

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 2  # batches sent and not yet committed


class AtLeastOnce(Guarantee):
    publisher: Publisher  # started by ``open``

    async def open(self, consumer: AIOKafkaConsumer, stack: AsyncExitStack, stop: Any) -> None:
        await super().open(consumer, stack, stop)
        kafka = self.settings.kafka
        producer = make_producer(kafka)
        await start_within(producer, kafka, "producer", stop)
        stack.push_async_callback(producer.stop)
        self.publisher = Publisher(producer, kafka.max_request_size)

    async def _stage(self, batches: Batches, outputs: list[Outbound]) -> Settling:
        await self.settled(keep=MAX_IN_FLIGHT - 1)
        previous = self._in_flight[-1].task if self._in_flight else None
        sent = time.perf_counter()
        futures = await self._send(outputs)
        return self._settle_published(futures, batches, outputs, sent, previous)

    async def _send(self, outputs: Sequence[Outbound]) -> list[Any]:
        try:
            return await self.publisher.send(outputs)
        except KafkaError as exc:
            raise _publishing_failed(exc) from None

    async def _settle_published(
        self,
        futures: list[Any],
        batches: Batches,
        outputs: list[Outbound],
        sent: float,
        previous: Any,
    ) -> tuple[list[Outbound], set[TopicPartition]]:
        """Every output acknowledged, the previous batch committed, then one commit of this
        batch's offsets. Should the previous batch fail, this one is not committed either: its
        offsets would cover the failed one's."""
        try:
            await acknowledged(futures)
        except KafkaError as exc:
            raise _publishing_failed(exc) from None
        self.metrics.produce_seconds.observe(time.perf_counter() - sent)
        if previous is not None:
            await previous  # its failure is this batch's too (the loop reports it once)
        await self._commit(batches)
        return outputs, set()

    async def _commit(self, batches: Batches) -> None:
        offsets = {tp: OffsetAndMetadata(rs[-1].offset + 1, "") for tp, rs in batches.items()}
        if not offsets:
            return
        started = time.perf_counter()
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The outputs are published; the next owner reprocesses this batch.
            self.metrics.commit_failures.inc()
            log.warning("commit failed, batch will be redelivered: %s", exc)
            return
        self.metrics.commit_seconds.observe(time.perf_counter() - started)


def _publishing_failed(exc: KafkaError) -> FatalError:
    return FatalError(f"publishing failed, offsets not committed: {type(exc).__name__}: {exc}")
