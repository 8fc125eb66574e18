"""The worker loop: fetch raw records, route them, hand them to the delivery guarantee.

Order of work, two batches at a time:

1. ``getmany`` (bounded by ``processing.batch_records``) returns records of several partitions;
   while a batch is being routed it takes only what is fetched already.
2. ``_begin``: the guarantee keeps those still to be processed (``Guarantee.fresh``), and the
   compiled module starts routing them on a thread of its own (``worker.stream.offload``),
   if there are at least ``OFFLOAD_FROM``.
3. ``_finish`` of the batch begun the turn before, and of this one if it is small: the
   compiled results, then ``Router.finish`` (exactly one output per input: routed, escalated
   or dead-letter), in slices that let the event loop carry acknowledgements; then the
   guarantee publishes the outputs and commits the input offsets after them
   (``worker.stream.guarantee``). Nothing is ever committed ahead of its outputs, and a crash
   before the commit redelivers the batch.

So under load batch N+1 is routed while batch N is published, and batches are published in the
order they were fetched. A batch begun before a rebalance is dropped when it comes to be
finished: its partitions are fetched again from their committed offsets, by whichever worker
owns them.

The guarantee is chosen once, from ``processing.guarantee`` (``GUARANTEES``). The rebalance
listener delegates to it under the loop's batch lock, so a rebalance waits for the batch in
hand. The lag gauge is refreshed by a task of its own every ``LAG_REFRESH_S``, not per batch;
another exports the loop's load and, under at-least-once, moves the fetch size with it
(``worker.stream.fetch_pacing``).
On stop, fetching stops, what is in hand and in flight is finished within
``processing.drain_timeout_s`` (one bound for the lot), and the clients are closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from worker.core.records import ConsumedRecord, Outbound, Router
from worker.core.settings import Settings
from worker.observability.metrics import Metrics
from worker.stream import history
from worker.stream.at_least_once import AtLeastOnce
from worker.stream.connections import (
    FatalError,
    StopRequested,
    make_consumer,
    start_within,
    stop_consumer,
)
from worker.stream.exactly_once import ExactlyOnce
from worker.stream.fetch_pacing import pace_fetches
from worker.stream.guarantee import Batches, Guarantee
from worker.stream.limits import LIMITS_REFRESH_S, Fitter
from worker.stream.offload import Offload, Routed

log = logging.getLogger(__name__)

GUARANTEES: dict[str, type[Guarantee]] = {
    "at_least_once": AtLeastOnce,
    "exactly_once": ExactlyOnce,
}
FETCH_TIMEOUT_MS = 200  # how long one getmany may wait: also how fast a stop is noticed
ROUTE_SLICE = 250  # records routed between two turns of the event loop
# Batches from this size are routed on the compiled module's thread, overlapped with the loop's
# work; smaller ones, on the loop when their turn comes: at low rates a thread's wake-up on two
# busy cores costs more latency than the overlap gains.
OFFLOAD_FROM = 1_000
# How often the lag gauge is refreshed: far more often than any scrape, and at most two looks
# at every assigned partition a second, whatever the batch rate.
LAG_REFRESH_S = 0.5


class _Ahead(NamedTuple):
    """A fetched batch, held, its compiled routing begun on the thread if it is large."""

    batches: Batches
    records: list[ConsumedRecord]
    router: Router
    compiled: asyncio.Future[Routed] | None  # None: routed on the loop when finished
    started: float
    rebalances: int  # ``Worker._rebalances`` when it began
    mark: dict[TopicPartition, int]  # ``Guarantee.mark`` when it began


class DrainTimeout(Exception):
    """The batch in hand did not finish within the drain bound; its offsets stay uncommitted."""


class Worker:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.router = Router(settings)
        self.fitter = Fitter(self.router, settings.kafka, {})
        self.inputs = sorted(settings.topics)
        self.guarantee = GUARANTEES[settings.processing.guarantee](settings, metrics, self.fitter)
        self.batch_lock = asyncio.Lock()  # a batch being routed, or a rebalance
        self.started = False
        self.consumer: AIOKafkaConsumer | None = None  # once subscribed: a reload re-subscribes
        self._stop: asyncio.Event | None = None
        self._offload: Offload | None = None  # while running
        self._rebalances = 0  # so far: a batch begun before one is dropped
        # What a rebalance callback raised: aiokafka only logs it, and carries on with the
        # partitions in a state the guarantee never readied; the loop exits on it instead.
        self.rebalance_failure: str | None = None
        self._in_hand = 0  # batches begun and not yet handed to the guarantee
        self.assignment: frozenset[TopicPartition] = frozenset()

    @property
    def ready(self) -> bool:
        """Connected, in the group, and owning at least one partition."""
        return self.started and bool(self.assignment)

    @property
    def busy(self) -> bool:
        """A fetched batch is in hand: being routed, or being handed to the guarantee."""
        return self._in_hand > 0

    @property
    def stopping(self) -> bool:
        """A stop was asked for: the worker drains and takes no new config."""
        return self._stop is not None and self._stop.is_set()

    @property
    def processed(self) -> int:
        """Outputs committed so far."""
        return self.guarantee.processed

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set; raise ``FatalError`` or ``DrainTimeout`` on failure."""
        self._stop = stop
        try:
            await self._run(stop)
        except StopRequested:
            log.info("stopped while connecting")

    async def _run(self, stop: asyncio.Event) -> None:
        kafka = self.settings.kafka
        async with AsyncExitStack() as stack:
            exactly_once = self.settings.processing.guarantee == "exactly_once"
            consumer = make_consumer(kafka, group_id=kafka.group_id, exactly_once=exactly_once)
            stack.push_async_callback(self._close_consumer, consumer)  # started or not
            await self.guarantee.open(consumer, stack, stop)
            await start_within(consumer, kafka, "consumer", stop)
            await self._check_topics(consumer)
            # Recorded before any output names it, so an auditor can always look it up.
            await history.publish(self.settings)
            await self.fitter.refresh()
            self._offload = Offload()
            stack.callback(self._close_offload)  # after the loop, before the clients close
            self._subscribe(consumer)
            lag = asyncio.create_task(self._refresh_lag(consumer))
            stack.push_async_callback(cancelled, lag)  # before the consumer closes
            # Under exactly-once batches are already large (fetches of up to 8 MiB a partition),
            # and it measured slower with the fetch following the load (docs/performance.md).
            follow = not exactly_once
            pacing = asyncio.create_task(pace_fetches(consumer, kafka, self.metrics, follow=follow))
            stack.push_async_callback(cancelled, pacing)
            refresh = _every(lambda: LIMITS_REFRESH_S, "topic limits", self.fitter.refresh)
            stack.push_async_callback(cancelled, asyncio.create_task(refresh))
            self.started = True
            log.info(
                "worker started: inputs=%s group=%s guarantee=%s hot_path=%s config_version=%s",
                ",".join(self.inputs),
                kafka.group_id,
                self.settings.processing.guarantee,
                "python" if self.router.native_topics is None else "compiled",
                self.settings.config_version,
            )
            await self._loop(consumer, stop)

    def _subscribe(self, consumer: AIOKafkaConsumer) -> None:
        consumer.subscribe(self.inputs, listener=_Listener(self))
        self.consumer = consumer

    async def apply(self, settings: Settings, router: Router, *, resubscribe: bool) -> None:
        """Route with ``settings`` (its ``router``) from the next batch on: the batch in hand
        finishes with the old one. ``resubscribe`` when the input topics change: work in flight
        is committed first, then the new subscription makes the group rebalance."""
        async with self.batch_lock:
            if resubscribe:
                await self.guarantee.finish_in_flight()
            # The guarantee keeps the settings it started with: it reads only what a reload
            # cannot change (kafka, processing, outputs).
            self.settings = settings
            self.router = router
            self.fitter.router = router
            self.inputs = sorted(settings.topics)
            self.metrics.configure(settings)
            if resubscribe and self.consumer is not None:
                self._subscribe(self.consumer)

    async def inputs_refusal(self, settings: Settings) -> str | None:
        """Why the input topics of ``settings`` cannot be subscribed to now, or ``None``."""
        if self.consumer is None:
            return "the worker is still starting"
        try:
            missing = await _missing(self.consumer, set(settings.topics))
        except FatalError as exc:
            return str(exc)
        return _absent(missing) if missing else None

    def _close_offload(self) -> None:
        if self._offload is not None:
            self._offload.close()
            self._offload = None

    async def _close_consumer(self, consumer: AIOKafkaConsumer) -> None:
        self.started = False
        self.consumer = None
        await stop_consumer(consumer)  # leaves the group at once: partitions move without delay

    async def _check_topics(self, consumer: AIOKafkaConsumer) -> None:
        """Refuse to start without our topics: the worker never creates them."""
        outputs = self.settings.outputs
        needed = {
            *self.inputs,
            outputs.routed,
            outputs.escalated,
            outputs.dead_letter,
            outputs.config_history,
        }
        missing = await _missing(consumer, needed)
        if missing:
            raise FatalError(_absent(missing))

    async def _loop(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        processing = self.settings.processing
        guarantee = self.guarantee
        drain = _Drain(processing.drain_timeout_s)
        ahead: _Ahead | None = None  # fetched, being routed by the routing thread
        try:
            while not stop.is_set():
                # With a batch being routed, take only what is fetched already: that batch
                # must not wait for more.
                batches = await consumer.getmany(
                    timeout_ms=0 if ahead else FETCH_TIMEOUT_MS,
                    max_records=processing.batch_records,
                )
                if self.rebalance_failure is not None:
                    raise FatalError(self.rebalance_failure)
                following = await self._begin(batches) if batches else None
                due = [] if ahead is None else [ahead]
                if following is not None and following.compiled is None:
                    due.append(following)  # small: routed and published now, as it comes
                    following = None
                ahead = following
                if due:
                    await _finish_within(asyncio.create_task(self._finish(*due)), stop, drain)
                elif ahead is None:
                    # Nothing to overlap with: settle what is in flight.
                    await _finish_within(asyncio.create_task(guarantee.settled()), stop, drain)
            if ahead is not None:
                await _finish_within(asyncio.create_task(self._finish(ahead)), stop, drain)
            for settling in guarantee.in_flight():
                await _finish_within(settling, stop, drain)
            await guarantee.settled()
        finally:
            await guarantee.abandon()

    async def _begin(self, batches: Batches) -> _Ahead | None:
        """Hold a fetched batch and start its compiled routing in the routing thread, where it
        runs while the loop publishes the batch before it."""
        async with self.batch_lock:
            batches = self.guarantee.fresh(batches)
            if not batches:
                return None
            started = time.perf_counter()
            self.guarantee.hold(batches)
            records = [r for rs in batches.values() for r in rs]
            router = self.router
            compiled = None
            if len(records) >= OFFLOAD_FROM:
                assert self._offload is not None  # noqa: S101 - set while the loop runs
                compiled = self._offload.route(router, records)
            mark = self.guarantee.mark(batches)
            self._in_hand += 1
            return _Ahead(batches, records, router, compiled, started, self._rebalances, mark)

    async def _finish(self, *begun: _Ahead) -> None:
        """Finish routing batches begun by ``_begin``, in order, and hand each to the guarantee.
        What is no longer to be processed now is left out (``Guarantee.refresh``); a whole
        batch, if a rebalance came in between: its partitions are fetched again from their
        committed offsets."""
        for ahead in begun:
            try:
                await self._finish_one(ahead)
            finally:
                self._in_hand -= 1

    async def _finish_one(self, ahead: _Ahead) -> None:
        async with self.batch_lock:
            held = ahead.batches
            try:
                compiled = None if ahead.compiled is None else await ahead.compiled
                if ahead.rebalances != self._rebalances:
                    self.guarantee.release(held)
                    return
                records = ahead.records
                kept = self.guarantee.refresh(held, ahead.mark)
                if sum(map(len, kept.values())) != len(records):
                    # The guarantee holds batches by identity: hold what is left instead.
                    self.guarantee.release(held)
                    held = kept
                    self.guarantee.hold(held)
                    left = [r for rs in kept.values() for r in rs]
                    if compiled is not None:
                        by_record = dict(zip(map(id, records), compiled, strict=True))
                        compiled = [by_record[id(r)] for r in left]
                    records = left
                if records:
                    outputs = await self._route(ahead.router, records, compiled)
                    await self.guarantee.publish(held, outputs, ahead.started)
                else:
                    self.guarantee.release(held)
            except BaseException:
                self.guarantee.release(held)
                raise

    async def _route(
        self,
        router: Router,
        records: list[ConsumedRecord],
        compiled: Routed,
    ) -> list[Outbound]:
        """``Router.finish`` in slices, with the compiled results given, or else routed here,
        letting the event loop run between slices: the previous batch's acknowledgements and
        commit need the loop to make progress. (An output depends only on its record, not on
        the records routed beside it.)"""
        outputs: list[Outbound] = []
        for start in range(0, len(records), ROUTE_SLICE):
            if start:
                await asyncio.sleep(0)
            end = start + ROUTE_SLICE
            chunk = records[start:end]
            done = router.compiled(chunk) if compiled is None else compiled[start:end]
            outputs += self.fitter.fit(chunk, router.finish(chunk, done))
        return outputs

    async def _refresh_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Refresh the lag gauge every ``LAG_REFRESH_S`` until cancelled."""
        await _every(lambda: LAG_REFRESH_S, "consumer lag", lambda: self._update_lag(consumer))

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
            self.metrics.set_lag(tp.topic, tp.partition, end - position + self.guarantee.held(tp))

    def assigned(self, assigned: set[TopicPartition]) -> None:
        self._rebalances += 1
        self.assignment = frozenset(assigned)
        self.metrics.rebalances.inc()
        self.metrics.set_assignment((tp.topic, tp.partition) for tp in assigned)
        log.info("assigned %d partitions: %s", len(assigned), _tps(assigned))

    def revoked(self, revoked: set[TopicPartition]) -> None:
        self._rebalances += 1
        self.assignment = frozenset()
        if revoked:
            log.info("revoked %d partitions: %s", len(revoked), _tps(revoked))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Rebalances wait for the batch in hand (the lock) and hand over to the guarantee."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.worker.batch_lock:
            try:
                await self.worker.guarantee.revoke(revoked)
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which exits on it
                self._failed("handing over", revoked, exc)
            self.worker.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        # aiokafka may already be fetching: the lock keeps any batch waiting until the
        # guarantee has readied the partitions.
        async with self.worker.batch_lock:
            try:
                await self.worker.guarantee.assign(assigned)
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which exits on it
                # Unreadied (under exactly-once, without their producers), these partitions'
                # records would be dropped at every fetch, silently: exit, and a restart
                # takes them up again from their committed offsets.
                self._failed("taking up", assigned, exc)
                return
            self.worker.assigned(assigned)

    def _failed(self, doing: str, partitions: set[TopicPartition], exc: Exception) -> None:
        named = ",".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        why = str(exc) if isinstance(exc, FatalError) else f"{type(exc).__name__}: {exc}"
        if self.worker.rebalance_failure is None:
            self.worker.rebalance_failure = f"{doing} partitions {named} failed: {why}"


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
            await cancelled(task)
            raise DrainTimeout(
                f"the batches in hand did not finish within {drain.bound_s:g}s; "
                "their offsets stay uncommitted and will be redelivered"
            )
    task.result()


async def _every(
    period: Callable[[], float], what: str, refresh: Callable[[], Awaitable[None]]
) -> None:
    """Run ``refresh`` every ``period()`` seconds until cancelled. One that fails is logged and
    the next one tried: a refresh never stops the worker."""
    while True:
        await asyncio.sleep(period())
        try:
            await refresh()
        except Exception as exc:  # noqa: BLE001 - kept as it was until the next one
            log.warning("%s not refreshed: %s: %s", what, type(exc).__name__, exc)


async def _missing(consumer: AIOKafkaConsumer, topics: set[str]) -> list[str]:
    """Which of ``topics`` the brokers do not have."""
    try:
        existing: set[str] = await consumer.topics()
    except KafkaError as exc:
        raise FatalError(f"cannot list topics: {type(exc).__name__}: {exc}") from None
    return sorted(topics - existing)


def _absent(topics: list[str]) -> str:
    return f"topics do not exist: {', '.join(topics)} (create them first)"


async def cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has finished, whatever it ended with."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _tps(tps: set[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps))
