"""What the integration tests share: a per-test config, running an in-process worker, and
reading back everything the worker wrote."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from worker.core.events import EventError, decode_event
from worker.core.records import DLQ_PREFIX
from worker.core.routing import Routing, ScoringError, route
from worker.core.settings import Settings
from worker.stream import admin, history
from worker.stream.service import serve

# Room for records of several MB (the test broker's default 1 MiB segments would refuse them).
BIG = {"max.message.bytes": "8388608", "segment.bytes": "33554432"}


def make_settings(bootstrap: str, uid: str, **overrides: Any) -> Settings:
    """Two input topics with different temperatures, uuid-named outputs, history and group."""
    base: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"g-{uid}",
            "connect_timeout_s": 20,
            "session_timeout_ms": 10_000,
        },
        "outputs": {
            "routed": f"routed-{uid}",
            "escalated": f"escalated-{uid}",
            "dead_letter": f"dlq-{uid}",
            "config_history": f"history-{uid}",
        },
        "topics": {
            f"support-{uid}": {
                "temperature": 0.7,
                "min_margin": 0.15,
                "labels": ["billing", "tech", "sales"],
            },
            f"fraud-{uid}": {"temperature": 1.5, "min_margin": 0.3, "min_top1": 0.6},
        },
        "http": {"enabled": False},
        "processing": {"max_batch_records": 500, "drain_timeout_s": 10},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value}
    return Settings(**base)


async def create_all(settings: Settings, partitions: int = 3) -> None:
    o = settings.outputs
    names = [*settings.topics, o.routed, o.escalated, o.dead_letter]
    await admin.create_topics(settings.kafka, names, partitions, BIG)
    await history.create_topic(settings.kafka, o.config_history)


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, registry: CollectorRegistry | None = None, **serve_args: Any
) -> AsyncIterator[asyncio.Event]:
    """An in-process worker (``serve_args`` go to ``serve``); leaving the block stops it
    gracefully and checks it exited 0."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop, registry=registry, **serve_args))
    try:
        yield stop
    finally:
        stop.set()
        code = await asyncio.wait_for(task, timeout=60)
        assert code == 0


async def wait_until_committed(settings: Settings, timeout_s: float = 120) -> None:
    ends = await admin.end_offsets(settings.kafka, settings.topics)
    seen = await admin.wait_for_commits(settings.kafka, settings.kafka.group_id, ends, timeout_s)
    behind = {
        f"{tp.topic}[{tp.partition}]": (seen[tp], e) for tp, e in ends.items() if seen[tp] < e
    }
    assert not behind, f"committed offsets behind the end offsets: {behind}"


@dataclass
class Outputs:
    """Everything the worker published, indexed by the source offset it came from."""

    routed: list[Any] = field(default_factory=list)
    escalated: list[Any] = field(default_factory=list)
    dead: list[Any] = field(default_factory=list)

    def by_source(self) -> dict[tuple[str, int, int], list[tuple[str, Any]]]:
        seen: dict[tuple[str, int, int], list[tuple[str, Any]]] = {}
        for kind, recs in (("routed", self.routed), ("escalated", self.escalated)):
            for r in recs:
                src = orjson.loads(r.value)["source"]
                seen.setdefault((src["topic"], src["partition"], src["offset"]), []).append(
                    (kind, r)
                )
        for r in self.dead:
            h = dict(r.headers)
            key = (
                h[DLQ_PREFIX + "source.topic"].decode(),
                int(h[DLQ_PREFIX + "source.partition"]),
                int(h[DLQ_PREFIX + "source.offset"]),
            )
            seen.setdefault(key, []).append(("dead_letter", r))
        return seen


async def read_outputs(settings: Settings) -> Outputs:
    o = settings.outputs
    k = settings.kafka
    return Outputs(
        routed=await admin.read_topic(k, o.routed),
        escalated=await admin.read_topic(k, o.escalated),
        dead=await admin.read_topic(k, o.dead_letter),
    )


