"""What the integration tests share: a per-test config, running an in-process worker, and
reading back everything the worker wrote."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from worker import admin
from worker.records import DLQ_PREFIX
from worker.service import serve
from worker.settings import Settings

BIG = {"max.message.bytes": "8388608"}


def make_settings(bootstrap: str, uid: str, **overrides: Any) -> Settings:
    """Two input topics with different temperatures, uuid-named outputs and group."""
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


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, registry: CollectorRegistry | None = None
) -> AsyncIterator[asyncio.Event]:
    """An in-process worker; leaving the block stops it gracefully and checks it exited 0."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop, registry=registry))
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
