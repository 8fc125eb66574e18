"""Exactly-once: each batch is one Kafka transaction per input partition, its outputs and its
next offset committed together or not at all (producers and fencing: ``worker.stream.
transactions``). An aborted batch is fetched again from its first offset.

Two batches may be in flight. A partition's transactions run one at a time and in order: a
partition's transaction in the later batch starts once its transaction in the earlier one has
committed (and is not tried if that one did not commit), while the later batch's other partitions
start at once. Readers of the outputs use ``isolation_level=read_committed``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from contextlib import AsyncExitStack
from itertools import groupby
from operator import attrgetter
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.core.records import Outbound
from worker.core.settings import Settings
from worker.observability.metrics import Metrics
from worker.stream.connections import FatalError
from worker.stream.guarantee import Batches, Guarantee, Settling
from worker.stream.limits import Fitter
from worker.stream.transactions import Outcome, PartitionProducers

RETRY_PAUSE_S = 0.5  # between a batch with an aborted transaction and the next
# Batches in flight besides the one being sent: its transactions on partitions of those wait for
# theirs (``_after``), the others overlap them.
KEEP_IN_FLIGHT = 1


class ExactlyOnce(Guarantee):
    def __init__(self, settings: Settings, metrics: Metrics, fitter: Fitter) -> None:
        super().__init__(settings, metrics, fitter)
        self.producers = PartitionProducers(settings, fitter.limits)
        # The next offset to process per partition, as committed. A record below it was
        # fetched before the last assignment re-positioned the partition and is already in a
        # committed transaction, ours or a previous owner's: it is skipped.
        self._next: dict[TopicPartition, int] = {}
        # Per partition, when its transactions began to abort without one committing since.
        self._failing_since: dict[TopicPartition, float] = {}
        # Per partition, the outcome of its latest transaction staged since it was last
        # positioned: the next one waits for it.
        self._latest: dict[TopicPartition, asyncio.Future[str]] = {}

    async def open(
        self, consumer: AIOKafkaConsumer, stack: AsyncExitStack, stop: asyncio.Event
    ) -> None:
        await super().open(consumer, stack, stop)
        stack.push_async_callback(self.producers.close)

    def fresh(self, batches: Batches) -> Batches:
        kept: Batches = {}
        for tp, rs in super().fresh(batches).items():
            start = self._next.get(tp)
            if start is None:
                continue  # not (or no longer) ours
            # A batch in flight commits up to here, or its partition is fetched again (and
            # what this batch holds of it is dropped once it settles): either way, records
            # below are not to be processed now.
            for _, held in self._in_flight:
                if tp in held:
                    start = max(start, held[tp][-1].offset + 1)
            fresh = [r for r in rs if r.offset >= start]
            if fresh:
                kept[tp] = fresh
        return kept

    async def revoke(self, tps: Iterable[TopicPartition]) -> None:
        tps = list(tps)
        await super().revoke(tps)
        await self.producers.revoke(tps)
        for tp in tps:
            self._next.pop(tp, None)
            self._latest.pop(tp, None)

    async def assign(self, tps: Iterable[TopicPartition]) -> None:
        # Producers first: they fence previous owners; then the partitions are positioned at
        # their committed offsets as they stand after the fencing. (Their chains of
        # transactions were dropped when they were last revoked.)
        self._next.update(await self.producers.assign(self.consumer, tps))

    async def _stage(self, batches: Batches, outputs: list[Outbound]) -> Settling:
        # A partition whose transaction did not commit is fetched again from its first
        # offset, so what this batch holds of it is dropped.
        unsettled = await self.settled(KEEP_IN_FLIGHT)
        for tp in unsettled:
            batches.pop(tp, None)  # in place: it is the batch being held
        if unsettled:
            outputs = [o for o in outputs if _SOURCE(o) not in unsettled]
        # Chained now, in the order batches are sent, not when the transactions start.
        loop = asyncio.get_running_loop()
        chain: dict[TopicPartition, _Link] = {}
        for tp in batches:
            chain[tp] = _Link(self._latest.get(tp), loop.create_future())
            self._latest[tp] = chain[tp].outcome
        return self._transact(batches, outputs, chain)

    async def _transact(
        self, batches: Batches, outputs: list[Outbound], chain: dict[TopicPartition, _Link]
    ) -> tuple[list[Outbound], set[TopicPartition]]:
        """One transaction per partition, run side by side, each after the partition's one
        before (``_after``); return the committed outputs and the partitions that did not
        commit."""
        try:
            return await self._transact_chained(batches, outputs, chain)
        finally:
            for link in chain.values():  # however this ended: nothing waits for ever
                link.end(Outcome.ABORTED)

    async def _transact_chained(
        self, batches: Batches, outputs: list[Outbound], chain: dict[TopicPartition, _Link]
    ) -> tuple[list[Outbound], set[TopicPartition]]:
        owned = self.consumer.assignment()
        by_tp: dict[TopicPartition, list[Outbound]] = {}
        # Outputs follow the records, a partition's together and in input order: a run each.
        for source, run in groupby(outputs, _SOURCE):
            by_tp.setdefault(TopicPartition(*source), []).extend(run)
        tps = [tp for tp in by_tp if tp in owned]
        for tp in chain.keys() - tps:
            chain[tp].end(Outcome.ABORTED)  # no longer ours: not tried
        results = await asyncio.gather(
            *(self._after(tp, chain[tp], by_tp[tp], batches[tp][-1].offset + 1) for tp in tps)
        )
        committed: list[Outbound] = []
        unsettled = {tp for tp in batches if tp not in tps}
        aborted: list[TopicPartition] = []
        for tp, outcome in zip(tps, results, strict=True):
            if outcome == Outcome.COMMITTED:
                committed.extend(by_tp[tp])
                continue
            unsettled.add(tp)
            if outcome == Outcome.SKIPPED:
                continue  # the transaction before it did not commit: fetched again too
            if outcome == Outcome.FENCED:
                self._next.pop(tp, None)  # the group will move it; stop reading it
                self._failing_since.pop(tp, None)
                self.consumer.pause(tp)
            else:
                aborted.append(tp)
        if Outcome.REFUSED in results:
            # A topic's limits changed since they were read. The producer's sequence is broken
            # now, and re-initialising it here could fence the partition's rightful owner:
            # a restart reads the limits again and dead-letters what no longer fits.
            raise FatalError(
                "the broker refused a record the topic limits read at start allowed; exiting, "
                "so that a restart reads them again (offsets not committed)"
            )
            # Aborted: fetched again from its first offset, but only once the loop has taken
            # this outcome (``settled``), not here: a seek now could let a fetch already
            # waiting return these records while this batch still counts as covering them.
        await self._back_off(aborted)
        return committed, unsettled

    async def _after(
        self, tp: TopicPartition, link: _Link, outputs: list[Outbound], next_offset: int
    ) -> str:
        """``tp``'s transaction for this batch, once its transaction for the batch before has
        ended; not tried if that one did not commit (its records are fetched again, and these
        with them)."""
        try:
            if link.before is not None:
                await asyncio.wait({link.before})  # never cancels what it waits for
                if link.before.result() != Outcome.COMMITTED:
                    link.end(Outcome.SKIPPED)
                    return Outcome.SKIPPED
            outcome = await self.producers.commit_batch(tp, outputs, next_offset)
            if outcome == Outcome.COMMITTED:
                # Here, not once the whole batch has committed: a later batch's transaction on
                # this partition may commit before another partition of this batch does.
                self._next[tp] = next_offset
                self._failing_since.pop(tp, None)
        except BaseException:
            link.end(Outcome.ABORTED)
            raise
        link.end(outcome)
        return outcome

    def _refetch(self, unsettled: set[TopicPartition]) -> None:
        """Fetch again from its first uncommitted offset. What was fetched of the partition
        meanwhile lies past records never committed, and is dropped (``seek`` clears it)."""
        owned = self.consumer.assignment()
        for tp in unsettled:
            self._latest.pop(tp, None)  # what is fetched from now on follows no transaction
            start = self._next.get(tp)  # None: fenced or revoked, not ours to read
            if start is not None and tp in owned:
                self.consumer.seek(tp, start)
                self._seeks[tp] = self._seeks.get(tp, 0) + 1

    async def _back_off(self, aborted: list[TopicPartition]) -> None:
        """Retry aborted transactions after a pause. A partition none of whose transactions
        committed for ``kafka.connect_timeout_s`` stops the worker, however the others fare:
        a restart resumes from the committed offsets."""
        if not aborted:
            return
        now = time.monotonic()
        bound = self.settings.kafka.connect_timeout_s
        for tp in aborted:
            since = self._failing_since.setdefault(tp, now)
            if now - since > bound:
                raise FatalError(
                    f"transactions for {tp.topic}[{tp.partition}] kept aborting for "
                    f"{bound:g}s; offsets not committed"
                )
        await asyncio.sleep(RETRY_PAUSE_S)


class _Link(NamedTuple):
    """A partition's place in the order of its transactions."""

    before: asyncio.Future[str] | None  # the one before's outcome, if one is in this chain
    outcome: asyncio.Future[str]  # this one's, set when it ends (or is not tried)

    def end(self, outcome: str) -> None:
        """Set the outcome, unless it is set already (the batch failed as a whole first)."""
        if not self.outcome.done():
            self.outcome.set_result(outcome)


# An output's input partition as a plain tuple, read in C: equal to, and hashing as, the
# ``TopicPartition``.
_SOURCE = attrgetter("source_topic", "source_partition")
