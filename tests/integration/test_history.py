"""The config history on a real broker: two workers with different configs, one after the other,
then ``config history``, ``config show`` and ``replay --as-published`` through the real command.

A worker with config A routes a first wave of traffic and stops; a worker with config B (another
temperature on the support topic) routes a second wave. Every check is against an independent
computation: ``hashlib`` for the versions, ``worker.core.routing.route`` for the decisions.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiokafka import TopicPartition

from tests.integration.helpers import (
    cli,
    create_all,
    expected_kind,
    expected_outcome,
    lines_of,
    make_settings,
    running_worker,
    wait_until_committed,
    write_config,
)
from worker.core.settings import Settings
from worker.devkit import traffic
from worker.devkit.broker import Broker
from worker.stream import admin, history

pytestmark = pytest.mark.integration

PER_WAVE = 300


@dataclass
class Run:
    a: Settings
    b: Settings
    config_a: Path
    config_b: Path
    wave_1_ends: dict[TopicPartition, int]  # inputs below these offsets were routed by A
    support: str  # the topic whose temperature B changed
    inputs: list[Any]  # of that topic, in (partition, offset) order
    tmp: Path

    def routed_by_a(self, record: Any) -> bool:
        end = self.wave_1_ends[TopicPartition(record.topic, record.partition)]
        return bool(record.offset < end)


async def wave(settings: Settings, seed: int) -> None:
    for n, topic in enumerate(sorted(settings.topics)):
        classes = 3 if topic.startswith("support") else 2
        events = traffic.synthetic(PER_WAVE, seed=seed + n, classes=classes, malformed_rate=0.05)
        await traffic.produce(settings.kafka.bootstrap_servers, topic, list(events))


@pytest_asyncio.fixture(scope="module")
async def run(kafka_broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Run]:
    uid = uuid.uuid4().hex[:10]
    a = make_settings(kafka_broker.bootstrap_servers, uid)
    support = next(t for t in a.topics if t.startswith("support"))
    doc = a.model_dump()
    doc["topics"][support] = {**doc["topics"][support], "temperature": 1.3}
    b = Settings(**doc)
    assert a.config_version != b.config_version
    await create_all(a)
    await wave(a, seed=10)
    async with running_worker(a):
        await wait_until_committed(a)
    ends = await admin.end_offsets(a.kafka, a.topics)
    await wave(b, seed=20)
    async with running_worker(b):
        await wait_until_committed(b)
    tmp = tmp_path_factory.mktemp("history")
    yield Run(
        a,
        b,
        write_config(a, tmp / "a.toml"),
        write_config(b, tmp / "b.toml"),
        ends,
        support,
        sorted(await admin.read_topic(a.kafka, support), key=lambda r: (r.partition, r.offset)),
        tmp,
    )


def sha256(document: bytes) -> str:
    return "sha256:" + hashlib.sha256(document).hexdigest()


def test_the_history_lists_both_versions_oldest_first(run: Run) -> None:
    proc = cli("config", "history", "--config", run.config_b, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = orjson.loads(proc.stdout)
    assert [r["version"] for r in rows] == [run.a.config_version, run.b.config_version]
    assert rows[0]["first_seen_ms"] <= rows[1]["first_seen_ms"]
    for row in rows:
        canonical = orjson.dumps(row["document"], option=orjson.OPT_SORT_KEYS)
        assert sha256(canonical) == row["version"]
    text = cli("config", "history", "--config", run.config_a)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 2
    assert run.a.config_version in lines[0] and f"{run.support} T=0.7" in lines[0]
    assert run.b.config_version in lines[1] and f"{run.support} T=1.3" in lines[1]


@pytest.mark.parametrize("which", ["a", "b"])
def test_config_show_prints_the_document_whose_sha256_is_the_version(run: Run, which: str) -> None:
    settings: Settings = getattr(run, which)
    version = settings.config_version
    proc = cli("config", "show", version, "--config", run.config_b)
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(proc.stdout)
    assert sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)) == version
    assert doc["topics"][run.support]["temperature"] == settings.topics[run.support].temperature
    assert doc["outputs"]["routed"] == settings.outputs.routed
    short = cli("config", "show", version[:19], "--config", run.config_b)
    assert short.returncode == 0 and orjson.loads(short.stdout) == doc


def test_config_show_of_an_unknown_version_is_one_line_and_exit_1(run: Run) -> None:
    unknown = sha256(b"never recorded")
    proc = cli("config", "show", unknown, "--config", run.config_b)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"logit-router config show: {unknown} is not in the config history"
    ]
    bad = cli("config", "show", "4ccbbd5b", "--config", run.config_b)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("config", ["a", "b"])
def test_a_replay_as_published_across_the_change_has_no_differences(run: Run, config: str) -> None:
    out = run.tmp / f"as-published-{config}.jsonl"
    path = getattr(run, f"config_{config}")
    proc = cli("replay", "--topic", run.support, "--as-published", "--config", path,
               "--out", out, "--fail-on-diff")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events, summary = lines_of(out)
    inputs = run.inputs
    assert len(events) == summary["replayed"] == len(inputs) == 2 * PER_WAVE
    assert (summary["different"], summary["missing"], summary["unknown_version"]) == (0, 0, 0)
    assert summary["identical"] == summary["same_bytes"] == len(inputs)
    used = summary["versions_used"]
    assert sum(used.values()) == len(inputs)
    # Every scored event under its own version; a dead letter under a neighbour's.
    for settings, by_it in ((run.a, True), (run.b, False)):
        scored = [r for r in inputs if run.routed_by_a(r) == by_it]
        scored = [r for r in scored if expected_outcome(settings, r)[0] == "scored"]
        assert used[settings.config_version] >= len(scored) > 0
    assert "as published" in proc.stdout
    # Each scored event was re-scored with the version its output names.
    assert all(
        e["config_version"] == e["original"]["config_version"]
        for e in events
        if e["original"]["config_version"] is not None
    )


def test_a_replay_with_config_a_differs_exactly_where_b_decided_otherwise(run: Run) -> None:
    out = run.tmp / "with-a.jsonl"
    proc = cli("replay", "--topic", run.support, "--config", run.config_a, "--out", out)
    assert proc.returncode == 0, proc.stderr
    events, summary = lines_of(out)
    inputs = run.inputs
    want = {
        (r.partition, r.offset): None
        if run.routed_by_a(r)
        else expected_kind(expected_outcome(run.b, r), expected_outcome(run.a, r))
        for r in inputs
    }
    got = {(e["source"]["partition"], e["source"]["offset"]): e["kind"] for e in events}
    assert got == want
    counts = Counter(k for k in want.values() if k is not None)
    assert counts, "the temperature change should alter some of B's decisions"
    assert {k: d["count"] for k, d in summary["differences"].items()} == dict(counts)
    for d in summary["differences"].values():
        assert d["versions"] == [
            {"original": run.b.config_version, "replay": run.a.config_version, "count": d["count"]}
        ]


async def test_a_version_missing_from_the_history_is_reported_not_guessed(run: Run) -> None:
    empty = f"history-empty-{uuid.uuid4().hex[:8]}"
    await history.create_topic(run.b.kafka, empty)
    doc = run.b.model_dump()
    doc["outputs"]["config_history"] = empty
    config = write_config(Settings(**doc), run.tmp / "empty-history.toml")
    out = run.tmp / "unknown.jsonl"
    proc = cli("replay", "--topic", run.support, "--as-published", "--config", config,
               "--out", out, "--fail-on-diff")  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # nothing could be checked
    assert "Traceback" not in proc.stderr
    events, summary = lines_of(out)
    assert summary["unknown_version"] == summary["replayed"] == 2 * PER_WAVE
    assert set(summary["unknown_versions"]) == {run.a.config_version, run.b.config_version}
    assert sum(summary["unknown_versions"].values()) == 2 * PER_WAVE
    assert {e["status"] for e in events} == {"unknown_version"}
    assert f"version unknown    {2 * PER_WAVE}" in proc.stdout


async def test_a_version_already_recorded_is_not_written_again(run: Run) -> None:
    topic = run.a.outputs.config_history
    before = await admin.end_offsets(run.a.kafka, [topic])
    first_seen = [e.first_seen_ms for e in await history.read_history(run.a.kafka, topic)]
    await history.publish(run.a)  # a restart with config A
    assert await admin.end_offsets(run.a.kafka, [topic]) == before
    after = [e.first_seen_ms for e in await history.read_history(run.a.kafka, topic)]
    assert after == first_seen and len(after) == 2
