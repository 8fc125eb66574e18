"""``kill -USR1``: every thread's and every task's stack, with where each one waits."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import pytest

from worker.observability import stacks


async def _waits_for_its_event(event: asyncio.Event) -> None:
    await event.wait()


async def test_the_dump_names_each_task_where_it_waits_and_each_thread() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(_waits_for_its_event(event), name="the-waiter")
    parked = threading.Event()
    thread = threading.Thread(target=parked.wait, name="a-parked-thread")
    thread.start()
    await asyncio.sleep(0)
    try:
        text = stacks.dump()
    finally:
        parked.set()
        event.set()
        await task
        thread.join()
    waiter = text.partition("--- task the-waiter")[2].partition("--- ")[0]
    assert "_waits_for_its_event" in waiter
    assert "await event.wait()" in waiter
    assert "--- thread a-parked-thread" in text
    assert "--- thread MainThread" in text


async def test_sigusr1_logs_the_dump_from_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    stacks.install_dump_handler()
    try:
        with caplog.at_level(logging.WARNING, logger=stacks.__name__):
            os.kill(os.getpid(), stacks.DUMP_SIGNAL)
            for _ in range(100):
                if caplog.records:
                    break
                await asyncio.sleep(0.01)
    finally:
        loop.remove_signal_handler(stacks.DUMP_SIGNAL)
    (record,) = caplog.records
    assert record.getMessage().startswith("SIGUSR1: stacks of every thread and task")
    assert "test_sigusr1_logs_the_dump_from_the_loop" in record.getMessage()
