"""Reloading the config on a real broker, under both guarantees: a new policy applies from a
batch boundary on, with live traffic, no rebalance, nothing lost and (exactly-once) nothing
duplicated; SIGHUP reloads a worker process; a bad reload changes nothing and is counted."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from tests.integration.helpers import (
    audit,
    cli,
    committed_total,
    create_all,
    lines_of,
    make_settings,
    read_inputs,
    read_outputs,
    running_worker,
    start_worker,
    wait_for_progress,
    wait_until_committed,
    worker_log,
    write_config,
)
from tests.integration.test_pipeline import GUARANTEES, expected, publish_mixed
from tests.unit.test_health import request
from worker.core.settings import Settings
from worker.devkit import traffic
from worker.observability.health import HealthServer
from worker.stream import admin
from worker.stream.pipeline import Worker

pytestmark = pytest.mark.integration

CHUNK = 60  # events per topic per round of live traffic


def reloadable(bootstrap: str, uid: str, guarantee: str, **overrides: Any) -> Settings:
    """The test's settings under ``guarantee``, with the HTTP server on a free port."""
    return make_settings(
        bootstrap,
        uid,
        processing={"guarantee": guarantee},
        http={"enabled": True, "port": 0},
        **overrides,
    )


def with_temperature(settings: Settings, topic: str, temperature: float) -> Settings:
    doc = settings.model_dump(mode="json", exclude_none=True)
    doc["topics"][topic]["temperature"] = temperature
    return Settings(**doc)


def support_topic(settings: Settings) -> str:
    return next(t for t in settings.topics if t.startswith("support"))


@contextlib.asynccontextmanager
async def live_traffic(settings: Settings) -> AsyncIterator[list[int]]:
    """Events on every input topic, round after round, until the block is left; yields the
    count of rounds sent so far."""
    rounds = [0]
    stop = asyncio.Event()

    async def send() -> None:
        while not stop.is_set():
            await publish_mixed(settings, CHUNK, seed=rounds[0] * 10)
            rounds[0] += 1
            await asyncio.sleep(0.05)

    task = asyncio.create_task(send())
    try:
        yield rounds
    finally:
        stop.set()
        await task


async def post_reload(port: int) -> tuple[int, str]:
    """``POST /-/reload``: the status code and the body."""
    raw = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    status, _, body = await request(port, raw)
    return int(status.split()[1]), body.decode()


@contextlib.asynccontextmanager
async def http_worker(
    settings: Settings, config: Path, registry: CollectorRegistry
) -> AsyncIterator[int]:
    """An in-process worker reading ``config`` on a reload; yields its HTTP port."""
    ready: asyncio.Future[tuple[Worker, HealthServer | None]] = asyncio.Future()
    async with running_worker(
        settings,
        registry,
        config_path=config,
        on_ready=lambda w, h: ready.set_result((w, h)),
    ):
        _, http = await asyncio.wait_for(ready, timeout=30)
        assert http is not None
        yield http.port


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value("logit_router_" + name, labels)
    assert value is not None, name
    return value