async def read_inputs(settings: Settings) -> list[Any]:
    out: list[Any] = []
    for topic in sorted(settings.topics):
        out.extend(await admin.read_topic(settings.kafka, topic))
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _toml_table(name: str, table: dict[str, Any], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    lines.append(f"[{name}]")
    lines += [f"{orjson.dumps(k).decode()} = {_toml_value(v)}" for k, v in scalars.items()]
    for k, v in table.items():
        if isinstance(v, dict):
            _toml_table(f"{name}.{orjson.dumps(k).decode()}", v, lines)


def write_config(settings: Settings, path: Path) -> Path:
    """The effective settings as a TOML file, for a worker run as a subprocess."""
    doc = settings.model_dump(mode="json", exclude_none=True)
    lines: list[str] = []
    for section, table in doc.items():
        _toml_table(section, table, lines)
    path.write_text("\n".join(lines) + "\n")
    return path


# Every worker process a test starts, so that teardown can kill what a failed test left.
STARTED: list[subprocess.Popen[bytes]] = []


def kill_leftovers() -> None:
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def start_worker(config: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``logit-router run`` as a real process, with ``env`` added to the environment; its log
    goes to ``<config>.log``."""
    log = config.with_suffix(".log").open("ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
        STARTED.append(proc)
        return proc
    finally:
        log.close()  # the child holds its own copy of the descriptor


def worker_log(config: Path) -> str:
    return config.with_suffix(".log").read_text(errors="replace")


def stuck_worker_log(proc: subprocess.Popen[bytes], config: Path, wait_s: float = 5.0) -> str:
    """The end of a worker's log for a failure message: with every stack (SIGUSR1) when the
    worker is still running, so a worker that stopped making progress says where it waits."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + wait_s
        while "SIGUSR1: stacks" not in worker_log(config) and time.monotonic() < deadline:
            time.sleep(0.1)
    log = worker_log(config)
    dumped = log.rfind("SIGUSR1: stacks")
    return log[-4000:] if dumped < 0 else log[max(0, dumped - 2000) :]


@dataclass
class Audit:
    """The independent checker's verdict: inputs against everything in the three outputs."""

    events: int
    outputs: int
    lost: int
    duplicated: int
    order_violations: int


def order_violations(outputs: Outputs) -> int:
    """Outputs of one input partition that appear out of input order within an output partition.

    A redelivery (a source offset seen before, as at-least-once allows) is a duplicate, not an
    order violation; a source offset lower than one already seen and never seen itself is.
    """
    bad = 0
    for recs in (outputs.routed, outputs.escalated):
        seen: dict[tuple[int, str, int], set[int]] = defaultdict(set)
        top: dict[tuple[int, str, int], int] = defaultdict(lambda: -1)
        for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
            src = orjson.loads(r.value)["source"]
            k = (r.partition, src["topic"], src["partition"])
            off = src["offset"]
            if off < top[k] and off not in seen[k]:
                bad += 1
            seen[k].add(off)
            top[k] = max(top[k], off)
    return bad


async def audit(settings: Settings) -> Audit:
    inputs = await read_inputs(settings)
    outputs = await read_outputs(settings)
    by_source = outputs.by_source()
    counts = [len(by_source.get((r.topic, r.partition, r.offset), [])) for r in inputs]
    return Audit(
        events=len(inputs),
        outputs=len(outputs.routed) + len(outputs.escalated) + len(outputs.dead),
        lost=sum(1 for c in counts if c == 0),
        duplicated=sum(c - 1 for c in counts if c > 1),
        order_violations=order_violations(outputs),
    )


async def committed_total(settings: Settings) -> tuple[int, int]:
    """(offsets committed by the group, end offsets) summed over the input partitions."""
    ends = await admin.end_offsets(settings.kafka, settings.topics)
    seen = await admin.wait_for_commits(settings.kafka, settings.kafka.group_id, ends, 0)
    return sum(seen.values()), sum(ends.values())


async def wait_for_progress(settings: Settings, at_least: int, timeout_s: float) -> float:
    """Poll until the group has committed ``at_least`` offsets; return when (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, _ = await committed_total(settings)
        if done >= at_least:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"only {done} offsets committed, wanted {at_least}")
        await asyncio.sleep(0.1)


# --- what a replay should find, computed from the core alone --------------------------------


def expected_outcome(settings: Settings, record: Any) -> tuple[str, Routing | str]:
    """``("scored", routing)`` or ``("dead_letter", reason)`` by the scalar core."""
    limits = settings.limits
    try:
        event = decode_event(
            record.value, max_bytes=limits.max_event_bytes, max_classes=limits.max_classes
        )
        return "scored", route(
            event.logit_values(), settings.policies()[record.topic], event.labels, event.id
        )
    except (EventError, ScoringError) as exc:
        return "dead_letter", exc.code


def expected_kind(before: tuple[str, Any], after: tuple[str, Any]) -> str | None:
    """How the decision changes between two configs, computed from the core alone."""
    if before[0] == "dead_letter" or after[0] == "dead_letter":
        if before[0] != after[0]:
            return "decision"
        return None if before[1] == after[1] else "reason"
    a, b = before[1], after[1]
    if a.decision != b.decision:
        return "decision"
    if (a.label, a.scores.class_index) != (b.label, b.scores.class_index):
        return "label"
    if a.reason != b.reason:
        return "reason"
    diff = max(
        abs(x - y) for x, y in zip(a.scores.probabilities, b.scores.probabilities, strict=True)
    )
    return "probabilities" if diff > 1e-12 else None


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``logit-router ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
    )


def lines_of(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A replay report: its event lines and its summary."""
    docs = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert docs[-1]["type"] == "summary"
    assert all(d["type"] == "event" for d in docs[:-1])
    return docs[:-1], docs[-1]
