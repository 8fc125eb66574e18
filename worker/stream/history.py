"""The config history: every routing config a worker runs, recorded in a compacted topic.

Key: the ``config_version`` (UTF-8). Value: the routing document, exactly the bytes the version
is the SHA-256 of (``worker.core.settings.routing_document``). The worker writes it on start,
before it routes anything, and after every applied reload, with an idempotent producer and
waiting for the acknowledgement; replicas writing the same version write the same record, and
compaction keeps one. A version already in the history is not written again, so that
compaction cannot replace its first record by a later one and move its first-seen time.
``config show``, ``config history`` and ``replay --as-published`` read it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson
from aiokafka.errors import KafkaError

from worker.core.kafka_settings import KafkaSettings
from worker.core.settings import Settings, routing_document, version_of
from worker.stream import admin
from worker.stream.connections import FatalError, make_producer, start_within, stop_within

log = logging.getLogger(__name__)

# One partition keeps the versions in the order they were written.
TOPIC_CONFIG = {"cleanup.policy": "compact"}
PARTITIONS = 1


@dataclass(frozen=True, slots=True)
class Entry:
    """One version of the history: its document, and when it was first recorded."""

    version: str
    document: bytes
    first_seen_ms: int  # the earliest record timestamp of this version still in the topic


async def publish(settings: Settings) -> None:
    """Record ``settings``' routing config in the history topic unless it is there already;
    ``FatalError`` if it cannot."""
    kafka = settings.kafka
    topic = settings.outputs.config_history
    try:
        known = {e.version for e in await read_history(kafka, topic)}
    except (KafkaError, LookupError, TimeoutError) as exc:  # writing again is harmless
        log.warning("config history %s not read (%s: %s); recording anyway", topic,
                    type(exc).__name__, exc)  # fmt: skip
        known = set()
    if settings.config_version in known:
        log.info("config %s is in the history already", settings.config_version)
        return
    producer = make_producer(kafka)
    await start_within(producer, kafka, "config history producer")
    try:
        await producer.send_and_wait(
            topic, routing_document(settings), key=settings.config_version.encode()
        )
    except KafkaError as exc:
        raise FatalError(
            f"cannot record config {settings.config_version} in {topic}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    finally:
        await stop_within(producer, "config history producer")
    log.info("config %s recorded in %s", settings.config_version, topic)


async def read_history(kafka: KafkaSettings, topic: str) -> list[Entry]:
    """Every version in the history, oldest first; ``LookupError`` if the topic is missing.

    Read from the beginning to the end offsets of now, committed records only. A record whose
    value does not hash to its key, or is no routing document, was not written by a worker and
    is left out.
    """
    if not await admin.partitions(kafka, [topic]):
        raise LookupError(f"topic {topic} does not exist (the config history)")
    found: dict[str, Entry] = {}
    for record in await admin.read_topic(kafka, topic):
        if record.key is None or record.value is None:
            continue
        version = record.key.decode(errors="replace")
        if version_of(record.value) != version or not _routing_document(record.value):
            continue
        seen = found.get(version)
        first = record.timestamp if seen is None else min(seen.first_seen_ms, record.timestamp)
        found[version] = Entry(version, record.value, first)
    return sorted(found.values(), key=lambda e: (e.first_seen_ms, e.version))


def _routing_document(value: bytes) -> bool:
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("topics"), dict)


async def create_topic(kafka: KafkaSettings, topic: str) -> None:
    """Create the history topic, compacted, unless it exists (for the demo and tests)."""
    await admin.create_topics(kafka, [topic], PARTITIONS, TOPIC_CONFIG)
