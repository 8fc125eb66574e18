"""Fault injection, the way Kafka's own transaction system tests go about it: workers as real
processes against a real broker, real signals, and an independent checker that reads all three
outputs with read_committed and compares them with the inputs.

At-least-once must lose nothing; exactly-once must also duplicate nothing. Every scenario
adds a row to reliability.md in $LOGIT_ROUTER_TEST_OUT (see conftest.py), the source of
docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.helpers import (
    Audit,
    audit,
    committed_total,
    create_all,
    make_settings,
    read_outputs,
    start_worker,
    stuck_worker_log,
    wait_for_progress,
    wait_until_committed,
    worker_log,
    write_config,
)
from worker.core.settings import Settings
from worker.devkit import traffic
from worker.devkit.broker import Broker, start_broker
from worker.stream import admin

pytestmark = pytest.mark.integration

GUARANTEES = pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
EVENTS = int(os.environ.get("LOGIT_ROUTER_FAULT_EVENTS", "100000"))
CHURN_S = float(os.environ.get("LOGIT_ROUTER_CHURN_SECONDS", "120"))
# Short session timeouts, so the group notices a killed or frozen worker within seconds.
FAST_GROUP = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000}


def fault_settings(bootstrap: str, uid: str, guarantee: str, **kafka: Any) -> Settings:
    return make_settings(
        bootstrap,
        uid,
        kafka={**FAST_GROUP, **kafka},
        # A transaction stuck on a broker that went away ends the worker after this long
        # (exit 1, a restart resumes): 15 s rather than the default 60 s keeps the test short.
        processing={
            "guarantee": guarantee,
            "max_batch_records": 500,
            "transaction_timeout_ms": 15_000,
        },
    )


async def publish(settings: Settings, total: int, seed: int = 0) -> None:
    topics = sorted(settings.topics)
    for n, topic in enumerate(topics):
        events = traffic.synthetic(total // len(topics), seed=seed + n, malformed_rate=0.01)
        await traffic.produce(settings.kafka.bootstrap_servers, topic, events)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 45) -> int:
    """Signal a worker and wait: within the drain bound (10 s) plus closing the clients."""
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)


def check(report: Audit, guarantee: str, expected_events: int) -> None:
    assert report.events == expected_events
    assert report.lost == 0, report
    assert report.order_violations == 0, report
    if guarantee == "exactly_once":
        assert report.duplicated == 0, report
        assert report.outputs == report.events


def row(
    scenario: str, guarantee: str, report: Audit, faults: str, recovery: float
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "guarantee": guarantee,
        "events": report.events,
        "faults": faults,
        "lost": report.lost,
        "duplicated": report.duplicated,
        "order_violations": report.order_violations,
        "recovery_s": round(recovery, 1),
    }


async def recovered_after(settings: Settings, since: float) -> float:
    """Seconds from ``since`` until the group commits past what it had then."""
    before, _ = await committed_total(settings)
    return await wait_for_progress(settings, before + 1, timeout_s=120) - since


async def produce_steadily(settings: Settings, stop_event: asyncio.Event, rate: int) -> int:
    """``rate`` events a second per input topic until stopped; return how many were sent."""
    sent = 0
    batch = 0
    while not stop_event.is_set():
        started = time.monotonic()
        for n, topic in enumerate(sorted(settings.topics)):
            events = traffic.synthetic(rate // 5, seed=batch * 10 + n, malformed_rate=0.01)
            sent += await traffic.produce(settings.kafka.bootstrap_servers, topic, events)
        batch += 1
        await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
    return sent


@GUARANTEES
async def test_sigkill_the_worker_three_times(
    bootstrap: str, uid: str, tmp_path: Path, guarantee: str, reliability: list[dict[str, Any]]
) -> None:
    settings = fault_settings(bootstrap, uid, guarantee)
    await create_all(settings)
    await publish(settings, EVENTS)
    config = write_config(settings, tmp_path / "w.toml")
    # Live traffic on top of the backlog: the worker is never out of work when it is killed
    # or restarted, however fast it drains the backlog (a compiled worker used to finish all
    # 100,000 between two polls, and then there was nothing to recover to).
    halt = asyncio.Event()
    producer = asyncio.create_task(produce_steadily(settings, halt, rate=500))
    recoveries = []
    killed_at: float | None = None
    for fraction in (0.2, 0.45, 0.7):
        proc = start_worker(config)
        if killed_at is not None:
            recoveries.append(await recovered_after(settings, killed_at))
        await wait_for_progress(settings, int(EVENTS * fraction), timeout_s=180)
        proc.kill()  # SIGKILL: no drain, no commit, no goodbye to the group
        proc.wait(30)
        killed_at = time.monotonic()
    proc = start_worker(config)
    assert killed_at is not None
    recoveries.append(await recovered_after(settings, killed_at))
    halt.set()
    sent = await producer
    await wait_until_committed(settings, timeout_s=300)
    assert stop(proc) == 0, worker_log(config)
    report = await audit(settings)
    reliability.append(row("SIGKILL worker x3", guarantee, report, "3 kills", max(recoveries)))
    check(report, guarantee, EVENTS + sent)


@pytest.fixture
def own_broker() -> Iterator[Broker]:
    """A broker of this test's own, since the test kills it."""
    broker = start_broker(auto_create_topics=False)
    try:
        yield broker
    finally:
        broker.stop()


