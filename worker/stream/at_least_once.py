"""At-least-once: one idempotent producer; a batch is committed after all its outputs are
acknowledged. A crash before the commit redelivers the batch, so an output may be written twice,
never lost.

Batches overlap: while batch N is acknowledged and committed (round trips to the broker, the
CPU idle), batch N+1 is routed and sent; one producer keeps each partition's order. Commits are
chained: N+1's offsets are committed only after N's, and not at all if N failed, so commits
never go backwards or past a failed batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError, OutOfOrderSequenceNumber
from aiokafka.structs import OffsetAndMetadata

from worker.core.records import ConsumedRecord, Outbound
from worker.core.settings import Settings
from worker.observability.metrics import Metrics
from worker.stream.connections import FatalError, make_producer, start_within, stop_within
from worker.stream.guarantee import Batches, Guarantee, Settling
from worker.stream.limits import Fitter, OutputRefused, is_record_refusal
from worker.stream.publish import Publisher, Sent

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 2  # batches sent and not yet committed
# An output, its dead letter, a claim check, each maybe after a broken sequence.
SEND_ALONE_TRIES = 6


class AtLeastOnce(Guarantee):
    publisher: Publisher  # started by ``open``

    def __init__(self, settings: Settings, metrics: Metrics, fitter: Fitter) -> None:
        super().__init__(settings, metrics, fitter)
        self._generation = 0  # producers replaced so far
        self._replacing = asyncio.Lock()

    async def open(
        self, consumer: AIOKafkaConsumer, stack: AsyncExitStack, stop: asyncio.Event
    ) -> None:
        await super().open(consumer, stack, stop)
        kafka = self.settings.kafka
        producer = make_producer(kafka)
        await start_within(producer, kafka, "producer", stop)
        self.publisher = Publisher(
            producer, kafka.max_batch_size, self.fitter.limits, compression=kafka.compression_type
        )
        stack.push_async_callback(lambda: self.publisher.producer.stop())  # the current one

    async def _stage(self, batches: Batches, outputs: list[Outbound]) -> Settling:
        await self.settled(keep=MAX_IN_FLIGHT - 1)
        previous = self._in_flight[-1].task if self._in_flight else None
        started = time.perf_counter()
        generation = self._generation
        sent = await self._send(outputs)
        return self._settle_published(sent, generation, batches, outputs, started, previous)

    async def _send(self, outputs: Sequence[Outbound]) -> list[Sent]:
        try:
            return await self.publisher.send(outputs)
        except KafkaError as exc:
            raise _publishing_failed(exc) from None

    async def _settle_published(
        self,
        sent: list[Sent],
        generation: int,
        batches: Batches,
        outputs: list[Outbound],
        started: float,
        previous: Any,
    ) -> tuple[list[Outbound], set[TopicPartition]]:
        """Every output acknowledged, the previous batch committed, then one commit of this
        batch's offsets. Should the previous batch fail, this one is not committed either: its
        offsets would cover the failed one's."""
        results = await asyncio.gather(*(s.future for s in sent), return_exceptions=True)
        failed: list[Outbound] = []
        for s, result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                _check_recoverable(result)
                failed += s.outputs
        if failed:
            outputs = await self._recover(failed, generation, batches, outputs)
        self.metrics.produce_seconds.observe(time.perf_counter() - started)
        if previous is not None:
            await previous  # its failure is this batch's too (the loop reports it once)
        await self._commit(batches)
        return outputs, set()

    async def _recover(
        self, failed: list[Outbound], generation: int, batches: Batches, outputs: list[Outbound]
    ) -> list[Outbound]:
        """The broker refused record batches for what they hold (a topic's limits changed
        since they were read), and so broke the producer's sequence for later ones. With a new
        producer and the limits read again, each output of those batches is sent alone, a
        dead letter or a claim check in place of what the broker refuses. They land after
        outputs sent meanwhile to the same partitions. Return the batch's outputs as written."""
        log.warning("the broker refused outputs: %d sent again, one by one", len(failed))
        await self._replace_producer(generation)
        await self.fitter.refresh()
        by_source = {(r.topic, r.partition, r.offset): r for rs in batches.values() for r in rs}
        written: dict[int, Outbound] = {}
        for o in failed:
            rec = by_source[o.source_topic, o.source_partition, o.source_offset]
            written[id(o)] = await self._send_alone(rec, self.fitter.fit([rec], [o])[0])
        return [written.get(id(o), o) for o in outputs]

    async def _send_alone(self, rec: ConsumedRecord, o: Outbound) -> Outbound:
        """Send ``o`` and wait for it; what the broker refuses is replaced (an output by its
        dead letter, a dead letter by a claim check) and sent in its place."""
        for _ in range(SEND_ALONE_TRIES):
            generation = self._generation
            (sent,) = await self._send([o])
            try:
                await sent.future
            except KafkaError as exc:
                _check_recoverable(exc)
                await self._replace_producer(generation)
                if is_record_refusal(exc):
                    why = f"the broker refused it: {type(exc).__name__}: {exc}"
                    o = self.fitter.replace(rec, o, OutputRefused("output_refused", why))
                continue
            return o
        raise FatalError(f"an output of {rec.topic}[{rec.partition}] could not be written")

    async def _replace_producer(self, generation: int) -> None:
        """A new idempotent producer (so new sequence numbers), unless one has replaced the
        producer of ``generation`` already."""
        async with self._replacing:
            if generation != self._generation:
                return
            kafka = self.settings.kafka
            producer = make_producer(kafka)
            await start_within(producer, kafka, "producer")
            old, self.publisher.producer = self.publisher.producer, producer
            self._generation += 1
        await stop_within(old, "the replaced producer")

    async def _commit(self, batches: Batches) -> None:
        offsets = {tp: OffsetAndMetadata(rs[-1].offset + 1, "") for tp, rs in batches.items()}
        if not offsets:
            return
        started = time.perf_counter()
        # aiokafka retries a commit for as long as the coordinator cannot be found or answers
        # with a retriable error; the worker gives it as long as it gives a broker to answer.
        bound = self.settings.kafka.connect_timeout_s
        try:
            await asyncio.wait_for(self.consumer.commit(offsets), bound)
        except TimeoutError:
            raise FatalError(
                f"an offset commit did not finish within {bound:g}s (kafka.connect_timeout_s); "
                "exiting so that a restart resumes from the committed offsets"
            ) from None
        except (CommitFailedError, KafkaError) as exc:
            # The outputs are published; the next owner reprocesses this batch.
            self.metrics.commit_failures.inc()
            log.warning("commit failed, batch will be redelivered: %s", exc)
            return
        self.metrics.commit_seconds.observe(time.perf_counter() - started)


def _check_recoverable(exc: BaseException) -> None:
    """Raise unless a failed send is one record's: a refusal, or the sequence it broke."""
    if not isinstance(exc, KafkaError):
        raise exc
    if not (is_record_refusal(exc) or isinstance(exc, OutOfOrderSequenceNumber)):
        raise _publishing_failed(exc) from None


def _publishing_failed(exc: KafkaError) -> FatalError:
    return FatalError(f"publishing failed, offsets not committed: {type(exc).__name__}: {exc}")
