"""Seeded synthetic traffic: the lab's example, confident and uncertain events, and malformed
records of every kind the worker must dead-letter. Used by ``demo``, the tests, the benchmarks
and the docker-compose sample producer (``python -m worker.devkit.traffic``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import orjson
from aiokafka import AIOKafkaProducer

from worker.stream.service import install_stop_handlers

LAB_LOGITS = (3.2, 2.8, 0.5)

# Raw values that are not valid events, one per dead-letter reason they should produce.
MALFORMED: tuple[tuple[str, bytes], ...] = (
    ("not_utf8", b'{"id": "\xff\xfe", "logits": [1, 2]}'),
    ("not_json", b"this is not json"),
    ("non_finite_number", b'{"id": "nan", "logits": [NaN, 1.0]}'),
    ("non_finite_number", b'{"id": "big", "logits": [1e999, 1.0]}'),
    ("not_object", b"[3.2, 2.8, 0.5]"),
    ("missing_field", b'{"logits": [3.2, 2.8]}'),
    ("wrong_type", b'{"id": "str", "logits": ["3.2", "2.8"]}'),
    ("wrong_type", b'{"id": "bool", "logits": [true, false]}'),
    ("too_few_classes", b'{"id": "one", "logits": [1.0]}'),
    ("labels_length_mismatch", b'{"id": "lab", "logits": [1, 2, 3], "labels": ["a", "b"]}'),
)


class Event(NamedTuple):
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    expect_dead_letter: str | None  # the reason, when the record is malformed on purpose


def synthetic(
    n: int,
    *,
    seed: int,
    classes: int = 3,
    labels: Sequence[str] | None = None,
    malformed_rate: float = 0.02,
    uncertain_rate: float = 0.3,
    id_prefix: str = "evt",
) -> Iterator[Event]:
    """``n`` events: some confident, some uncertain (two close logits), some malformed."""
    rng = random.Random(seed)
    for i in range(n):
        key = f"user-{rng.randrange(1000)}".encode()
        headers = [("trace-id", f"{seed:x}-{i:x}".encode())]
        if rng.random() < malformed_rate:
            reason, raw = MALFORMED[rng.randrange(len(MALFORMED))]
            yield Event(key, raw, headers, reason)
            continue
        logits = [rng.gauss(0.0, 1.0) for _ in range(classes)]
        top = rng.randrange(classes)
        if rng.random() < uncertain_rate:
            other = (top + 1) % classes
            logits[top] = logits[other] + rng.uniform(0.0, 0.3)
        else:
            logits[top] = max(logits) + rng.uniform(1.0, 4.0)
        doc: dict[str, object] = {
            "id": f"{id_prefix}-{seed}-{i}",
            "logits": logits,
            "model": "synthetic-v1",
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sent_ns": time.time_ns(),
        }
        if labels is not None:
            doc["labels"] = list(labels)
        yield Event(key, orjson.dumps(doc), headers, None)


def lab_event(labels: Sequence[str] | None = None) -> Event:
    doc: dict[str, object] = {"id": "lab-03", "logits": list(LAB_LOGITS), "model": "lab"}
    if labels is not None:
        doc["labels"] = list(labels)
    return Event(b"lab", orjson.dumps(doc), [], None)


def _producer(bootstrap_servers: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=8_388_608,
    )


async def send_all(
    producer: AIOKafkaProducer, topic: str, events: Sequence[Event] | Iterator[Event]
) -> int:
    """Publish events in order and wait for every acknowledgement; return how many."""
    futures = [await producer.send(topic, e.value, key=e.key, headers=e.headers) for e in events]
    await asyncio.gather(*futures)
    return len(futures)


async def produce(
    bootstrap_servers: str, topic: str, events: Sequence[Event] | Iterator[Event]
) -> int:
    producer = _producer(bootstrap_servers)
    await producer.start()
    try:
        return await send_all(producer, topic, events)
    finally:
        await producer.stop()


async def _produce_forever(args: argparse.Namespace) -> None:
    """The compose sample producer: a steady rate over the given topics, until SIGINT or
    SIGTERM. A stop lets the second in progress finish and flushes the producer, rather than
    cancelling sends half way (a second signal exits at once); it says so on stderr, where
    ``docker compose logs`` shows it."""
    stop = asyncio.Event()
    install_stop_handlers(stop)
    producer = _producer(args.bootstrap_servers)
    await producer.start()
    try:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            for topic in args.topics:
                await send_all(producer, topic, synthetic(args.rate, seed=i, id_prefix=topic))
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, 1.0 - (time.monotonic() - started)))
        sys.stderr.write(f"traffic: stopping after {i} seconds of events; flushing\n")
    finally:
        await producer.stop()
    sys.stderr.write("traffic: stopped\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.devkit.traffic")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topics", nargs="+", required=True)
    parser.add_argument("--rate", type=int, default=50, help="events per second per topic")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_produce_forever(args))
    except KeyboardInterrupt:  # SIGINT before the stop handlers were installed
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
