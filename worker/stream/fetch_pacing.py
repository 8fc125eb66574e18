"""The fetch following the event loop's load (``worker.core.fetch_pace``), applied to the
consumer once a second by a task on the loop, whose thread's CPU time is the load."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer

from worker.core.fetch_pace import FetchPace
from worker.core.kafka_settings import KafkaSettings
from worker.observability.metrics import Metrics
from worker.stream.connections import set_fetch

log = logging.getLogger(__name__)

PACE_S = 1.0  # one look at the loop's load per second: FetchPace's step is per look


class ThreadLoad:
    """The share of a core the thread that makes it uses, from one reading to the next."""

    def __init__(self) -> None:
        self._cpu, self._wall = time.thread_time(), time.perf_counter()

    def read(self) -> float:
        cpu, wall = time.thread_time(), time.perf_counter()
        share = (cpu - self._cpu) / max(wall - self._wall, 1e-9)
        self._cpu, self._wall = cpu, wall
        return share


async def pace_fetches(
    consumer: AIOKafkaConsumer, kafka: KafkaSettings, metrics: Metrics, *, follow: bool = True
) -> None:
    """Until cancelled: export the loop's load, and, if ``follow``, move the consumer's fetch
    with it."""
    pace = FetchPace(kafka)
    load = ThreadLoad()
    pacing = follow  # and until the consumer turns out to have nowhere to set it
    while True:
        await asyncio.sleep(PACE_S)
        share = load.read()
        metrics.loop_cpu.set(round(share, 3))
        fetch = pace.observe(share) if pacing else None
        if fetch is None:
            continue
        if set_fetch(consumer, *fetch):
            metrics.fetch_min_bytes.set(fetch.min_bytes)
            continue
        pacing = False
        log.warning(
            "this aiokafka has no fetch settings where %s looks for them: fetches stay at "
            "%d bytes or %d ms", __name__, *pace.light,
        )  # fmt: skip
