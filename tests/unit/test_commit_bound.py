"""At-least-once gives an offset commit as long as it gives the brokers to answer
(``kafka.connect_timeout_s``): aiokafka retries a commit for as long as the coordinator cannot
be found, and a worker waiting on it would hold its partitions without processing them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from prometheus_client import CollectorRegistry

from tests.consumed import Consumed
from worker.core.records import Router
from worker.core.settings import Settings
from worker.observability.metrics import Metrics
from worker.stream.at_least_once import AtLeastOnce
from worker.stream.connections import FatalError
from worker.stream.limits import Fitter

TP = TopicPartition("in", 0)


class _Consumer:
    def __init__(self, commit: Any) -> None:
        self.commit = commit


def _guarantee(commit: Any, registry: CollectorRegistry | None = None) -> AtLeastOnce:
    settings = Settings(topics={"in": {}}, kafka={"connect_timeout_s": 0.5})
    metrics = Metrics(settings, registry or CollectorRegistry())
    g = AtLeastOnce(settings, metrics, Fitter(Router(settings), settings.kafka, {}))
    g.consumer = _Consumer(commit)
    return g


def _batch() -> dict[TopicPartition, list[Consumed]]:
    return {TP: [Consumed(TP.topic, TP.partition, o, 0, None, b"{}", []) for o in (7, 8)]}


async def test_a_commit_that_never_finishes_ends_the_worker_after_the_connect_timeout() -> None:
    async def never(offsets: Any) -> None:
        await asyncio.Event().wait()

    started = time.monotonic()
    with pytest.raises(FatalError, match=r"offset commit did not finish within 0.5s"):
        await _guarantee(never)._commit(_batch())
    assert 0.5 <= time.monotonic() - started < 5


async def test_a_commit_within_the_bound_commits_past_the_last_record() -> None:
    seen: list[Any] = []

    async def slow(offsets: Any) -> None:
        await asyncio.sleep(0.2)
        seen.append(offsets)

    await _guarantee(slow)._commit(_batch())
    assert [{tp: o.offset for tp, o in offsets.items()} for offsets in seen] == [{TP: 9}]


async def test_a_refused_commit_is_counted_and_left_for_redelivery() -> None:
    async def refused(offsets: Any) -> None:
        raise CommitFailedError("the group rebalanced")

    registry = CollectorRegistry()
    await _guarantee(refused, registry)._commit(_batch())
    assert registry.get_sample_value("logit_router_commit_failures_total") == 1
