"""Clients against brokers that cannot be reached: a start (``start_within``) is retried up to
the connect timeout, with a last try at the deadline, and the client closed whatever ends the
tries; a consumer's stop (``stop_consumer``) ends a shutdown even when aiokafka's stop raises
its fetch tasks' cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.errors import KafkaConnectionError

from worker.core.kafka_settings import KafkaSettings
from worker.stream.connections import FatalError, start_within, stop_consumer

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1", connect_timeout_s=1.0)


class Unreachable:
    """A client whose brokers never answer: each start fails at once, or never returns."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.tries: list[float] = []
        self.tried = asyncio.Event()
        self.stopped = False

    async def start(self) -> None:
        self.tries.append(time.monotonic())
        self.tried.set()
        if self.hang:
            await asyncio.Event().wait()
        raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")

    async def stop(self) -> None:
        self.stopped = True


async def test_the_last_try_is_at_the_connect_timeout_not_before() -> None:
    client = Unreachable()
    began = time.monotonic()
    with pytest.raises(FatalError, match=r"within 1s"):
        await start_within(client, KAFKA, "test client")
    given = client.tries[-1] - began
    assert 0.95 <= given <= 1.5, client.tries  # backoff 0.2, 0.4, then what is left of 1 s
    assert len(client.tries) >= 4
    assert client.stopped


async def test_a_client_whose_start_is_cancelled_is_closed() -> None:
    client = Unreachable(hang=True)
    starting = asyncio.create_task(start_within(client, KAFKA, "test client"))
    await client.tried.wait()
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert client.stopped


class StopRaisingItsTasksCancellation:
    """aiokafka's consumer when its fetch task was waiting out a retry (aio-libs/aiokafka#647)."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()

    async def stop(self) -> None:
        self.stopping.set()
        fetching = asyncio.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        fetching.cancel()
        await fetching  # as aiokafka's Fetcher.close awaits a task it cancelled


async def test_a_consumer_stop_raising_its_own_tasks_cancellation_still_ends() -> None:
    consumer = StopRaisingItsTasksCancellation()
    await stop_consumer(consumer)
    assert consumer.stopping.is_set()


async def test_a_cancelled_shutdown_is_still_cancelled() -> None:
    consumer = StopRaisingItsTasksCancellation()
    stopping = asyncio.create_task(stop_consumer(consumer))
    await consumer.stopping.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
