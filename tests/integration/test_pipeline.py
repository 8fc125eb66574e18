"""The worker on a real broker: every input offset ends in exactly one output, as decided by
the core, in order, with keys and headers kept; stops and restarts lose nothing."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from tests.integration.helpers import (
    create_all,
    make_settings,
    read_inputs,
    read_outputs,
    running_worker,
    start_worker,
    wait_until_committed,
    worker_log,
    write_config,
)
from tests.schemas import check_output
from worker import __version__
from worker.core.events import EventError, decode_event
from worker.core.records import DLQ_PREFIX
from worker.core.routing import ScoringError, route
from worker.core.settings import Settings, load_settings
from worker.devkit import traffic
from worker.stream import admin
from worker.stream.exactly_once import ExactlyOnce
from worker.stream.service import serve
from worker.stream.transactions import Outcome, PartitionProducers

pytestmark = pytest.mark.integration

# Which transactions (counted from 1, over all partitions) the abort test fails on purpose.
# Each is always reached: the nine partitions take at least nine transactions and each abort
# adds a retry, so the first three aborts leave at least twelve, however the fetches batch.
ABORT_CALLS = {2, 5, 9, 12}

DLQ_HEADERS = {
    DLQ_PREFIX + name
    for name in (
        "reason",
        "error_class",
        "message",
        "source.topic",
        "source.partition",
        "source.offset",
        "source.timestamp",
        "worker_version",
    )
}


async def publish_mixed(settings: Settings, per_topic: int, seed: int = 0) -> int:
    sent = 0
    for n, topic in enumerate(sorted(settings.topics)):
        classes = 3 if topic.startswith("support") else 2
        events = traffic.synthetic(per_topic, seed=seed + n, classes=classes, malformed_rate=0.05)
        sent += await traffic.produce(settings.kafka.bootstrap_servers, topic, events)
    return sent


def expected(settings: Settings, record: Any) -> tuple[str, str | None, str | None]:
    """What the core says about an input record: (decision, reason or dlq reason, label)."""
    limits = settings.limits
    try:
        event = decode_event(
            record.value, max_bytes=limits.max_event_bytes, max_classes=limits.max_classes
        )
        policy = settings.policies()[record.topic]
        r = route(event.logit_values(), policy, event.labels)
    except (EventError, ScoringError) as exc:
        return "dead_letter", exc.code, None
    return r.decision, r.reason, r.label


def check_outputs(
    settings: Settings, inputs: list[Any], outputs: Any, *, exactly_once: bool
) -> None:
    by_source = outputs.by_source()
    for rec in inputs:
        got = by_source.get((rec.topic, rec.partition, rec.offset), [])
        assert got, f"input {rec.topic}[{rec.partition}]@{rec.offset} has no output"
        if exactly_once:
            assert len(got) == 1, f"input {rec.topic}[{rec.partition}]@{rec.offset}: {len(got)}"
        kind, out = got[0]
        decision, reason, label = expected(settings, rec)
        assert kind == decision
        assert out.key == rec.key
        assert list(out.headers)[: len(rec.headers)] == list(rec.headers)
        if kind == "dead_letter":
            headers = dict(out.headers)
            assert out.value == rec.value  # byte for byte
            assert DLQ_HEADERS <= set(headers)
            assert headers[DLQ_PREFIX + "reason"].decode() == reason
            assert headers[DLQ_PREFIX + "worker_version"].decode() == __version__
            assert len(headers[DLQ_PREFIX + "message"]) <= 1024
        else:
            doc = orjson.loads(out.value)
            check_output(doc)
            assert (doc["decision"], doc["reason"], doc["label"]) == (decision, reason, label)
            sent = orjson.loads(rec.value)
            assert {k: doc[k] for k in sent} == sent  # the input fields, carried unchanged
            event = decode_event(rec.value, max_bytes=10**7, max_classes=10**4)
            want = route(event.logit_values(), settings.policies()[rec.topic]).scores
            err = max(
                abs(a - b) for a, b in zip(doc["probabilities"], want.probabilities, strict=True)
            )
            assert err <= 1e-14
            assert doc["config_version"] == settings.config_version
            assert doc["source"]["timestamp"] == rec.timestamp
    assert sum(len(v) for v in by_source.values()) >= len(inputs)
    if exactly_once:
        total = len(outputs.routed) + len(outputs.escalated) + len(outputs.dead)
        assert total == len(inputs)


def check_order(outputs: Any) -> None:
    """Within each output partition, outputs of one input partition keep their input order."""
    for kind, recs in (("routed", outputs.routed), ("escalated", outputs.escalated)):
        last: dict[tuple[int, str, int], int] = defaultdict(lambda: -1)
        for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
            src = orjson.loads(r.value)["source"]
            k = (r.partition, src["topic"], src["partition"])
            assert src["offset"] > last[k], f"{kind}: out of order at {r.partition}@{r.offset}"
            last[k] = src["offset"]


GUARANTEES = pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])


@GUARANTEES
async def test_10000_mixed_events_each_end_in_exactly_one_output(
    bootstrap: str, uid: str, guarantee: str
) -> None:
    settings = make_settings(bootstrap, uid, processing={"guarantee": guarantee})
    await create_all(settings)
    sent = await publish_mixed(settings, 5_000)
    assert sent == 10_000
    async with running_worker(settings):
        await wait_until_committed(settings)
    inputs = await read_inputs(settings)
    assert len(inputs) == 10_000
    outputs = await read_outputs(settings)
    check_outputs(settings, inputs, outputs, exactly_once=True)
    check_order(outputs)
    assert outputs.dead and outputs.escalated and outputs.routed
    reasons = {dict(r.headers)[DLQ_PREFIX + "reason"].decode() for r in outputs.dead}
    assert {"not_json", "non_finite_number", "wrong_type", "not_utf8"} <= reasons


async def _nine_partitions_exactly_once(
    bootstrap: str, uid: str, *, per_topic: int, seed: int
) -> tuple[Settings, int]:
    """Exactly-once over three topics of three partitions (100, 2 and 3 classes), full-size
    batches, ``per_topic`` events published to each; returns the settings and the count."""
    wide = {f"wide-{uid}": {"temperature": 1.0, "min_margin": 0.1}}
    settings = make_settings(
        bootstrap,
        uid,
        topics=wide,
        processing={"guarantee": "exactly_once", "max_batch_records": 1000},
    )
    await create_all(settings)
    sent = 0
    for topic, classes in zip(sorted(settings.topics), (100, 2, 3), strict=True):
        events = traffic.synthetic(per_topic, seed=seed, classes=classes, malformed_rate=0.02)
        sent += await traffic.produce(bootstrap, topic, events)
    return settings, sent


async def test_exactly_once_from_a_cold_start_processes_each_input_once(
    bootstrap: str, uid: str
) -> None:
    """Full-size batches over nine partitions, so that the first fetch returns records before
    the assignment re-positions the partitions (fetched again) while the first batch is still
    committing: each input must still be in exactly one committed output."""
    settings, sent = await _nine_partitions_exactly_once(bootstrap, uid, per_topic=700, seed=1)
    async with running_worker(settings):
        await wait_until_committed(settings)
    inputs = await read_inputs(settings)
    assert len(inputs) == sent == 2100
    check_outputs(settings, inputs, await read_outputs(settings), exactly_once=True)


@pytest.mark.parametrize(
    ("guarantee", "bound"), [("exactly_once", 10_000), ("at_least_once", 2_000)]
)
async def test_a_backlog_is_taken_in_batches_up_to_the_guarantees_default(
    bootstrap: str, uid: str, guarantee: str, bound: int
) -> None:
    """With ``max_batch_records`` unset, a batch holds up to 10,000 records under exactly-once
    (each batch pays a transaction per partition; larger ones amortise it) and up to 2,000
    under at-least-once: a backlog goes through in batches past 1,000 and none past the
    bound, each input in an output (exactly one committed output under exactly-once)."""
    exactly_once = guarantee == "exactly_once"
    settings = make_settings(
        bootstrap, uid, processing={"guarantee": guarantee, "max_batch_records": None}
    )
    assert settings.processing.batch_records == bound
    await create_all(settings, partitions=1)
    sent = 0
    for n, topic in enumerate(sorted(settings.topics)):
        sent += await traffic.produce(bootstrap, topic, traffic.synthetic(8_000, seed=40 + n))
    registry = CollectorRegistry()
    async with running_worker(settings, registry):
        await wait_until_committed(settings)

    def batches(up_to: str | None = None) -> float:
        if up_to is None:
            value = registry.get_sample_value("logit_router_batch_records_count")
        else:
            value = registry.get_sample_value("logit_router_batch_records_bucket", {"le": up_to})
        assert value is not None
        return value

    assert batches() > batches("1000.0"), "no batch held more than 1,000 records"
    assert batches() == batches(f"{bound}.0"), f"a batch held more than {bound:,} records"
    inputs = await read_inputs(settings)
    assert len(inputs) == sent == 16_000
    check_outputs(settings, inputs, await read_outputs(settings), exactly_once=exactly_once)


async def test_exactly_once_overlaps_batches_but_never_a_partitions_transactions(
    bootstrap: str, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's transactions may run while the batch before it is still committing, but a
    partition's transactions never run at once and commit in offset order. Each input is
    still in exactly one committed output."""
    settings, sent = await _nine_partitions_exactly_once(bootstrap, uid, per_topic=1500, seed=3)
    batches_open: list[int] = []  # batches with a transaction running, at each start
    open_batches = 0
    running: set[TopicPartition] = set()
    overlapping: list[TopicPartition] = []
    committed: dict[TopicPartition, list[int]] = defaultdict(list)
    real_transact = ExactlyOnce._transact
    real_commit = PartitionProducers.commit_batch

    async def transact(self: ExactlyOnce, *args: Any) -> Any:
        nonlocal open_batches
        open_batches += 1
        batches_open.append(open_batches)
        try:
            return await real_transact(self, *args)
        finally:
            open_batches -= 1

    async def commit_batch(self: PartitionProducers, tp: TopicPartition, *args: Any) -> Any:
        if tp in running:
            overlapping.append(tp)
        running.add(tp)
        try:
            outcome = await real_commit(self, tp, *args)
        finally:
            running.discard(tp)
        if outcome == Outcome.COMMITTED:
            committed[tp].append(args[-1])  # the next offset
        return outcome

    monkeypatch.setattr(ExactlyOnce, "_transact", transact)
    monkeypatch.setattr(PartitionProducers, "commit_batch", commit_batch)
    async with running_worker(settings):
        await wait_until_committed(settings)
    assert max(batches_open) >= 2, "no batch's transactions ever overlapped the batch before"
    assert not overlapping, f"a partition's transactions ran at once: {overlapping[:3]}"
    assert all(offsets == sorted(set(offsets)) for offsets in committed.values()), committed
    inputs = await read_inputs(settings)
    assert len(inputs) == sent == 4500
    check_outputs(settings, inputs, await read_outputs(settings), exactly_once=True)


