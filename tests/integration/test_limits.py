"""No record can stop a partition: outputs that do not fit their topic, and dead letters that do
not fit the dead-letter topic, on a real broker under both guarantees."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.helpers import (
    BIG,
    make_settings,
    read_inputs,
    read_outputs,
    running_worker,
    wait_until_committed,
)
from worker.core.records import DLQ_PREFIX
from worker.core.settings import Settings
from worker.devkit import traffic
from worker.stream import admin, history
from worker.stream.connections import make_admin
from worker.stream.service import serve

pytestmark = pytest.mark.integration
GUARANTEES = pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])

DLQ_LIMIT = 1_048_576  # the broker's default max.message.bytes
ROUTED_LIMIT = 6_000


def confident(i: int, padding: int = 0) -> bytes:
    doc: dict[str, Any] = {"id": f"e-{i}", "logits": [9.0, 0.1, 0.2]}
    if padding:
        doc["metadata"] = {"blob": "x" * padding}
    return orjson.dumps(doc)


async def setup(bootstrap: str, uid: str, guarantee: str) -> tuple[Settings, str]:
    settings = make_settings(
        bootstrap, uid, processing={"guarantee": guarantee, "max_batch_records": 50}
    )
    topic = sorted(settings.topics)[0]
    o = settings.outputs
    k = settings.kafka
    await admin.create_topics(k, [*settings.topics, o.escalated], 1, BIG)
    await admin.create_topics(k, [o.routed], 1, {"max.message.bytes": str(ROUTED_LIMIT)})
    await admin.create_topics(k, [o.dead_letter], 1, {"max.message.bytes": str(DLQ_LIMIT)})
    await history.create_topic(k, o.config_history)
    return settings, topic


def headers(record: Any) -> dict[str, bytes]:
    return {name: value for name, value in record.headers}


def assert_each_input_once(inputs: list[Any], outputs: Any, exactly_once: bool) -> None:
    offsets = [int(headers(r)[DLQ_PREFIX + "source.offset"]) for r in outputs.dead] + [
        orjson.loads(r.value)["source"]["offset"] for r in outputs.routed + outputs.escalated
    ]
    assert set(offsets) == {r.offset for r in inputs}
    if exactly_once:
        assert len(offsets) == len(inputs)


@GUARANTEES
async def test_a_dead_letter_too_large_for_its_topic_and_an_output_too_large_for_its_own(
    bootstrap: str, uid: str, guarantee: str
) -> None:
    settings, topic = await setup(bootstrap, uid, guarantee)
    events = [
        traffic.Event(b"k0", confident(0), [], None),
        traffic.Event(b"k1", b"{" + b"x" * 2_000_000, [("trace", b"t-1")], None),  # unscorable
        traffic.Event(b"k2", confident(2), [], None),
        traffic.Event(b"k3", confident(3, padding=ROUTED_LIMIT), [], None),  # output too large
        traffic.Event(b"k4", confident(4), [], None),
    ]
    await traffic.produce(settings.kafka.bootstrap_servers, topic, events)
    async with running_worker(settings):
        await wait_until_committed(settings)  # the group commits past both
        more = [traffic.Event(b"k5", confident(5), [], None)]
        await traffic.produce(settings.kafka.bootstrap_servers, topic, more)
        await wait_until_committed(settings)  # and goes on routing after them
    inputs = await read_inputs(settings)
    outputs = await read_outputs(settings)
    assert sorted(orjson.loads(r.value)["id"] for r in outputs.routed) == [
        "e-0",
        "e-2",
        "e-4",
        "e-5",
    ]
    dead = {int(headers(r)[DLQ_PREFIX + "source.offset"]): r for r in outputs.dead}
    assert sorted(dead) == [1, 3]
    claim = dead[1]
    assert (claim.key, claim.value) == (None, None)
    h = headers(claim)
    assert h[DLQ_PREFIX + "reason"] == b"dead_letter_too_large"
    assert h[DLQ_PREFIX + "original_reason"] == b"payload_too_large"
    assert h[DLQ_PREFIX + "source.topic"] == topic.encode()
    assert b"bytes for" in h[DLQ_PREFIX + "message"]
    assert "trace" not in h  # the record's own headers stay with it, in the input topic
    too_large = dead[3]
    assert (too_large.key, too_large.value) == (b"k3", events[3].value)  # byte for byte
    assert headers(too_large)[DLQ_PREFIX + "reason"] == b"output_too_large"
    assert_each_input_once(inputs, outputs, exactly_once=guarantee == "exactly_once")


async def lower_routed_limit(settings: Settings, max_bytes: int) -> None:
    client = make_admin(settings.kafka)
    await client.start()
    try:
        config = {"max.message.bytes": str(max_bytes)}
        resource = ConfigResource(ConfigResourceType.TOPIC, settings.outputs.routed, config)
        await client.alter_configs([resource])
    finally:
        await client.close()
    await asyncio.sleep(1)  # the broker applies topic configs asynchronously


@GUARANTEES
async def test_a_topic_limit_lowered_under_a_running_worker_dead_letters_what_no_longer_fits(
    bootstrap: str, uid: str, guarantee: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The limits were read at start; the routed topic then takes smaller records, and the
    broker refuses an output. At-least-once: the worker reads the limits again, dead-letters
    it and goes on. Exactly-once: the worker exits 1 with one line (its transactional
    producer cannot be reset safely), and the restarted worker dead-letters it."""
    settings, topic = await setup(bootstrap, uid, guarantee)
    bootstrap_servers = settings.kafka.bootstrap_servers
    await traffic.produce(bootstrap_servers, topic, [traffic.Event(b"a", confident(0), [], None)])
    events = [
        traffic.Event(b"b", confident(1, padding=3000), [], None),
        traffic.Event(b"c", confident(2), [], None),
    ]
    if guarantee == "at_least_once":
        async with running_worker(settings):
            await wait_until_committed(settings)  # started, limits read
            await lower_routed_limit(settings, 2000)
            await traffic.produce(bootstrap_servers, topic, events)
            await wait_until_committed(settings, timeout_s=60)
    else:
        stop = asyncio.Event()
        first = asyncio.create_task(serve(settings, stop))
        await wait_until_committed(settings)
        await lower_routed_limit(settings, 2000)
        await traffic.produce(bootstrap_servers, topic, events)
        assert await asyncio.wait_for(first, timeout=60) == 1
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("the broker refused a record" in e for e in errors), errors
        async with running_worker(settings):
            await wait_until_committed(settings, timeout_s=60)
    outputs = await read_outputs(settings)
    assert {orjson.loads(r.value)["id"] for r in outputs.routed} == {"e-0", "e-2"}
    (dead,) = outputs.dead
    assert headers(dead)[DLQ_PREFIX + "reason"] == b"output_too_large"
    assert dead.value == events[0].value
    assert_each_input_once(
        await read_inputs(settings), outputs, exactly_once=guarantee == "exactly_once"
    )
