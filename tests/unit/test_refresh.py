"""A batch fetched while the one before it was published is checked again when its turn comes
(``Guarantee.refresh``): what a seek of the guarantee made stale, or what is no longer owned,
is left out; the rest is kept as it was."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from tests.consumed import Consumed
from worker.core.records import Router
from worker.core.settings import Settings
from worker.observability.metrics import Metrics
from worker.stream.at_least_once import AtLeastOnce
from worker.stream.exactly_once import ExactlyOnce
from worker.stream.limits import Fitter

P0, P1 = TopicPartition("in", 0), TopicPartition("in", 1)


class _Consumer:
    """What the guarantees ask of aiokafka's consumer here: the assignment, and seeks."""

    def __init__(self, owned: set[TopicPartition]) -> None:
        self.owned = owned
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def _guarantee(kind: type[Any], guarantee: str) -> Any:
    settings = Settings(topics={"in": {}}, processing={"guarantee": guarantee})
    g = kind(
        settings,
        Metrics(settings, CollectorRegistry()),
        Fitter(Router(settings), settings.kafka, {}),
    )
    g.consumer = _Consumer({P0, P1})
    return g


def _batch(start: int) -> dict[TopicPartition, list[Consumed]]:
    return {
        tp: [
            Consumed(tp.topic, tp.partition, o, 0, None, b"{}", []) for o in range(start, start + 3)
        ]
        for tp in (P0, P1)
    }


def test_at_least_once_keeps_a_batch_whole_unless_a_partition_was_revoked() -> None:
    g = _guarantee(AtLeastOnce, "at_least_once")
    batch = _batch(10)
    mark = g.mark(batch)
    assert g.refresh(batch, mark) == batch
    g.consumer.owned = {P1}
    assert g.refresh(batch, mark) == {P1: batch[P1]}


def test_exactly_once_leaves_out_a_partition_fetched_again_since_the_batch_was_fetched() -> None:
    g = _guarantee(ExactlyOnce, "exactly_once")
    g._next = {P0: 10, P1: 10}  # both assigned, committed up to 10
    before = _batch(10)
    mark = g.mark(before)
    g._refetch({P0})  # an aborted transaction: P0 is read again from 10
    assert g.consumer.seeks == [(P0, 10)]
    assert g.refresh(before, mark) == {P1: before[P1]}
    after = _batch(10)  # fetched after the seek: nothing stale in it
    assert g.refresh(after, g.mark(after)) == after
