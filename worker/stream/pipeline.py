"""The worker loop: consume raw records, route them, publish, then commit.

Order of work for each batch, and why:

1. ``getmany`` (bounded by ``processing.batch_records``) returns records of several partitions.
2. ``Router.process`` gives exactly one output per input: routed, escalated or dead-letter.
3. The outputs go to the idempotent producer as record batches, one per output partition, in
   input order (``worker.stream.publish``); then all acknowledgements are awaited together: no
   per-message wait.
4. Only then are the input offsets committed, one commit per batch. A crash anywhere before
   the commit redelivers the batch; nothing is ever committed ahead of its outputs.

Batches overlap: while batch N is acknowledged and committed (round trips to the broker, the
CPU idle), batch N+1 is fetched and routed, in slices that let the event loop carry N's I/O,
and sent at once: one producer keeps each partition's order. Commits are chained: N+1's
offsets are committed only after N's, and not at all if N failed, so commits never go
backwards or past a failed batch. At most ``MAX_IN_FLIGHT`` batches are unsettled. (Clients
built on librdkafka get this overlap from its I/O threads; here it is an asyncio task per
batch in flight.)

With ``processing.guarantee = "exactly_once"``, steps 3 and 4 become one Kafka transaction
per input partition (see ``worker.stream.transactions``): outputs and offsets commit together or not
at all; an aborted batch is fetched again from its first offset. A partition's transactions
run one at a time, so the next batch is routed while one is in flight and sent after it.

The lag gauge is refreshed by a task of its own every ``LAG_REFRESH_S``, not per batch: the
refresh asks the client for every assigned partition's position, and per batch that was CPU
taken from the batches at half load (``docs/performance.md``).

A rebalance waits for the batch in hand (``_batch_lock``) and those in flight before
partitions are given up, so finished work is committed by the owner that did it. On stop,
fetching stops, all of them are finished within ``processing.drain_timeout_s`` (one bound for
the lot), and the clients are closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from contextlib import AsyncExitStack
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from worker.core.records import ConsumedRecord, Outbound, Router
from worker.core.settings import Settings
from worker.observability.metrics import Metrics
from worker.stream.connections import (
    FatalError,
    StopRequested,
    acknowledged,
    make_consumer,
    make_producer,
    start_within,
)
from worker.stream.publish import Publisher
from worker.stream.transactions import Outcome, PartitionProducers

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 200  # how long one getmany may wait: also how fast a stop is noticed
ROUTE_SLICE = 250  # records routed between two turns of the event loop

MAX_IN_FLIGHT = 2  # batches sent and not yet committed (at-least-once)
# How often the lag gauge is refreshed: far more often than any scrape, and at most two looks
# at every assigned partition a second, whatever the batch rate.
LAG_REFRESH_S = 0.5


class InFlight(NamedTuple):
    task: asyncio.Task[set[TopicPartition]]
    batches: dict[TopicPartition, list[Any]]


# Acknowledging and committing a batch: its committed outputs, and the input partitions that
# did not commit (exactly-once; they are fetched again).
Settling = Coroutine[Any, Any, tuple[list[Outbound], set[TopicPartition]]]


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
        # Batches sent and not yet settled, oldest first (at most MAX_IN_FLIGHT); and every
        # batch fetched and not yet committed, the one being routed included (for the lag).
        self._in_flight: list[InFlight] = []
        self._held: list[dict[TopicPartition, list[Any]]] = []

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
            lag = asyncio.create_task(self._refresh_lag(consumer))
            stack.push_async_callback(_cancelled, lag)  # before the consumer closes
            self.started = True
            log.info(
                "worker started: inputs=%s group=%s guarantee=%s hot_path=%s config_version=%s",
                ",".join(self.inputs),
                kafka.group_id,
                self.settings.processing.guarantee,
                "python" if self.router.native_topics is None else "compiled",
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
        drain = _Drain(processing.drain_timeout_s)
        try:
            while not stop.is_set():
                batches = await consumer.getmany(
                    timeout_ms=FETCH_TIMEOUT_MS, max_records=processing.batch_records
                )
                if not batches:
                    # Nothing to overlap with: finish what is in flight (a stop bounds it).
                    settling = asyncio.create_task(self._settled())
                    await _finish_within(settling, stop, drain)
                    self._refetch(consumer, settling.result())
                    continue
                task = asyncio.create_task(self._step(consumer, publisher, batches))
                await _finish_within(task, stop, drain)
            for settling, _ in self._in_flight:
                await _finish_within(settling, stop, drain)
            await self._settled()
        finally:
            for settling, _ in self._in_flight:
                settling.cancel()  # failing: their offsets stay uncommitted
            await asyncio.gather(*(t for t, _ in self._in_flight), return_exceptions=True)

    async def _step(
        self,
        consumer: AIOKafkaConsumer,
        publisher: Publisher | None,
        batches: dict[TopicPartition, list[Any]],
    ) -> None:
        """Route a fetched batch while the previous one settles, then hand it over to settle."""
        async with self._batch_lock:
            owned = consumer.assignment()
            if self.txn is not None:
                batches = self._unprocessed(batches)
            batches = {tp: rs for tp, rs in batches.items() if tp in owned and rs}
            if not batches:
                return
            started = time.perf_counter()
            self._held.append(batches)
            try:
                settling = await self._stage(consumer, publisher, batches)
            except BaseException:
                self._release(batches)
                raise
            task = asyncio.create_task(self._settle(consumer, settling, batches, started))
            self._in_flight.append(InFlight(task, batches))

    async def _stage(
        self,
        consumer: AIOKafkaConsumer,
        publisher: Publisher | None,
        batches: dict[TopicPartition, list[Any]],
    ) -> Settling:
        """Route the batch, wait for what must settle before it is sent, send it (exactly-once:
        start its transactions); return what settles it."""
        outputs = await self._route([r for rs in batches.values() for r in rs])
        if publisher is not None:
            # At-least-once: send at once (one producer keeps each partition's order), with at
            # most MAX_IN_FLIGHT batches unsettled; the commits are chained in batch order.
            await self._settled(keep=MAX_IN_FLIGHT - 1)
            previous = self._in_flight[-1].task if self._in_flight else None
            sent = time.perf_counter()
            futures = await self._send(publisher, outputs)
            return self._settle_published(consumer, futures, batches, outputs, sent, previous)
        if self.txn is not None:
            # Exactly-once: a partition's transactions run one at a time, so everything in
            # flight settles first. A partition whose transaction did not commit is fetched
            # again from its first offset, so what this batch holds of it is dropped.
            unsettled = await self._settled()
            for tp in unsettled:
                batches.pop(tp, None)  # in place: it is the batch registered in ``_held``
            self._refetch(consumer, unsettled)
            outputs = [o for o in outputs if _source(o) not in unsettled]
            return self._transact(self.txn, consumer, batches, outputs)
        raise FatalError("no producer configured")  # pragma: no cover - run() gives one

    async def _route(self, records: list[ConsumedRecord]) -> list[Outbound]:
        """``Router.process`` in slices, letting the event loop run between them: the previous
        batch's acknowledgements and commit need the loop to make progress. (An output depends
        only on its record, not on the records routed beside it.)"""
        outputs: list[Outbound] = []
        for start in range(0, len(records), ROUTE_SLICE):
            if start:
                await asyncio.sleep(0)
            outputs += self.router.process(records[start : start + ROUTE_SLICE])
        return outputs

    async def _settled(self, keep: int = 0) -> set[TopicPartition]:
        """Wait for the oldest batches in flight to settle until ``keep`` are left; return
        the input partitions whose outputs did not commit (exactly-once only). Raise what made
        one fail."""
        unsettled: set[TopicPartition] = set()
        while len(self._in_flight) > keep:
            task, _ = self._in_flight.pop(0)
            unsettled |= await task
        return unsettled

    async def _settle(
        self,
        consumer: AIOKafkaConsumer,
        settling: Settling,
        batches: dict[TopicPartition, list[Any]],
        started: float,
    ) -> set[TopicPartition]:
        try:
            committed, unsettled = await settling
        finally:
            self._release(batches)
        acked = time.time()
        self.metrics.record_outputs(committed, acked)
        self.metrics.batch_records.observe(sum(len(rs) for rs in batches.values()))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.last_processed.set(acked)
        self.processed += len(committed)
        return unsettled

    def _release(self, batches: dict[TopicPartition, list[Any]]) -> None:
        self._held = [b for b in self._held if b is not batches]  # by identity

    async def _send(self, publisher: Publisher, outputs: Sequence[Outbound]) -> list[Any]:
        try:
            return await publisher.send(outputs)
        except KafkaError as exc:
            raise FatalError(
                f"publishing failed, offsets not committed: {type(exc).__name__}: {exc}"
            ) from None

    async def _settle_published(
        self,
        consumer: AIOKafkaConsumer,
        futures: list[Any],
        batches: dict[TopicPartition, list[Any]],
        outputs: list[Outbound],
        sent: float,
        previous: asyncio.Task[set[TopicPartition]] | None,
    ) -> tuple[list[Outbound], set[TopicPartition]]:
        """At-least-once: every output acknowledged, the previous batch committed, then one
        commit of this batch's offsets. Should the previous batch fail, this one is not
        committed either: its offsets would cover the failed one's."""
        try:
            await acknowledged(futures)
        except KafkaError as exc:
            raise FatalError(
                f"publishing failed, offsets not committed: {type(exc).__name__}: {exc}"
            ) from None
        self.metrics.produce_seconds.observe(time.perf_counter() - sent)
        if previous is not None:
            await previous  # its failure is this batch's too (the loop reports it once)
        await self._commit(consumer, batches)
        return outputs, set()

    async def _commit(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[Any]]
    ) -> None:
        offsets = {tp: OffsetAndMetadata(rs[-1].offset + 1, "") for tp, rs in batches.items()}
        if not offsets:
            return
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
    ) -> tuple[list[Outbound], set[TopicPartition]]:
        """Exactly-once: one transaction per partition, run side by side; return the
        committed outputs and the partitions that did not commit."""
        owned = consumer.assignment()
        by_tp: dict[TopicPartition, list[Outbound]] = {}
        for o in outputs:  # outputs follow the records, so each list keeps input order
            by_tp.setdefault(TopicPartition(o.source_topic, o.source_partition), []).append(o)
        tps = [tp for tp in by_tp if tp in owned]
        results = await asyncio.gather(
            *(txn.commit_batch(tp, by_tp[tp], batches[tp][-1].offset + 1) for tp in tps)
        )
        committed: list[Outbound] = []
        unsettled = {tp for tp in batches if tp not in tps}
        for tp, outcome in zip(tps, results, strict=True):
            if outcome == Outcome.COMMITTED:
                committed.extend(by_tp[tp])
                self._next[tp] = batches[tp][-1].offset + 1
                continue
            unsettled.add(tp)
            if outcome == Outcome.FENCED:
                self._next.pop(tp, None)  # the group will move it; stop reading it
                consumer.pause(tp)
            # Aborted: fetched again from its first offset, but by the loop once it has taken
            # this outcome (``_refetch``), not here: a seek now could let a fetch already
            # waiting return these records while this batch still counts as covering them.
        await self._back_off(failed=bool(unsettled))
        return committed, unsettled

    def _refetch(self, consumer: AIOKafkaConsumer, unsettled: set[TopicPartition]) -> None:
        """Fetch every partition whose batch did not commit again from its first uncommitted
        offset. Called by the loop as it takes a settled batch off ``_in_flight``, before the
        next fetch: what was fetched of the partition meanwhile lies past records never
        committed, and is dropped (the buffer too: ``seek`` clears it)."""
        owned = consumer.assignment()
        for tp in unsettled:
            start = self._next.get(tp)  # None: fenced or revoked, not ours to read
            if start is not None and tp in owned:
                consumer.seek(tp, start)

    def _unprocessed(
        self, batches: dict[TopicPartition, list[Any]]
    ) -> dict[TopicPartition, list[Any]]:
        fresh = {}
        for tp, rs in batches.items():
            start = self._next.get(tp)
            if start is None:
                continue  # not (or no longer) ours
            # The batch in flight commits up to here, or its partition is fetched again (and
            # what this batch holds of it is dropped once it settles): either way, records
            # below are not to be processed now.
            for _, held in self._in_flight:
                if tp in held:
                    start = max(start, held[tp][-1].offset + 1)
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

    async def _refresh_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Refresh the lag gauge every ``LAG_REFRESH_S`` until cancelled. A refresh that fails
        is logged and the next one tried: the gauge never stops the worker."""
        while True:
            await asyncio.sleep(LAG_REFRESH_S)
            try:
                await self._update_lag(consumer)
            except Exception as exc:  # noqa: BLE001 - a metric, not the pipeline
                log.warning("consumer lag not refreshed: %s: %s", type(exc).__name__, exc)

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Lag of every assigned partition: the end last seen in a fetch (highwater) minus the
        next offset to fetch (position), plus the records fetched and not yet committed: the
        records not yet processed."""
        ends = {tp: consumer.highwater(tp) for tp in consumer.assignment()}
        for tp, end in ends.items():
            if end is None:
                continue  # not fetched yet: its series reads 0 from the assignment
            try:
                async with asyncio.timeout(0.1):  # immediate unless the position is being reset
                    position = await consumer.position(tp)
            except (TimeoutError, IllegalStateError):
                continue  # measured again at the next refresh
            if tp not in self.assignment:
                continue  # revoked while its position was awaited: its series is gone
            held = sum(len(batch.get(tp, ())) for batch in self._held)
            self.metrics.set_lag(tp.topic, tp.partition, end - position + held)

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        self.assignment = frozenset(assigned)
        self.metrics.rebalances.inc()
        self.metrics.set_assignment((tp.topic, tp.partition) for tp in assigned)
        log.info("assigned %d partitions: %s", len(assigned), _tps(assigned))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Wait for the batch in hand and the one in flight: they are committed before the
        # partitions are given up. (The loop collects the in-flight batch's outcome.)
        async with self.worker._batch_lock:
            if self.worker._in_flight:
                await asyncio.wait({task for task, _ in self.worker._in_flight})
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


class _Drain:
    """One bound for the whole drain: from the moment a stop is seen, the batch in hand and
    those in flight share ``bound_s`` seconds."""

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self._deadline: float | None = None

    def remaining(self) -> float:
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self.bound_s
        return max(0.0, self._deadline - now)


async def _finish_within(task: asyncio.Task[Any], stop: asyncio.Event, drain: _Drain) -> None:
    """Await a batch; once a stop is asked for, give it what is left of the drain bound."""
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not task.done():
        done, _ = await asyncio.wait({task}, timeout=drain.remaining())
        if not done:
            await _cancelled(task)
            raise DrainTimeout(
                f"the batches in hand did not finish within {drain.bound_s:g}s; "
                "their offsets stay uncommitted and will be redelivered"
            )
    task.result()


async def _cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has finished, whatever it ended with."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _source(o: Outbound) -> TopicPartition:
    return TopicPartition(o.source_topic, o.source_partition)


def _tps(tps: set[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps))
