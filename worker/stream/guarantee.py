"""The delivery guarantee: the one object that publishes a routed batch and commits its input.

The loop (``worker.stream.pipeline``) fetches and routes; everything between an output and a
committed offset is the guarantee's: which fetched records still need processing, when a batch
may be sent, how it is acknowledged and committed, and what a rebalance must wait for. Two
implement it, chosen once from ``processing.guarantee``:

* ``AtLeastOnce`` (``worker.stream.at_least_once``): one idempotent producer, batches sent at
  once and their commits chained in batch order;
* ``ExactlyOnce`` (``worker.stream.exactly_once``): a transaction per input partition per batch,
  outputs and offsets together.

This base keeps what both share: the batches in flight (sent, not yet settled) and the
records held (fetched, not yet committed: the lag gauge counts them), and the metrics of a
settled batch.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Iterable
from contextlib import AsyncExitStack
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.core.records import Outbound
from worker.core.settings import Settings
from worker.observability.metrics import Metrics
from worker.stream.limits import Fitter

# Records of a fetch, by input partition (aiokafka's ``ConsumerRecord`` lists).
Batches = dict[TopicPartition, list[Any]]
# Acknowledging and committing a batch: its committed outputs, and the input partitions that
# did not commit (exactly-once; they are fetched again).
Settling = Coroutine[Any, Any, tuple[list[Outbound], set[TopicPartition]]]


class InFlight(NamedTuple):
    task: asyncio.Task[set[TopicPartition]]
    batches: Batches


class Guarantee(ABC):
    """Publishing and committing, behind the calls the loop and the rebalance listener make."""

    def __init__(self, settings: Settings, metrics: Metrics, fitter: Fitter) -> None:
        self.settings = settings
        self.metrics = metrics
        self.fitter = fitter
        self.consumer: AIOKafkaConsumer  # bound by ``open``
        self.processed = 0  # outputs committed
        # Sent and not yet settled, oldest first; and every batch fetched and not yet
        # committed, the one being routed included.
        self._in_flight: list[InFlight] = []
        self._held: list[Batches] = []
        self._seeks: dict[TopicPartition, int] = {}  # partitions positioned again, how often

    # --- what the loop calls ---------------------------------------------------------------

    async def open(
        self, consumer: AIOKafkaConsumer, stack: AsyncExitStack, stop: asyncio.Event
    ) -> None:
        """Bind the consumer and start the producers; ``stack`` closes them."""
        self.consumer = consumer

    def fresh(self, batches: Batches) -> Batches:
        """The records of a fetch still to be processed, of partitions still owned."""
        owned = self.consumer.assignment()
        return {tp: rs for tp, rs in batches.items() if tp in owned and rs}

    def mark(self, batches: Batches) -> dict[TopicPartition, int]:
        """How often each partition of a fetched batch had been positioned again, for
        ``refresh`` when the batch is taken up later."""
        return {tp: self._seeks.get(tp, 0) for tp in batches}

    def refresh(self, batches: Batches, mark: dict[TopicPartition, int]) -> Batches:
        """``fresh`` again, for a batch fetched while others were published: also without the
        partitions positioned again since ``mark``, whose records are fetched again."""
        kept = {tp: rs for tp, rs in batches.items() if self._seeks.get(tp, 0) == mark[tp]}
        return self.fresh(kept)

    def hold(self, batches: Batches) -> None:
        """``batches`` are being routed: count them as fetched and not committed."""
        self._held.append(batches)

    def release(self, batches: Batches) -> None:
        self._held = [b for b in self._held if b is not batches]  # by identity

    def held(self, tp: TopicPartition) -> int:
        """Records of ``tp`` fetched and not yet committed."""
        return sum(len(batch.get(tp, ())) for batch in self._held)

    async def publish(self, batches: Batches, outputs: list[Outbound], started: float) -> None:
        """Send a routed batch (waiting first for what must settle before it) and keep it in
        flight until it settles. ``batches`` are held until then."""
        settling = await self._stage(batches, outputs)
        task = asyncio.create_task(self._settle(settling, batches, started))
        self._in_flight.append(InFlight(task, batches))

    async def settled(self, keep: int = 0) -> set[TopicPartition]:
        """Wait for the oldest batches in flight to settle until ``keep`` are left, and fetch
        again what did not commit; return those partitions. Raise what made a batch fail."""
        unsettled: set[TopicPartition] = set()
        while len(self._in_flight) > keep:
            task, _ = self._in_flight.pop(0)
            unsettled |= await task
        self._refetch(unsettled)
        return unsettled

    def in_flight(self) -> list[asyncio.Task[set[TopicPartition]]]:
        return [task for task, _ in self._in_flight]

    async def finish_in_flight(self) -> None:
        """Wait until every batch in flight has settled (the loop collects the outcomes)."""
        if self._in_flight:
            await asyncio.wait(self.in_flight())

    async def abandon(self) -> None:
        """Cancel what is still in flight (failing or out of time): its offsets stay
        uncommitted and are redelivered."""
        for task, _ in self._in_flight:
            task.cancel()
        await asyncio.gather(*self.in_flight(), return_exceptions=True)

    # --- what the rebalance listener calls (under the loop's batch lock) -------------------

    async def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """Before partitions are given up: finish what is in flight, so finished work is
        committed by the owner that did it. (The loop collects the outcomes.)"""
        await self.finish_in_flight()

    async def assign(self, tps: Iterable[TopicPartition]) -> None:  # noqa: B027 - optional
        """Newly assigned partitions, before any of their records is processed."""

    # --- what each guarantee does its own way ----------------------------------------------

    @abstractmethod
    async def _stage(self, batches: Batches, outputs: list[Outbound]) -> Settling:
        """Wait for what must settle before this batch is sent, send it; return what settles
        it. ``batches`` may lose partitions that must be fetched again (in place)."""

    def _refetch(self, unsettled: set[TopicPartition]) -> None:  # noqa: B027 - optional
        """Position the partitions whose batch did not commit to fetch them again."""

    # --- shared ----------------------------------------------------------------------------

    async def _settle(
        self, settling: Settling, batches: Batches, started: float
    ) -> set[TopicPartition]:
        try:
            committed, unsettled = await settling
        finally:
            self.release(batches)
        acked = time.time()
        self.metrics.record_outputs(committed, acked)
        self.metrics.batch_records.observe(sum(len(rs) for rs in batches.values()))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.last_processed.set(acked)
        self.processed += len(committed)
        return unsettled
