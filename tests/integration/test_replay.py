"""``replay``, ``whatif`` and ``plot margins`` against what a real worker did on a real broker.

One module fixture runs the worker over two input topics (3 partitions each, with malformed
records); every test then replays, analyses or draws that recorded range through the real
command (a subprocess), and checks it against an independent computation with
``worker.core.routing.route`` on the input records.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from tests.integration.helpers import (
    cli,
    create_all,
    expected_kind,
    expected_outcome,
    lines_of,
    make_settings,
    read_inputs,
    running_worker,
    wait_until_committed,
)
from tests.png import png_size
from worker.core.events import EventError, decode_event
from worker.core.routing import Policy, Routing, ScoringError, route
from worker.core.settings import Settings
from worker.devkit import traffic
from worker.devkit.broker import Broker
from worker.stream import admin
from worker.stream.connections import make_admin

pytestmark = pytest.mark.integration

PER_TOPIC = 400
SEVERITY = ("decision", "label", "reason", "probabilities")


class Recorded:
    """The worker's run: its settings, config file, and the input records it processed."""

    def __init__(self, settings: Settings, config: Path, inputs: list[Any], tmp: Path) -> None:
        self.settings = settings
        self.config = config
        self.inputs = inputs
        self.tmp = tmp

    @property
    def support(self) -> str:
        return next(t for t in self.settings.topics if t.startswith("support"))

    @property
    def fraud(self) -> str:
        return next(t for t in self.settings.topics if t.startswith("fraud"))

    def of(self, topic: str) -> list[Any]:
        return sorted(
            (r for r in self.inputs if r.topic == topic), key=lambda r: (r.partition, r.offset)
        )


def toml(settings: Settings, **changes: Any) -> str:
    """The settings as a TOML config file, with per-topic policy ``changes`` applied."""
    doc = settings.model_dump(mode="json", exclude_none=True)
    for topic, change in changes.items():
        doc["topics"][topic] = {**doc["topics"][topic], **change}
    lines: list[str] = []
    for section, body in doc.items():
        if section == "topics":
            for topic, policy in body.items():
                lines.append(f"[topics.{orjson.dumps(topic).decode()}]")
                lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in policy.items()]
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def write(recorded: Recorded, name: str, **changes: Any) -> Path:
    path = recorded.tmp / name
    path.write_text(toml(recorded.settings, **changes))
    return path


@pytest_asyncio.fixture(scope="module")
async def recorded(
    kafka_broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Recorded]:
    uid = uuid.uuid4().hex[:10]
    settings = make_settings(kafka_broker.bootstrap_servers, uid)
    await create_all(settings)
    for n, topic in enumerate(sorted(settings.topics)):
        classes = 3 if topic.startswith("support") else 2
        events = list(traffic.synthetic(PER_TOPIC, seed=n, classes=classes, malformed_rate=0.05))
        if topic.startswith("support"):
            events.append(traffic.lab_event())
        await traffic.produce(kafka_broker.bootstrap_servers, topic, events)
    async with running_worker(settings):
        await wait_until_committed(settings)
    tmp = tmp_path_factory.mktemp("replay")
    config = tmp / "live.toml"
    config.write_text(toml(settings))
    yield Recorded(settings, config, await read_inputs(settings), tmp)


# --- same config: the published decisions come back, byte for byte ------------------------


@pytest.mark.parametrize("which", ["support", "fraud"])
def test_same_config_replays_with_zero_differences(recorded: Recorded, which: str) -> None:
    topic = getattr(recorded, which)
    out = recorded.tmp / f"same-{which}.jsonl"
    proc = cli(
        "replay", "--topic", topic, "--config", recorded.config, "--out", out, "--fail-on-diff"
    )
    assert proc.returncode == 0, proc.stderr
    events, summary = lines_of(out)
    inputs = recorded.of(topic)
    assert [(e["source"]["partition"], e["source"]["offset"]) for e in events] == [
        (r.partition, r.offset) for r in inputs
    ]
    dead = Counter(
        o[1]
        for o in (expected_outcome(recorded.settings, r) for r in inputs)
        if o[0] == "dead_letter"
    )
    assert dead, "the traffic has malformed records"
    assert summary["replayed"] == len(inputs)
    assert summary["identical"] == summary["same_bytes"] == len(inputs)
    assert (summary["different"], summary["missing"], summary["differences"]) == (0, 0, {})
    assert summary["dead_lettered"] == sum(dead.values())
    assert summary["dead_letter_reasons"] == dict(dead)
    assert summary["max_abs_diff"] == 0.0
    assert summary["config_version"] == recorded.settings.config_version
    assert all(e["status"] == "identical" and e["max_abs_diff"] in (0.0, None) for e in events)
    assert f"replayed           {len(inputs)}" in proc.stdout