def versions_by_partition(outputs: Any) -> dict[tuple[str, int], list[tuple[int, dict[str, Any]]]]:
    """The scored outputs of each input partition, in source-offset order."""
    seen: dict[tuple[str, int], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for r in [*outputs.routed, *outputs.escalated]:
        doc = orjson.loads(r.value)
        src = doc["source"]
        seen[src["topic"], src["partition"]].append((src["offset"], doc))
    return {k: sorted(v, key=lambda pair: pair[0]) for k, v in seen.items()}


@GUARANTEES
async def test_a_reload_under_live_traffic_switches_version_at_one_offset_per_partition(
    bootstrap: str, uid: str, guarantee: str, tmp_path: Path
) -> None:
    old = reloadable(bootstrap, uid, guarantee)
    support = support_topic(old)
    new = with_temperature(old, support, 1.9)
    assert new.config_version != old.config_version
    await create_all(old)
    config = write_config(old, tmp_path / "worker.toml")
    registry = CollectorRegistry()
    async with http_worker(old, config, registry) as port:
        async with live_traffic(old):
            await wait_for_progress(old, at_least=6 * CHUNK, timeout_s=60)
            rebalances = sample(registry, "rebalances_total")
            write_config(new, config)
            status, body = await post_reload(port)
            assert (status, body) == (200, f"applied {new.config_version}\n")
            reloaded_at, _ = await committed_total(old)
            await wait_for_progress(old, at_least=reloaded_at + 12 * CHUNK, timeout_s=60)
        await wait_until_committed(old)  # what the traffic sent last, before the worker stops
        assert sample(registry, "rebalances_total") == rebalances
    assert sample(registry, "config_reloads_total", result="applied") == 1
    assert sample(registry, "policy_temperature", topic=support) == 1.9

    outputs = await read_outputs(old)
    by_version = {old.config_version: old, new.config_version: new}
    for (topic, partition), docs in versions_by_partition(outputs).items():
        versions = [doc["config_version"] for _, doc in docs]
        # Old up to a boundary offset, new from it on: never back, never interleaved.
        switch = versions.index(new.config_version) if new.config_version in versions else None
        assert switch is not None and switch > 0, f"{topic}[{partition}] saw no switch"
        assert set(versions[:switch]) == {old.config_version}, f"{topic}[{partition}]"
        assert set(versions[switch:]) == {new.config_version}, f"{topic}[{partition}]"
        for _, doc in docs:
            policy = by_version[doc["config_version"]].topics[topic]
            assert doc["temperature"] == policy.temperature
    # Each output is what its own version's policy decides.
    by_source = outputs.by_source()
    for rec in await read_inputs(old):
        kind, out = by_source[rec.topic, rec.partition, rec.offset][0]
        if kind == "dead_letter":
            continue
        routed_by = by_version[orjson.loads(out.value)["config_version"]]
        assert kind == expected(routed_by, rec)[0]
    verdict = await audit(old)
    assert verdict.lost == 0
    if guarantee == "exactly_once":
        assert verdict.duplicated == 0
        assert verdict.outputs == verdict.events
    # Replayed as published, each event with the version recorded at start or at the reload.
    report = tmp_path / "as-published.jsonl"
    proc = await asyncio.to_thread(
        cli, "replay", "--topic", support, "--as-published", "--config", config,
        "--out", report, "--fail-on-diff",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, summary = lines_of(report)
    assert (summary["different"], summary["missing"], summary["unknown_version"]) == (0, 0, 0)
    assert set(summary["versions_used"]) == {old.config_version, new.config_version}


def all_versions(outputs: Any) -> set[str]:
    return {orjson.loads(r.value)["config_version"] for r in [*outputs.routed, *outputs.escalated]}


async def until_logged(config: Path, text: str, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while text not in worker_log(config):
        assert asyncio.get_running_loop().time() < deadline, f"never logged: {text}"
        await asyncio.sleep(0.1)


@GUARANTEES
async def test_sighup_makes_a_worker_process_apply_the_changed_file(
    bootstrap: str, uid: str, guarantee: str, tmp_path: Path
) -> None:
    old = make_settings(bootstrap, uid, processing={"guarantee": guarantee})
    new = with_temperature(old, support_topic(old), 2.5)
    await create_all(old)
    config = write_config(old, tmp_path / "worker.toml")
    await publish_mixed(old, 200, seed=1)
    proc = start_worker(config)
    await wait_until_committed(old)
    before = await admin.end_offsets(old.kafka, old.topics)
    write_config(new, config)
    proc.send_signal(signal.SIGHUP)
    await until_logged(config, f"config reload (SIGHUP) applied: {old.config_version} -> ")
    await publish_mixed(old, 200, seed=2)
    await wait_until_committed(old)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, worker_log(config)

    for (topic, partition), docs in versions_by_partition(await read_outputs(old)).items():
        boundary = before[TopicPartition(topic, partition)]
        for offset, doc in docs:
            want = old if offset < boundary else new
            assert doc["config_version"] == want.config_version, (topic, partition, offset)
            assert doc["temperature"] == want.topics[topic].temperature


@GUARANTEES
async def test_a_bad_reload_changes_nothing_is_counted_and_answered_400(
    bootstrap: str, uid: str, guarantee: str, tmp_path: Path
) -> None:
    settings = reloadable(bootstrap, uid, guarantee)
    support = support_topic(settings)
    await create_all(settings)
    config = write_config(settings, tmp_path / "worker.toml")
    good = config.read_text()
    assert '"temperature" = 0.7' in good
    regrouped = reloadable(bootstrap, uid, guarantee, kafka={"group_id": f"other-{uid}"})
    registry = CollectorRegistry()
    async with http_worker(settings, config, registry) as port:
        await publish_mixed(settings, 100, seed=1)
        await wait_until_committed(settings)

        config.write_text(good.replace('"temperature" = 0.7', '"temperature" = -1.0'))
        status, body = await post_reload(port)
        assert status == 400
        assert body.startswith(f"refused: invalid config: topics.{support}.temperature = -1.0: ")
        assert body.count("\n") == 1

        write_config(regrouped, config)
        status, body = await post_reload(port)
        assert status == 400
        assert body == (f"refused: needs a restart: kafka.group_id 'g-{uid}' -> 'other-{uid}'\n")

        config.write_text(good)
        assert await post_reload(port) == (200, f"unchanged {settings.config_version}\n")

        await publish_mixed(settings, 100, seed=2)
        await wait_until_committed(settings)
    assert sample(registry, "config_reloads_total", result="refused") == 2
    assert sample(registry, "config_reloads_total", result="unchanged") == 1
    assert sample(registry, "config_reloads_total", result="applied") == 0
    assert sample(registry, "policy_temperature", topic=support) == 0.7
    outputs = await read_outputs(settings)
    assert all_versions(outputs) == {settings.config_version}
    verdict = await audit(settings)
    assert (verdict.events, verdict.lost) == (400, 0)


@GUARANTEES
async def test_adding_and_removing_an_input_topic_resubscribes(
    bootstrap: str, uid: str, guarantee: str, tmp_path: Path
) -> None:
    old = reloadable(bootstrap, uid, guarantee)
    billing = f"billing-{uid}"
    doc = old.model_dump(mode="json", exclude_none=True)
    doc["topics"][billing] = {"temperature": 3.0, "min_margin": 0.05}
    new = Settings(**doc)
    missing = f"missing-{uid}"
    doc["topics"][missing] = {}
    await create_all(new)
    config = write_config(old, tmp_path / "worker.toml")
    registry = CollectorRegistry()
    async with http_worker(old, config, registry) as port:
        await publish_mixed(old, 100, seed=1)
        await wait_until_committed(old)
        rebalances = sample(registry, "rebalances_total")

        write_config(Settings(**doc), config)
        status, body = await post_reload(port)
        assert (status, body) == (
            400,
            f"refused: topics do not exist: {missing} (create them first)\n",
        )

        write_config(new, config)
        assert await post_reload(port) == (200, f"applied {new.config_version}\n")
        await traffic.produce(bootstrap, billing, traffic.synthetic(150, seed=3))
        await publish_mixed(old, 100, seed=4)
        await wait_until_committed(new)
        assert sample(registry, "rebalances_total") > rebalances  # re-subscribing is a rebalance
        assert sample(registry, "events_total", topic=billing, decision="routed") > 0

        write_config(old, config)
        assert await post_reload(port) == (200, f"applied {old.config_version}\n")
        await publish_mixed(old, 100, seed=5)
        await wait_until_committed(old)
        assert sample(registry, "config_reloads_total", result="applied") == 2
        assert sample(registry, "config_reloads_total", result="refused") == 1

    outputs = await read_outputs(new)
    docs = versions_by_partition(outputs)
    billed = [doc for (topic, _), pairs in docs.items() if topic == billing for _, doc in pairs]
    assert billed
    assert {(d["config_version"], d["temperature"]) for d in billed} == {(new.config_version, 3.0)}
    verdict = await audit(new)
    assert (verdict.events, verdict.lost) == (750, 0)
    if guarantee == "exactly_once":
        assert verdict.duplicated == 0
