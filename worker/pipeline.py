"""The worker loop: consume raw records, route them, publish, then commit.

Order of work for each batch, and why:

1. ``getmany`` (bounded by ``max_batch_records``) returns records of several partitions.
2. ``Router.process`` gives exactly one output per input: routed, escalated or dead-letter.
3. The outputs go to the idempotent producer as record batches, one per output partition, in
   input order (``worker.publish``); then all acknowledgements are awaited together: no
   per-message wait.
4. Only then are the input offsets committed, one commit per batch. A crash anywhere before
   the commit redelivers the batch; nothing is ever committed ahead of its outputs.

With ``processing.guarantee = "exactly_once"``, steps 3 and 4 become one Kafka transaction
per input partition (see ``worker.transactions``): outputs and offsets commit together or not
at all; an aborted batch is fetched again from its first offset.

A rebalance waits for the batch in hand (``_batch_lock``) before partitions are given up, so
finished work is committed by the owner that did it. On stop, fetching stops, the batch in hand
is finished within ``processing.drain_timeout_s``, and the clients are closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from worker.connections import (
    FatalError,
    StopRequested,
    acknowledged,
    make_consumer,
    make_producer,
    start_within,
)
from worker.metrics import Metrics
from worker.publish import Publisher
from worker.records import ConsumedRecord, Outbound, Router
from worker.settings import Settings
from worker.transactions import Outcome, PartitionProducers

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 200  # how long one getmany may wait: also how fast a stop is noticed


class DrainTimeout(Exception):
    """The batch in hand did not finish within the drain bound; its offsets stay uncommitted."""


class Worker:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.router = Router(settings)
        self.inputs = sorted(settings.topics)
        self._batch_lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self.started = False
        self.assignment: frozenset[TopicPartition] = frozenset()
        self.processed = 0
        self.txn: PartitionProducers | None = None
        if settings.processing.guarantee == "exactly_once":
            self.txn = PartitionProducers(settings)
        self._failing_since: float | None = None
        # Exactly-once: the next offset to process per partition, as committed. A record below
        # it was fetched before the last assignment re-positioned the partition and is already
        # in a committed transaction, ours or a previous owner's: it is skipped.
        self._next: dict[TopicPartition, int] = {}

    @property
    def ready(self) -> bool:
        """Connected, in the group, and owning at least one partition."""
        return self.started and bool(self.assignment)

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set; raise ``FatalError`` or ``DrainTimeout`` on failure."""
        try:
            await self._run(stop)
        except StopRequested:
            log.info("stopped while connecting")

    async def _run(self, stop: asyncio.Event) -> None:
        kafka = self.settings.kafka
        async with AsyncExitStack() as stack:
            publisher = None
            if self.txn is None:
                producer = make_producer(kafka)
                await start_within(producer, kafka, "producer", stop)
                stack.push_async_callback(producer.stop)
                publisher = Publisher(producer, kafka.max_request_size)
            else:
                stack.push_async_callback(self.txn.close)
            consumer = make_consumer(kafka, group_id=kafka.group_id)
            await start_within(consumer, kafka, "consumer", stop)
            stack.push_async_callback(self._close_consumer, consumer)
            await self._check_topics(consumer)
            self._consumer = consumer
            consumer.subscribe(self.inputs, listener=_Listener(self))
            self.started = True
            log.info(
                "worker started: inputs=%s group=%s guarantee=%s config_version=%s",
                ",".join(self.inputs),
                kafka.group_id,
                self.settings.processing.guarantee,
                self.settings.config_version,
            )
            await self._loop(consumer, publisher, stop)

    async def _close_consumer(self, consumer: AIOKafkaConsumer) -> None:
        self.started = False
        await consumer.stop()  # leaves the group at once, so partitions move without delay

    async def _check_topics(self, consumer: AIOKafkaConsumer) -> None:
        """Refuse to start without our topics: the worker never creates them."""
        outputs = self.settings.outputs
        needed = {*self.inputs, outputs.routed, outputs.escalated, outputs.dead_letter}
        try:
            existing: set[str] = await consumer.topics()
        except KafkaError as exc:
            raise FatalError(f"cannot list topics: {type(exc).__name__}: {exc}") from None
        missing = sorted(needed - existing)
        if missing:
            raise FatalError(f"topics do not exist: {', '.join(missing)} (create them first)")

    async def _loop(
        self, consumer: AIOKafkaConsumer, publisher: Publisher | None, stop: asyncio.Event
    ) -> None:
        processing = self.settings.processing
        while not stop.is_set():
            batches = await consumer.getmany(
                timeout_ms=FETCH_TIMEOUT_MS, max_records=processing.max_batch_records
            )
            if not batches:
                await self._update_lag(consumer)  # nothing fetched: records left waiting still show
                continue
            task = asyncio.create_task(self._handle(consumer, publisher, batches))
            await _finish_within(task, stop, processing.drain_timeout_s)

    async def _handle(
        self,
        consumer: AIOKafkaConsumer,
        publisher: Publisher | None,
        batches: dict[TopicPartition, list[Any]],
    ) -> None:
        async with self._batch_lock:
            owned = consumer.assignment()
            if self.txn is not None:
                batches = self._unprocessed(batches)
            records: list[ConsumedRecord] = [
                r for tp, rs in batches.items() if tp in owned for r in rs
            ]
            if not records:
                return
            started = time.perf_counter()
            outputs = self.router.process(records)
            if publisher is not None:
                await self._publish(publisher, outputs)
                acked = time.time()
                await self._commit(consumer, batches, owned)
            elif self.txn is not None:
                outputs = await self._transact(self.txn, consumer, batches, outputs)
                acked = time.time()
            else:  # pragma: no cover - run() always provides one of the two
                raise FatalError("no producer configured")
            self.metrics.record_outputs(outputs, acked)
            self.metrics.batch_records.observe(len(records))
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            self.metrics.last_processed.set(time.time())
            self.processed += len(records)
            await self._update_lag(consumer)

    async def _publish(self, publisher: Publisher, outputs: Sequence[Outbound]) -> None:
        started = time.perf_counter()
        try:
            await acknowledged(await publisher.send(outputs))
        except KafkaError as exc:
            raise FatalError(
                f"publishing failed, offsets not committed: {type(exc).__name__}: {exc}"
            ) from None
        self.metrics.produce_seconds.observe(time.perf_counter() - started)

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[Any]],
        owned: set[TopicPartition],
    ) -> None:
        offsets = {
            tp: OffsetAndMetadata(rs[-1].offset + 1, "")
            for tp, rs in batches.items()
            if tp in owned and rs
        }
        started = time.perf_counter()
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The outputs are published; the next owner reprocesses this batch (at-least-once).
            self.metrics.commit_failures.inc()
            log.warning("commit failed, batch will be redelivered: %s", exc)
            return
        self.metrics.commit_seconds.observe(time.perf_counter() - started)

    async def _transact(
        self,
        txn: PartitionProducers,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[Any]],
        outputs: list[Outbound],
    ) -> list[Outbound]:
        """One transaction per partition, run side by side; return the committed outputs."""
        owned = consumer.assignment()
        by_tp: dict[TopicPartition, list[Outbound]] = {}
        for o in outputs:  # outputs follow the records, so each list keeps input order
            by_tp.setdefault(TopicPartition(o.source_topic, o.source_partition), []).append(o)
        tps = [tp for tp in by_tp if tp in owned]
        results = await asyncio.gather(
            *(txn.commit_batch(tp, by_tp[tp], batches[tp][-1].offset + 1) for tp in tps)
        )
        committed: list[Outbound] = []
        for tp, outcome in zip(tps, results, strict=True):
            if outcome == Outcome.COMMITTED:
                committed.extend(by_tp[tp])
                self._next[tp] = batches[tp][-1].offset + 1
            elif outcome == Outcome.ABORTED:
                consumer.seek(tp, batches[tp][0].offset)  # fetch the batch again
            else:
                self._next.pop(tp, None)  # fenced: the group will move it; stop reading it
                consumer.pause(tp)
        await self._back_off(failed=len(committed) < sum(len(by_tp[tp]) for tp in tps))
        return committed

    def _unprocessed(
        self, batches: dict[TopicPartition, list[Any]]
    ) -> dict[TopicPartition, list[Any]]:
        fresh = {}
        for tp, rs in batches.items():
            start = self._next.get(tp)
            if start is None:
                continue  # not (or no longer) ours
            kept = [r for r in rs if r.offset >= start]
            if kept:
                fresh[tp] = kept
        return fresh

    async def _back_off(self, *, failed: bool) -> None:
        """Retry aborted transactions with a pause; give up past the connect timeout."""
        if not failed:
            self._failing_since = None
            return
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > self.settings.kafka.connect_timeout_s:
            raise FatalError(
                "transactions kept failing for "
                f"{self.settings.kafka.connect_timeout_s:g}s; offsets not committed"
            )
        await asyncio.sleep(0.5)

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Lag of every assigned partition, whether or not this batch had records of it: the
        end last seen in a fetch (highwater) minus the next offset to process (position)."""
        ends = {tp: consumer.highwater(tp) for tp in consumer.assignment()}
        for tp, end in ends.items():
            if end is None:
                continue  # not fetched yet: its series reads 0 from the assignment
            try:
                async with asyncio.timeout(0.1):  # immediate unless the position is being reset
                    position = await consumer.position(tp)
            except (TimeoutError, IllegalStateError):
                continue  # measured again after the next poll
            self.metrics.set_lag(tp.topic, tp.partition, end - position)

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        self.assignment = frozenset(assigned)
        self.metrics.rebalances.inc()
        self.metrics.set_assignment((tp.topic, tp.partition) for tp in assigned)
        log.info("assigned %d partitions: %s", len(assigned), _tps(assigned))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Wait for the batch in hand: it is committed before the partitions are given up.
        async with self.worker._batch_lock:
            self.worker.assignment = frozenset()
            if self.worker.txn is not None:
                await self.worker.txn.revoke(revoked)
                for tp in revoked:
                    self.worker._next.pop(tp, None)
        if revoked:
            log.info("revoked %d partitions: %s", len(revoked), _tps(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        # aiokafka may already be fetching: the lock keeps any batch waiting until the
        # producers have fenced previous owners and the partitions are re-positioned.
        async with self.worker._batch_lock:
            if self.worker.txn is not None and self.worker._consumer is not None:
                starts = await self.worker.txn.assign(self.worker._consumer, assigned)
                self.worker._next.update(starts)
            self.worker._assigned(assigned)


async def _finish_within(task: asyncio.Task[None], stop: asyncio.Event, bound_s: float) -> None:
    """Await the batch; once a stop is asked for, give it at most ``bound_s`` more seconds."""
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not task.done():
        done, _ = await asyncio.wait({task}, timeout=bound_s)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise DrainTimeout(
                f"the batch in hand did not finish within {bound_s:g}s; "
                "its offsets stay uncommitted and will be redelivered"
            )
    task.result()


def _tps(tps: set[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps))