def test_two_replays_are_byte_identical(recorded: Recorded) -> None:
    a, b = recorded.tmp / "a.jsonl", recorded.tmp / "b.jsonl"
    for path in (a, b):
        proc = cli(
            "replay", "--topic", recorded.support, "--config", recorded.config, "--out", path
        )
        assert proc.returncode == 0, proc.stderr
    assert a.read_bytes() == b.read_bytes()
    to_stdout = cli(
        "replay", "--topic", recorded.support, "--config", recorded.config, "--out", "-"
    )
    assert to_stdout.returncode == 0
    assert to_stdout.stdout.encode() == a.read_bytes()
    assert "replayed" in to_stdout.stderr  # the human summary moves to stderr


# --- a changed config: exactly the differences the core predicts --------------------------

CHANGES: dict[str, tuple[str, dict[str, Any]]] = {
    "temperature": ("support", {"temperature": 1.3}),
    "thresholds": ("fraud", {"min_margin": 0.05, "min_top1": 0.7}),
    "labels": ("support", {"labels": ["refund", "bug", "upsell"]}),
    # The sample is drawn from the ids alone: a replay picks the events the rule predicts.
    "audit_sample": ("fraud", {"audit_sample_rate": 0.3}),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_config_shows_exactly_the_expected_differences(
    recorded: Recorded, change: str
) -> None:
    which, policy = CHANGES[change]
    topic = getattr(recorded, which)
    config = write(recorded, f"{change}.toml", **{topic: policy})
    live = recorded.settings
    doc = live.model_dump()
    doc["topics"][topic] = {**doc["topics"][topic], **policy}
    changed = Settings(**doc)
    out = recorded.tmp / f"{change}.jsonl"
    proc = cli("replay", "--topic", topic, "--config", config, "--out", out, "--fail-on-diff")
    events, summary = lines_of(out)
    inputs = recorded.of(topic)
    want = {
        (r.partition, r.offset): expected_kind(
            expected_outcome(live, r), expected_outcome(changed, r)
        )
        for r in inputs
    }
    got = {(e["source"]["partition"], e["source"]["offset"]): e["kind"] for e in events}
    assert got == want
    counts = Counter(k for k in want.values() if k is not None)
    assert counts, f"the {change} change should alter some decisions"
    assert proc.returncode == 1, proc.stderr  # --fail-on-diff
    assert summary["different"] == sum(counts.values())
    assert summary["identical"] == len(inputs) - sum(counts.values())
    assert {k: d["count"] for k, d in summary["differences"].items()} == dict(counts)
    new_version = changed.config_version
    for kind, d in summary["differences"].items():
        assert d["versions"] == [
            {"original": live.config_version, "replay": new_version, "count": counts[kind]}
        ]
        example = d["example"]
        assert example["kind"] == kind
        assert example["original"]["config_version"] == live.config_version
        assert example["replay"]["config_version"] == new_version
    if change == "audit_sample":
        assert set(counts) == {"decision"}  # routed events, escalated as audit_sample
    if change == "temperature":
        assert set(counts) == {"decision", "probabilities"}
        assert summary["max_abs_diff"] > 0.01
    if change == "thresholds":
        assert set(counts) == {"decision", "reason"}
    if change == "labels":
        assert set(counts) == {"label"}


# --- a replay is read-only for the live deployment -----------------------------------------


async def live_state(settings: Settings) -> tuple[dict[Any, Any], dict[Any, int], list[Any]]:
    """The live group's committed offsets, the end offsets of every live topic, and every
    group that holds offsets on a live topic (other tests' groups come and go meanwhile)."""
    o = settings.outputs
    live = {*settings.topics, o.routed, o.escalated, o.dead_letter}
    client = make_admin(settings.kafka)
    await client.start()
    try:
        committed = await client.list_consumer_group_offsets(settings.kafka.group_id)
        groups = []
        for group, *_rest in await client.list_consumer_groups():
            offsets = await client.list_consumer_group_offsets(group)
            if any(tp.topic in live for tp in offsets):
                groups.append(group)
        groups.sort()
    finally:
        await client.close()
    ends = await admin.end_offsets(settings.kafka, sorted(live))
    return {tp: m.offset for tp, m in committed.items()}, ends, groups


async def test_a_replay_leaves_the_live_group_and_outputs_untouched(recorded: Recorded) -> None:
    settings = recorded.settings
    before = await live_state(settings)
    assert sum(before[0].values()) == len(recorded.inputs)  # the worker committed everything
    copy = f"replayed-{uuid.uuid4().hex[:8]}"
    await admin.create_topics(settings.kafka, [copy], 1)
    proc = cli("replay", "--topic", recorded.support, "--config", recorded.config,
               "--to-topic", copy, "--fail-on-diff")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert await live_state(settings) == before
    # What went to the copy is what the worker published, record for record.
    written = await admin.read_topic(settings.kafka, copy)
    inputs = recorded.of(recorded.support)
    assert len(written) == len(inputs)
    outputs = [
        *await admin.read_topic(settings.kafka, settings.outputs.routed),
        *await admin.read_topic(settings.kafka, settings.outputs.escalated),
        *await admin.read_topic(settings.kafka, settings.outputs.dead_letter),
    ]
    published = Counter((r.key, r.value, tuple(r.headers)) for r in outputs)
    assert all(published[(r.key, r.value, tuple(r.headers))] for r in written)


@pytest.mark.parametrize("target", ["routed", "escalated", "dead_letter", "input"])
def test_to_topic_refuses_live_topics(recorded: Recorded, target: str) -> None:
    o = recorded.settings.outputs
    name = recorded.fraud if target == "input" else getattr(o, target)
    proc = cli("replay", "--topic", recorded.support, "--config", recorded.config,
               "--to-topic", name)  # fmt: skip
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert name in proc.stderr and "Traceback" not in proc.stderr


# --- ranges by time and by offset ----------------------------------------------------------


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def first_at_or_after(records: list[Any], ms: int) -> int:
    """Kafka's ListOffsets by time, computed from the records: the end if none."""
    later: list[int] = [r.offset for r in records if r.timestamp >= ms]
    return min(later) if later else int(max(r.offset for r in records)) + 1


def test_a_time_range_replays_the_offsets_kafka_maps_it_to(recorded: Recorded) -> None:
    inputs = recorded.of(recorded.support)
    stamps = sorted({r.timestamp for r in inputs})
    lo, hi = stamps[len(stamps) // 4], stamps[3 * len(stamps) // 4]
    assert lo < hi
    out = recorded.tmp / "time.jsonl"
    proc = cli("replay", "--topic", recorded.support, "--config", recorded.config,
               "--from", iso(lo), "--to", iso(hi), "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events, summary = lines_of(out)
    want = []
    for p in sorted({r.partition for r in inputs}):
        part = [r for r in inputs if r.partition == p]
        a, b = first_at_or_after(part, lo), first_at_or_after(part, hi)
        want += [(p, r.offset) for r in part if a <= r.offset < b]
    assert want, "the range should not be empty"
    assert [(e["source"]["partition"], e["source"]["offset"]) for e in events] == want
    assert summary["identical"] == len(want)


def test_an_offset_range_is_half_open_on_the_named_partition(recorded: Recorded) -> None:
    out = recorded.tmp / "offsets.jsonl"
    proc = cli("replay", "--topic", recorded.fraud, "--config", recorded.config,
               "--from", "1:10", "--to", "1:50", "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events, summary = lines_of(out)
    assert [(e["source"]["partition"], e["source"]["offset"]) for e in events] == [
        (1, k) for k in range(10, 50)
    ]
    assert summary["range"] == [{"partition": 1, "from": 10, "to": 50}]
    bad = cli("replay", "--topic", recorded.fraud, "--config", recorded.config, "--from", "9:0")
    assert bad.returncode == 2 and "not 9" in bad.stderr


# --- whatif and the margin histogram on the same recorded range ---------------------------


def direct_cell(
    settings: Settings, records: list[Any], t: float, m: float, t1: float | None
) -> dict[str, Any]:
    """One whatif cell, computed with the scalar core on the decoded records."""
    labels = settings.topics[records[0].topic].labels
    policy = Policy(t, m, t1, labels)
    done: list[Routing] = []
    for r in records:
        try:
            event = decode_event(r.value, max_bytes=10**7, max_classes=10**4)
            done.append(route(event.logit_values(), policy, event.labels))
        except (EventError, ScoringError):
            continue
    escalated = [x for x in done if x.decision == "escalated"]
    return {
        "scored": len(done),
        "escalated": len(escalated),
        "rate": len(escalated) / len(done),
        "low_margin": sum(1 for x in escalated if x.reason == "low_margin"),
        "low_top1": sum(1 for x in escalated if x.reason == "low_top1"),
        "routed_labels": dict(Counter(x.label for x in done if x.decision == "routed")),
    }


def reachable_counts(settings: Settings, records: list[Any], t: float, t1: float) -> set[int]:
    """Every escalation count some min_margin in [0, 1] gives at temperature t."""
    margins, forced = [], 0
    for r in records:
        try:
            event = decode_event(r.value, max_bytes=10**7, max_classes=10**4)
            s = route(event.logit_values(), Policy(t, 0.0), event.labels).scores
        except (EventError, ScoringError):
            continue
        if s.top1 < t1:
            forced += 1
        else:
            margins.append(s.margin)
    cuts = [0.0, 1.0, *margins]
    return {forced + sum(1 for x in margins if x < m) for m in cuts}


def now_grid(cells: list[dict[str, Any]]) -> list[tuple[float, float, float | None]]:
    return [(c["temperature"], c["min_margin"], c["min_top1"]) for c in cells]


def test_whatif_numbers_equal_a_direct_computation(recorded: Recorded) -> None:
    png = recorded.tmp / "rates.png"
    proc = cli("whatif", "--config", recorded.config, "--temperatures", "0.7,1.0,1.5",
               "--min-margins", "0.1,0.3", "--min-top1", "0.6", "--target-escalation-rate",
               "0.25", "--json", "--png", png)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)["topics"]
    assert sorted(report) == sorted(recorded.settings.topics)
    for topic, doc in report.items():
        records = recorded.of(topic)
        grid = doc["grid"][:6]  # the configured policy is marked, or added after the grid
        assert [(c["temperature"], c["min_margin"]) for c in grid] == [
            (t, m) for t in (0.7, 1.0, 1.5) for m in (0.1, 0.3)
        ]
        for cell in grid:
            want = direct_cell(
                recorded.settings, records, cell["temperature"], cell["min_margin"], 0.6
            )
            assert {k: cell[k] for k in want} == want
        current = [c for c in doc["grid"] if c["current"]]
        policy = recorded.settings.topics[topic]
        assert len(current) == 1
        now = (policy.temperature, policy.min_margin, policy.min_top1)
        assert (current[0]["temperature"], current[0]["min_margin"], current[0]["min_top1"]) == now
        assert len(doc["grid"]) == (6 if now in now_grid(grid) else 7)
        want = direct_cell(recorded.settings, records, *now)
        assert {k: current[0][k] for k in want} == want
        target = doc["target"]
        assert target["suggested"] in target["per_temperature"]
        for row in target["per_temperature"]:
            t, m = row["temperature"], row["min_margin"]
            want = direct_cell(recorded.settings, records, t, m, 0.6)
            assert row["rate"] == want["rate"]
            # No threshold at this temperature comes nearer the target than the one found.
            goal = 0.25 * want["scored"]
            best = min(abs(c - goal) for c in reachable_counts(recorded.settings, records, t, 0.6))
            assert abs(want["escalated"] - goal) <= best + 0.5
    assert png_size(png)[0] > 0


def test_the_margin_histogram_of_a_topic_range(recorded: Recorded) -> None:
    png = recorded.tmp / "margins.png"
    topic = recorded.support
    proc = cli("plot", "margins", "--config", recorded.config, "--topic", topic, "-o", png)
    assert proc.returncode == 0, proc.stderr
    policy = recorded.settings.topics[topic]
    cell = direct_cell(
        recorded.settings, recorded.of(topic), policy.temperature, policy.min_margin, None
    )
    assert f"{topic}: {cell['scored']} events at T=0.7, {cell['low_margin']} " in proc.stdout
    assert png_size(png) == (700, 320)
