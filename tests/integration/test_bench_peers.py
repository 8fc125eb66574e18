"""The benchmark's peers do the worker's job: on a sample of the benchmark's own events, every
decision, label, class, probability and dead-letter reason each peer writes is the one the
worker's core computes for the same record (before any of their timings mean anything)."""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from bench.contender import command
from bench.run import CONTENDERS
from bench.spec import POLICIES, WIDTHS, Spec
from tests.integration.helpers import BIG, create_all, expected_outcome, make_settings
from worker.core.routing import Routing
from worker.core.settings import Settings
from worker.devkit.traffic import MALFORMED, synthetic
from worker.stream import admin

pytestmark = pytest.mark.integration

PEERS = ("quix", "kstreams", "kstreams_eos", "faststream", "faststream_tuned")
PER_TOPIC = 1000
MALFORMED_RATE = 0.1  # five times the benchmark's, so that every reason turns up
# exp() in the JVM and in C may differ in the last bit; the sums are both correctly rounded.
CLOSE = 1e-12


def _topic(uid: str, width: int) -> str:
    return f"in-{uid}-w{width}"


def _settings(bootstrap: str, uid: str) -> Settings:
    topics = {_topic(uid, w): POLICIES[w] for w in WIDTHS}
    settings = make_settings(bootstrap, uid)
    return Settings(**{**settings.model_dump(), "topics": topics})


async def _fill(settings: Settings) -> dict[str, dict[str, Any]]:
    """The sample, and each record by its trace-id header (unique in the sample)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=5)
    await producer.start()
    pending: list[tuple[str, str, bytes, bytes | None, Any]] = []
    try:
        for width in WIDTHS:
            topic = _topic(settings.kafka.group_id.removeprefix("g-"), width)
            # The width-3 topic's events carry their own labels a third of the time.
            labels = ["alpha", "beta", "gamma"] if width == 3 else None
            for i, e in enumerate(
                synthetic(PER_TOPIC, seed=width, classes=width, malformed_rate=MALFORMED_RATE)
            ):
                value = e.value
                if labels and i % 3 == 0 and e.expect_dead_letter is None:
                    value = orjson.dumps({**orjson.loads(value), "labels": labels})
                ack = await producer.send(topic, value, key=e.key, headers=e.headers)
                pending.append((e.headers[0][1].decode(), topic, value, e.key, ack))
        metas = await asyncio.gather(*(ack for *_, ack in pending))
    finally:
        await producer.stop()
    return {
        trace: {
            "topic": topic,
            "partition": meta.partition,
            "offset": meta.offset,
            "value": value,
            "key": key,
        }
        for (trace, topic, value, key, _), meta in zip(pending, metas, strict=True)
    }


async def _run_peer(name: str, settings: Settings, tmp: Path, uid: str) -> dict[str, list[Any]]:
    outputs = {k: f"{name}-{k}-{uid}" for k in ("routed", "escalated", "dead_letter")}
    await admin.create_topics(settings.kafka, list(outputs.values()), 3, BIG)
    c = CONTENDERS[name]
    spec: Spec = {
        "kind": c.kind, "bootstrap": settings.kafka.bootstrap_servers, "group": f"{name}-{uid}",
        "inputs": {_topic(uid, w): POLICIES[w] for w in WIDTHS},
        "outputs": outputs, "kafka": {}, "processing": c.processing,
        "quix_commit_interval": 1.0, "peer": c.peer,
    }  # fmt: skip
    path = tmp / f"{name}.json"
    path.write_bytes(orjson.dumps(spec))
    with (tmp / f"{name}.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *command(c, path), stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            ends = await admin.end_offsets(settings.kafka, sorted(settings.topics))
            await admin.wait_for_commits(settings.kafka, spec["group"], ends, timeout_s=180)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), timeout=60)
    assert code == 0, (name, (tmp / f"{name}.log").read_text()[-2000:])
    return {k: await admin.read_topic(settings.kafka, t) for k, t in outputs.items()}


def _compare(
    sent: dict[str, dict[str, Any]], settings: Settings, out: dict[str, list[Any]]
) -> None:
    by_place = {(s["topic"], s["partition"], s["offset"]): s for s in sent.values()}
    seen: list[tuple[str, int, int]] = []
    for kind in ("routed", "escalated"):
        for r in out[kind]:
            doc = orjson.loads(r.value)
            src = doc["source"]
            place = (src["topic"], src["partition"], src["offset"])
            seen.append(place)
            record = _Record(place[0], by_place[place]["value"])
            what, expected = expected_outcome(settings, record)
            assert what == "scored" and isinstance(expected, Routing), (place, expected)
            assert (kind, doc["decision"]) == (expected.decision, expected.decision), place
            assert doc["reason"] == expected.reason, place
            assert doc["label"] == expected.label, place
            assert doc["class_index"] == expected.scores.class_index, place
            assert r.key == by_place[place]["key"], place
            want = expected.scores
            for got, exact in zip(doc["probabilities"], want.probabilities, strict=True):
                assert math.isclose(got, exact, rel_tol=CLOSE, abs_tol=CLOSE), place
            for field in ("top1", "top2", "margin", "entropy"):
                assert math.isclose(doc[field], getattr(want, field), abs_tol=CLOSE), field
            assert doc["temperature"] == settings.topics[place[0]].temperature
    reasons: dict[str, int] = {}
    for r in out["dead_letter"]:
        headers = dict(r.headers)
        s = sent[headers["trace-id"].decode()]
        place = (s["topic"], s["partition"], s["offset"])
        seen.append(place)
        assert r.value == s["value"], place  # byte for byte
        what, reason = expected_outcome(settings, _Record(place[0], s["value"]))
        assert (what, headers["dlq.reason"].decode()) == ("dead_letter", reason), place
        reasons[str(reason)] = reasons.get(str(reason), 0) + 1
    assert sorted(seen) == sorted(by_place)  # each input once, none lost, none twice
    assert set(reasons) == {reason for reason, _ in MALFORMED}


class _Record:
    def __init__(self, topic: str, value: bytes) -> None:
        self.topic, self.value = topic, value


@pytest.mark.parametrize("name", PEERS)
def test_a_peer_decides_as_the_worker_does(
    bootstrap: str, uid: str, tmp_path: Path, name: str
) -> None:
    settings = _settings(bootstrap, uid)

    async def go() -> None:
        await create_all(settings)
        sent = await _fill(settings)
        out = await _run_peer(name, settings, tmp_path, uid)
        _compare(sent, settings, out)

    asyncio.run(go())