@GUARANTEES
async def test_sigkill_the_broker_and_restart_it(
    own_broker: Broker, uid: str, tmp_path: Path, guarantee: str, reliability: list[dict[str, Any]]
) -> None:
    if own_broker.source != "local":
        pytest.fail("this test kills and restarts the broker process: it needs the local broker")
    # Its own deadline comes before pytest's timeout, so a stuck run fails with both logs.
    deadline = time.monotonic() + 240
    # Enough events that the worker (17,000 events/s on this machine) is still busy when the
    # broker dies: the kill comes a second or so after a tenth is committed.
    total = EVENTS
    settings = fault_settings(own_broker.bootstrap_servers, uid, guarantee, connect_timeout_s=60)
    await create_all(settings)
    await publish(settings, total)
    config = write_config(settings, tmp_path / "w.toml")
    proc = start_worker(config)
    await wait_for_progress(settings, total // 10, timeout_s=120)
    before, end = await committed_total(settings)
    assert before < end, "the worker finished before the broker was killed: publish more"
    own_broker.kill()
    outage = time.monotonic()
    await asyncio.sleep(3)  # the outage itself: a fault parameter, not a race being papered over
    await asyncio.to_thread(own_broker.restart)
    recovery: float | None = None
    restarts = 0
    while True:
        done, end = await asyncio.wait_for(committed_total(settings), 60)
        if recovery is None and done > before:
            recovery = time.monotonic() - outage
        if done >= end:
            break
        if proc.poll() is not None:  # it gave up: it must say why, and a new one carries on
            assert proc.returncode != 0
            assert "Traceback" not in worker_log(config)
            proc = start_worker(config)
            restarts += 1
        assert time.monotonic() < deadline, (
            f"stuck at {done}/{end}, {restarts} worker restarts\n"
            f"worker log:\n{stuck_worker_log(proc, config)}\nbroker log:\n{own_broker.log_tail(60)}"
        )
        await asyncio.sleep(0.2)
    assert recovery is not None
    # A transaction whose outcome the restart hid from the client cannot drain: exit 1, one
    # line saying so, is right then (its offsets are safe: the checker below counts them).
    code = stop(proc)
    log = worker_log(config)
    assert code == 0 or (code == 1 and "did not finish within" in log), log
    assert "Traceback" not in log
    report = await audit(settings)
    faults = f"broker SIGKILL + restart, {restarts} worker restarts"
    reliability.append(row("SIGKILL broker", guarantee, report, faults, recovery))
    check(report, guarantee, total)


async def test_three_workers_with_one_restarting_every_few_seconds(
    bootstrap: str, tmp_path: Path, reliability: list[dict[str, Any]]
) -> None:
    """Both guarantees churn side by side, each in its own topics and group, in the same two
    minutes (the load is light: 400 events/s per input topic each)."""
    names = ["at_least_once", "exactly_once"]
    runs = [_churn(bootstrap, uuid.uuid4().hex[:10], tmp_path / g, g) for g in names]
    for report, restarts, sent, guarantee in await asyncio.gather(*runs):
        faults = f"{restarts} stop/starts in {CHURN_S:g}s"
        reliability.append(row("3 workers, churn", guarantee, report, faults, 0.0))
        check(report, guarantee, sent)


async def _churn(
    bootstrap: str, uid: str, tmp_path: Path, guarantee: str
) -> tuple[Audit, int, int, str]:
    """Three workers, one stopped and started every few seconds for ``CHURN_S``, under live
    traffic; then every input committed. Return the audit, the restarts and the events sent."""
    settings = fault_settings(bootstrap, uid, guarantee)
    await create_all(settings)
    await asyncio.to_thread(tmp_path.mkdir)
    configs = [write_config(settings, tmp_path / f"w{i}.toml") for i in range(3)]
    procs = [start_worker(c) for c in configs]
    halt = asyncio.Event()
    producer = asyncio.create_task(produce_steadily(settings, halt, rate=400))
    progress = []
    restarts = 0
    started = time.monotonic()
    while time.monotonic() - started < CHURN_S:
        await asyncio.sleep(4)  # the churn period: how often a worker leaves and comes back
        i = restarts % 3
        assert await asyncio.to_thread(stop, procs[i]) == 0, worker_log(configs[i])
        procs[i] = start_worker(configs[i])
        restarts += 1
        progress.append((await committed_total(settings))[0])
    halt.set()
    sent = await producer
    await wait_until_committed(settings, timeout_s=120)
    for proc, config in zip(procs, configs, strict=True):
        assert await asyncio.to_thread(stop, proc) == 0, worker_log(config)
    # Progress continued through the churn: the committed count kept growing.
    assert all(b > a for a, b in zip(progress[::3], progress[3::3], strict=False)), progress
    return await audit(settings), restarts, sent, guarantee


@GUARANTEES
async def test_a_frozen_zombie_is_fenced(
    bootstrap: str, uid: str, tmp_path: Path, guarantee: str, reliability: list[dict[str, Any]]
) -> None:
    settings = fault_settings(bootstrap, uid, guarantee)
    await create_all(settings)
    configs = [write_config(settings, tmp_path / f"w{i}.toml") for i in range(2)]
    zombie, survivor = (start_worker(c) for c in configs)
    halt = asyncio.Event()
    producer = asyncio.create_task(produce_steadily(settings, halt, rate=1000))
    await wait_for_progress(settings, 2_000, timeout_s=120)
    zombie.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    # The group moves on: every partition, the zombie's too, is committed past where it was.
    kafka = settings.kafka
    ends = await admin.end_offsets(kafka, settings.topics)
    at_freeze = await admin.wait_for_commits(kafka, kafka.group_id, ends, 0)
    targets = {tp: off + 1 for tp, off in at_freeze.items()}
    moved = await admin.wait_for_commits(kafka, kafka.group_id, targets, timeout_s=120)
    assert all(moved[tp] >= t for tp, t in targets.items()), "the group did not move on"
    recovery = time.monotonic() - frozen
    # Stay frozen well past the session timeout before waking with the batch in hand.
    await asyncio.sleep(max(0.0, 8 - (time.monotonic() - frozen)))
    zombie.send_signal(signal.SIGCONT)
    await wait_for_progress(settings, (await committed_total(settings))[0] + 2_000, 120)
    halt.set()
    sent = await producer
    await wait_until_committed(settings, timeout_s=300)
    for proc, config in ((zombie, configs[0]), (survivor, configs[1])):
        assert await asyncio.to_thread(stop, proc) == 0, worker_log(config)
    report = await audit(settings)
    reliability.append(row("SIGSTOP zombie", guarantee, report, "1 freeze > session", recovery))
    check(report, guarantee, sent)


@GUARANTEES
async def test_50000_events_of_one_key_keep_their_order(
    bootstrap: str, uid: str, tmp_path: Path, guarantee: str, reliability: list[dict[str, Any]]
) -> None:
    settings = fault_settings(bootstrap, uid, guarantee)
    await create_all(settings, partitions=1)
    topic = sorted(settings.topics)[0]
    events = [e._replace(key=b"one-key") for e in traffic.synthetic(50_000, seed=5)]
    await traffic.produce(settings.kafka.bootstrap_servers, topic, events)
    config = write_config(settings, tmp_path / "w.toml")
    proc = start_worker(config)
    await wait_until_committed(settings, timeout_s=300)
    assert stop(proc) == 0, worker_log(config)
    outputs = await read_outputs(settings)
    # Each output topic holds its share of the key in one partition, in input order.
    for recs in (outputs.routed, outputs.escalated):
        assert len({r.partition for r in recs}) == 1
        offsets = [orjson.loads(r.value)["source"]["offset"] for r in recs]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    dead = [int(dict(r.headers)["dlq.source.offset"]) for r in outputs.dead]
    assert dead == sorted(dead)
    report = await audit(settings)
    reliability.append(row("50,000 events, one key", guarantee, report, "none", 0.0))
    check(report, guarantee, 50_000)
