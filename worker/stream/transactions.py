"""Exactly-once publishing: the outputs of a batch and its input offsets in one transaction.

aiokafka's ``send_offsets_to_transaction`` carries only the group id, not the member's
generation (no KIP-447), so a worker paused past its session timeout could commit offsets for
partitions the group has already given to someone else. The pre-KIP-447 remedy is used: one
transactional producer per input partition, its id derived from group, topic and partition
(``transactional_id``). Whoever owns a partition calls ``init_transactions`` for that id
first, which aborts the previous owner's open transaction and fences its producer: a zombie's late
writes and offsets are refused by the broker.

After the producers of newly assigned partitions are initialised (the zombie is fenced), the
committed offsets are read again and the consumer is positioned there, so a transaction the
zombie committed just before it was fenced is not processed twice.

Readers of the output topics must use ``isolation_level=read_committed``: aborted writes stay
in the log, marked as aborted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.structs import OffsetAndMetadata

from worker.core.records import Outbound
from worker.core.settings import Settings
from worker.stream.connections import (
    FatalError,
    acknowledged,
    make_producer,
    start_within,
    stop_within,
)
from worker.stream.limits import TopicLimit, is_record_refusal
from worker.stream.publish import Publisher

log = logging.getLogger(__name__)


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    """``<group>:<topic>:<partition>``. A topic name cannot hold ``:`` (Kafka allows only
    ``[a-zA-Z0-9._-]``), so read from the right the id names one group, topic and partition:
    two deployments never share one."""
    return f"{group_id}:{tp.topic}:{tp.partition}"


class Outcome:
    COMMITTED = "committed"
    ABORTED = "aborted"  # transient failure: the batch is fetched again from its first offset
    FENCED = "fenced"  # another worker owns the partition now
    REFUSED = "refused"  # aborted: the broker refused a record for what it is
    SKIPPED = "skipped"  # not tried: the partition's transaction before it did not commit


class PartitionProducers:
    """One transactional producer per assigned input partition."""

    def __init__(self, settings: Settings, limits: Mapping[str, TopicLimit]) -> None:
        self.settings = settings
        self.limits = limits
        self.group_id = settings.kafka.group_id
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}

    async def assign(
        self, consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Start (and so fence any previous owner of) a producer per partition, then seek each
        partition to its committed offset as it stands after the fencing; return those."""
        new = [tp for tp in tps if tp not in self._producers]
        await asyncio.gather(*(self._start(tp) for tp in new))
        starts: dict[TopicPartition, int] = {}
        for tp in new:
            committed = await consumer.committed(tp)
            if committed is not None:
                consumer.seek(tp, committed)
            elif self.settings.kafka.auto_offset_reset == "earliest":
                await consumer.seek_to_beginning(tp)
            else:
                await consumer.seek_to_end(tp)
            starts[tp] = await consumer.position(tp)
        return starts

    async def _start(self, tp: TopicPartition) -> None:
        kafka = self.settings.kafka
        producer = make_producer(
            kafka,
            transactional_id=transactional_id(self.group_id, tp),
            transaction_timeout_ms=self.settings.processing.transaction_timeout_ms,
        )
        await start_within(producer, kafka, f"transactional producer for {tp}")
        self._producers[tp] = producer

    async def revoke(self, tps: Iterable[TopicPartition]) -> None:
        await asyncio.gather(*(self._stop(tp) for tp in tps))

    async def close(self) -> None:
        await self.revoke(list(self._producers))

    async def _stop(self, tp: TopicPartition) -> None:
        producer = self._producers.pop(tp, None)
        if producer is not None:
            await stop_within(producer, f"producer for {tp.topic}[{tp.partition}]")

    async def commit_batch(
        self, tp: TopicPartition, outputs: Sequence[Outbound], next_offset: int
    ) -> str:
        """Publish ``outputs`` and commit ``next_offset`` for ``tp`` atomically."""
        producer = self._producers.get(tp)
        if producer is None:
            return Outcome.FENCED
        timeout = self.settings.processing.transaction_timeout_ms / 1000
        # Not asyncio.wait_for: on timeout it waits for the cancelled transaction to unwind,
        # and aiokafka's abort can wait forever for a coordinator that is gone.
        task = asyncio.ensure_future(self._transaction(producer, tp, outputs, next_offset))
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            raise FatalError(
                f"the transaction for {tp.topic}[{tp.partition}] did not finish within "
                f"{timeout:g}s; exiting so that a restart resumes from the committed offsets"
            )
        try:
            task.result()
        except (ProducerFenced, TransactionalIdAuthorizationFailed, IllegalOperation) as exc:
            # IllegalOperation: the producer was fenced in the background (its transaction
            # state is fatal), so it refuses to send at all.
            log.warning("%s[%d] fenced, another worker owns it: %s", tp.topic, tp.partition, exc)
            await self._stop(tp)
            return Outcome.FENCED
        except KafkaError as exc:
            if is_record_refusal(exc):
                log.warning(
                    "transaction for %s[%d] aborted, a record was refused: %s: %s",
                    tp.topic,
                    tp.partition,
                    type(exc).__name__,
                    exc,
                )
                return Outcome.REFUSED
            # The transaction was aborted (by the context manager); the same producer goes on.
            # It is never re-initialised here: only an assignment from the group may do that,
            # or a zombie that had not yet noticed its eviction would fence the rightful owner.
            log.warning(
                "transaction for %s[%d] aborted, will retry: %s: %s",
                tp.topic,
                tp.partition,
                type(exc).__name__,
                exc,
            )
            return Outcome.ABORTED
        return Outcome.COMMITTED

    async def _transaction(
        self,
        producer: AIOKafkaProducer,
        tp: TopicPartition,
        outputs: Sequence[Outbound],
        next_offset: int,
    ) -> None:
        async with producer.transaction():
            kafka = self.settings.kafka
            publisher = Publisher(
                producer,
                kafka.max_batch_size,
                self.limits,
                transactional=True,
                compression=kafka.compression_type,
            )
            await acknowledged([sent.future for sent in await publisher.send(outputs)])
            offsets = {tp: OffsetAndMetadata(next_offset, "")}
            await producer.send_offsets_to_transaction(offsets, self.group_id)