class _OffsetsFail:
    """A transactional producer whose ``send_offsets_to_transaction`` fails: the worker's own
    transaction code sends the outputs, then the failure makes it abort (on the broker)."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    async def send_offsets_to_transaction(self, *args: Any, **kwargs: Any) -> None:
        raise KafkaError("injected: abort this transaction")


def _inject_aborts(
    monkeypatch: pytest.MonkeyPatch, abort_this: Callable[[TopicPartition], bool]
) -> list[TopicPartition]:
    """Make the transactions ``abort_this()`` picks fail after sending their outputs: the
    failure is ours, the abort is the broker's. Returns the partitions aborted, in order."""
    real = PartitionProducers._transaction
    aborted: list[TopicPartition] = []

    async def transaction(
        self: PartitionProducers, producer: Any, tp: TopicPartition, outputs: Any, nxt: int
    ) -> None:
        if abort_this(tp):
            aborted.append(tp)
            producer = _OffsetsFail(producer)
        await real(self, producer, tp, outputs, nxt)

    monkeypatch.setattr(PartitionProducers, "_transaction", transaction)
    return aborted


async def test_exactly_once_aborted_transactions_lose_nothing_while_the_next_batch_waits(
    bootstrap: str, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real aborts on a real broker, while the next batch is already fetched and routed: the
    partitions they drop from that batch must be fetched again, none of their records lost.

    The injected failure is ours (a ``KafkaError`` raised inside the transaction after its
    outputs were sent), the abort is the broker's: its outputs are never read_committed.
    """
    settings, sent = await _nine_partitions_exactly_once(bootstrap, uid, per_topic=1500, seed=2)
    calls: list[int] = []

    def nth_call(tp: TopicPartition) -> bool:
        calls.append(1)
        return len(calls) in ABORT_CALLS

    aborted = _inject_aborts(monkeypatch, nth_call)
    async with running_worker(settings):
        await wait_until_committed(settings)
    assert len(aborted) == len(ABORT_CALLS)  # the premise: every injected abort happened
    inputs = await read_inputs(settings)
    assert len(inputs) == sent == 4500
    check_outputs(settings, inputs, await read_outputs(settings), exactly_once=True)


async def test_exactly_once_an_abort_while_caught_up_loses_nothing(
    bootstrap: str, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with nothing left to read gets new events, and their transaction aborts. The
    abort re-positions the partitions while the loop is already waiting for the next fetch,
    which then returns those same records again: they must be processed once, not skipped
    as covered by the (aborted) batch still in flight."""
    settings = make_settings(bootstrap, uid, processing={"guarantee": "exactly_once"})
    await create_all(settings)
    armed: list[bool] = []

    def once_armed(tp: TopicPartition) -> bool:
        if not armed:
            return False
        armed.clear()
        return True

    aborted = _inject_aborts(monkeypatch, once_armed)
    topic = sorted(settings.topics)[0]
    async with running_worker(settings):
        sent = await traffic.produce(bootstrap, topic, traffic.synthetic(20, seed=3))
        await wait_until_committed(settings)  # started, assigned, caught up
        armed.append(True)
        sent += await traffic.produce(bootstrap, topic, traffic.synthetic(30, seed=4))
        await wait_until_committed(settings, timeout_s=30)
    assert len(aborted) == 1  # the premise: the abort happened
    inputs = await read_inputs(settings)
    assert len(inputs) == sent == 50
    check_outputs(settings, inputs, await read_outputs(settings), exactly_once=True)


async def test_exactly_once_a_partition_that_keeps_aborting_stops_the_worker_while_others_commit(
    bootstrap: str, uid: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One partition's transactions always abort while the other partitions keep committing:
    the worker gives up after ``kafka.connect_timeout_s`` with one line naming the partition,
    instead of retrying it for ever (the others' commits must not reset its clock)."""
    settings = make_settings(
        bootstrap,
        uid,
        kafka={"connect_timeout_s": 4},
        processing={"guarantee": "exactly_once", "max_batch_records": 100},
    )
    await create_all(settings)
    support, fraud = sorted(settings.topics, key=lambda t: not t.startswith("support"))
    stuck = TopicPartition(support, 0)
    aborted = _inject_aborts(monkeypatch, lambda tp: tp == stuck)
    await traffic.produce(bootstrap, support, traffic.synthetic(60, seed=5))

    async def trickle() -> None:  # fresh work on the other topic, batch after batch
        for i in range(400):
            await traffic.produce(bootstrap, fraud, traffic.synthetic(5, seed=100 + i))
            await asyncio.sleep(0.1)

    feeding = asyncio.create_task(trickle())
    try:
        started = time.monotonic()
        code = await asyncio.wait_for(serve(settings, asyncio.Event()), timeout=90)
        took = time.monotonic() - started
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
    assert code == 1
    assert aborted and set(aborted) == {stuck}
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert f"transactions for {support}[0] kept aborting for 4s" in " ".join(errors), errors
    assert took < 60
    outputs = await read_outputs(settings)
    scored = [orjson.loads(o.value)["source"] for o in outputs.routed + outputs.escalated]
    assert any(s["topic"] == fraud for s in scored)  # the others committed meanwhile
    assert not any(s["topic"] == support and s["partition"] == 0 for s in scored)


@GUARANTEES
async def test_one_worker_stops_half_way_another_finishes(
    bootstrap: str, uid: str, guarantee: str
) -> None:
    settings = make_settings(
        bootstrap, uid, processing={"max_batch_records": 50, "guarantee": guarantee}
    )
    await create_all(settings)
    # Enough that the first worker is stopped with work left: each poll of the commits below
    # takes a few hundred ms, during which the worker goes on.
    await publish_mixed(settings, 10_000)
    async with running_worker(settings):
        # Stop once some, but not all, of the work is committed.
        ends = await admin.end_offsets(settings.kafka, settings.topics)
        total = sum(ends.values())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = await admin.wait_for_commits(settings.kafka, settings.kafka.group_id, ends, 0)
            if sum(seen.values()) > 0:
                break
            await asyncio.sleep(0.05)
    seen = await admin.wait_for_commits(settings.kafka, settings.kafka.group_id, ends, 0)
    assert 0 < sum(seen.values()) < total, "the first worker should stop half way"
    async with running_worker(settings):
        await wait_until_committed(settings)
    inputs = await read_inputs(settings)
    outputs = await read_outputs(settings)
    check_outputs(settings, inputs, outputs, exactly_once=guarantee == "exactly_once")
    check_order(outputs)


@GUARANTEES
async def test_sigterm_mid_stream_exits_0_and_loses_nothing_after_a_stack_dump(
    bootstrap: str, uid: str, tmp_path: Path, guarantee: str
) -> None:
    settings = make_settings(bootstrap, uid, processing={"guarantee": guarantee})
    await create_all(settings)
    config = write_config(settings, tmp_path / "w.toml")
    feeding = asyncio.Event()
    feeding.set()

    async def feed() -> None:
        """Traffic until the worker has exited: a fast worker must not have caught up with a
        fixed amount of it before the signal lands."""
        rounds = 0
        while feeding.is_set():
            await publish_mixed(settings, 2_000, seed=10 * rounds)
            rounds += 1

    with start_worker(config) as proc:
        try:
            producing = asyncio.create_task(feed())
            # SIGTERM once the worker has committed something, while traffic still flows.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                ends = await admin.end_offsets(settings.kafka, settings.topics)
                seen = await admin.wait_for_commits(
                    settings.kafka, settings.kafka.group_id, ends, 0
                )
                if sum(seen.values()) > 0:
                    break
                await asyncio.sleep(0.1)
            assert not producing.done(), "traffic should still flow at the signal"
            # SIGUSR1 just before: the stacks are logged and the stop goes on as ever.
            proc.send_signal(signal.SIGUSR1)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            code = await asyncio.to_thread(proc.wait, 30)
            took = time.monotonic() - signalled
        finally:
            feeding.clear()
            await producing
            if proc.poll() is None:
                proc.kill()
    log = worker_log(config)
    assert code == 0, log
    assert took < 10 + 2, f"exit took {took:.1f}s, drain bound is 10s"
    assert "Traceback" not in log
    dumped = log.partition("SIGUSR1: stacks")[2]
    assert "--- thread MainThread" in dumped, log
    assert "--- task" in dumped and "pipeline.py" in dumped, log
    ends = await admin.end_offsets(settings.kafka, settings.topics)
    seen = await admin.wait_for_commits(settings.kafka, settings.kafka.group_id, ends, 0)
    assert sum(seen.values()) < sum(ends.values()), "SIGTERM should land mid-stream"
    # Whatever it committed has its outputs; a second worker does the rest, nothing is lost.
    async with running_worker(settings):
        await wait_until_committed(settings)
    check_outputs(settings, await read_inputs(settings), await read_outputs(settings),
                  exactly_once=guarantee == "exactly_once")  # fmt: skip


async def test_an_environment_override_reaches_a_topic_named_with_capitals_dots_and_dashes(
    bootstrap: str, uid: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"Support.Intents-EU_{uid}"
    settings = make_settings(bootstrap, uid, topics={topic: {"min_margin": 0.1}})
    await create_all(settings)
    config = write_config(settings, tmp_path / "w.toml")
    env = {f"LOGIT_ROUTER_TOPICS__{topic}__MIN_MARGIN": "0.55"}
    # What the worker should make of the file and that variable: the same topics, one changed.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    effective = load_settings(config)
    assert set(effective.topics) == set(settings.topics)
    assert effective.topics[topic].min_margin == 0.55
    events = traffic.synthetic(200, seed=7, classes=2, malformed_rate=0.0)
    sent = await traffic.produce(bootstrap, topic, events)
    with start_worker(config, env) as proc:
        try:
            # A phantom lower-cased topic would not exist: the worker would exit 1 saying so.
            await wait_until_committed(effective, timeout_s=90)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, worker_log(config)
    outputs = await read_outputs(effective)
    docs = [orjson.loads(r.value) for r in (*outputs.routed, *outputs.escalated)]
    assert len(docs) >= sent and not outputs.dead
    assert {d["source"]["topic"] for d in docs} == {topic}
    assert {d["policy"]["min_margin"] for d in docs} == {0.55}
    assert {d["config_version"] for d in docs} == {effective.config_version}
    check_outputs(effective, await read_inputs(effective), outputs, exactly_once=False)


def test_bad_config_exits_before_touching_kafka(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    # Port 9 (discard) on loopback has no Kafka: if the worker tried, it would hang or say so.
    bad.write_text('[kafka]\nbootstrap_servers = "127.0.0.1:9"\n[topics."t"]\ntemperature = -2\n')
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--config", str(bad)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "topics.t.temperature = -2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Kafka" not in proc.stderr  # refused on the config alone, no connection attempted


def test_unreachable_broker_is_fatal_with_a_clear_message(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[kafka]\nbootstrap_servers = "127.0.0.1:9"\nconnect_timeout_s = 2\n'
        '[http]\nenabled = false\n[topics."t"]\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot reach Kafka at 127.0.0.1:9 within 2s" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_topic_is_fatal_and_named(bootstrap: str, uid: str, tmp_path: Path) -> None:
    settings = make_settings(bootstrap, uid)  # topics never created
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--config",
         str(write_config(settings, tmp_path / "c.toml"))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"topics do not exist: dlq-{uid}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_from_the_command_line(kafka_broker: Any) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers}
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--events", "1500"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = orjson.loads(proc.stdout.strip().splitlines()[-1])
    counts = summary["counts"]
    assert set(counts) == {"support.intents", "fraud.scores"}
    total = sum(sum(c.values()) for c in counts.values())
    assert total == summary["published"] == summary["outputs"]
    for c in counts.values():
        assert c["routed"] > 0 and c["escalated"] > 0 and c["dead_letter"] > 0
    lab = summary["lab"]
    assert [round(p, 4) for p in lab["probabilities"]] == [0.6306, 0.3561, 0.0133]
    assert (lab["decision"], lab["label"]) == ("routed", "billing")
    assert math.isclose(lab["margin"], 0.6306 - 0.3561, abs_tol=1e-3)
