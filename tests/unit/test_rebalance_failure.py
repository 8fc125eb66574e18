"""A rebalance callback that fails ends the worker (exit 1, one line) instead of leaving the
partitions unreadied: aiokafka only logs what its listener raises, and under exactly-once a
partition taken up without its producer has its records dropped at every fetch, silently."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from worker.core.settings import Settings
from worker.observability.metrics import Metrics
from worker.stream.connections import FatalError
from worker.stream.pipeline import Worker, _Listener

P0 = TopicPartition("in", 0)


class NothingFetched:
    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        return {}


def worker(guarantee: str) -> Worker:
    settings = Settings(topics={"in": {}}, processing={"guarantee": guarantee})
    return Worker(settings, Metrics(settings, CollectorRegistry()))


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_partitions_that_could_not_be_taken_up_end_the_worker(
    monkeypatch: pytest.MonkeyPatch, guarantee: str
) -> None:
    w = worker(guarantee)

    async def unreachable(assigned: set[TopicPartition]) -> None:
        raise FatalError("cannot reach Kafka at 127.0.0.1:1 within 3s (producer of in[0])")

    monkeypatch.setattr(w.guarantee, "assign", unreachable)
    await _Listener(w).on_partitions_assigned({P0})  # as aiokafka calls it: it must not raise
    assert not w.ready  # nothing taken up
    with pytest.raises(FatalError, match=r"taking up partitions in\[0\] failed: cannot reach"):
        await asyncio.wait_for(w._loop(NothingFetched(), asyncio.Event()), 5)


async def test_a_failed_hand_over_ends_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    w = worker("exactly_once")

    async def broken(revoked: set[TopicPartition]) -> None:
        raise RuntimeError("commit of in[0] lost")

    monkeypatch.setattr(w.guarantee, "revoke", broken)
    await _Listener(w).on_partitions_revoked({P0})
    with pytest.raises(FatalError, match=r"handing over partitions in\[0\] failed: RuntimeError"):
        await asyncio.wait_for(w._loop(NothingFetched(), asyncio.Event()), 5)
