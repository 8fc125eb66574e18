"""The benchmark's paced load on a real broker: it sends the count asked for, going round a
smaller pool of prepared events, each one stamped with the time it was due; and the settings
the benchmark gives its own broker are ones a broker applies."""

from __future__ import annotations

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bench.load import paced, prepare
from bench.probe import sent_ns
from bench.run import BROKER_CONFIG
from worker.core.kafka_settings import KafkaSettings
from worker.devkit.broker import throwaway_broker
from worker.stream import admin

pytestmark = pytest.mark.integration

RATE = 2_000.0


async def test_the_paced_load_goes_round_its_pool_and_stamps_every_event(
    bootstrap: str, uid: str
) -> None:
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    topic = f"paced-{uid}"
    await admin.create_topics(kafka, [topic], partitions=1)
    pool = prepare({topic: 3}, 7, seed=11)
    window = await paced(bootstrap, pool, RATE, count=50, warmup=10)
    records = await admin.read_topic(kafka, topic)
    assert len(records) == 50
    # The prepared events in order, round and round: the 8th is the 1st again.
    assert [r.key for r in records] == [pool[i % 7].key for i in range(50)]
    stamps = [sent_ns(r.value) for r in records]
    stamped = [s for s in stamps if s is not None]
    documents = sum(p.tail is not None for p in pool)
    assert len(stamped) == sum(pool[i % 7].tail is not None for i in range(50)) > documents
    # Due times one interval apart (event i at start + i / rate), never the same twice.
    due = [i for i, s in enumerate(stamps) if s is not None]
    start = stamped[0] - round(due[0] * 1e9 / RATE)
    assert stamped == [start + round(i * 1e9 / RATE) for i in due]
    # The window opens at the 11th event's due time.
    assert window.measured_from_ns == start + round(10 * 1e9 / RATE)
    for r in records:
        if sent_ns(r.value) is not None:
            assert orjson.loads(r.value)["id"]  # the document itself, stamped


async def test_the_benchs_broker_applies_every_setting_the_bench_gives_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name the broker does not know is ignored with a log line: the bench once asked for a
    topic setting (``file.delete.delay.ms``) on the broker and kept Kafka's minute."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("LOGIT_ROUTER_BROKER", "local")  # the source the bench's own broker has
    with throwaway_broker(auto_create_topics=False, extra_config=BROKER_CONFIG) as broker:
        client = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        await client.start()
        try:
            wanted = dict.fromkeys(BROKER_CONFIG)
            (response,) = await client.describe_configs(
                [ConfigResource(ConfigResourceType.BROKER, "1", wanted)]
            )
        finally:
            await client.close()
    ((error, _message, _type, _name, entries),) = response.resources
    assert error == 0
    assert {entry[0]: entry[1] for entry in entries} == BROKER_CONFIG
