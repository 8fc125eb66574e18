"""Traffic for the benchmark: the seeded pre-fill, and the paced producer of the latency phase.

Events come from ``worker.traffic.synthetic`` (the demo's and the tests' generator): 2 % are
malformed on purpose, 30 % uncertain. The pre-fill splits the count evenly over the three
widths (3, 10 and 100 classes), one input topic each.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import orjson
from aiokafka import AIOKafkaProducer
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from worker.traffic import synthetic

CHUNK = 20_000  # events in flight at once while pre-filling
# The paced producer sends what is due every 5 ms: as a producer with Kafka 4's default
# ``linger.ms`` of 5 (KIP-1030; librdkafka's default too) would. Every event is stamped as it
# is encoded, so the tick changes when events arrive, not what their latency means.
TICK_S = 0.005


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts differing by at most one, larger first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def prefill(bootstrap: str, topics: dict[str, int], total: int, seed: int) -> int:
    """Publish ``total`` events over ``topics`` (topic -> width); return how many were acked."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=1_048_576,
        max_request_size=8_388_608,
        acks=1,
    )
    await producer.start()
    sent = 0
    try:
        for (topic, width), count in zip(topics.items(), split(total, len(topics)), strict=True):
            events = synthetic(count, seed=seed + width, classes=width, id_prefix=f"w{width}")
            while True:
                chunk = [
                    await producer.send(topic, e.value, key=e.key, headers=e.headers)
                    for _, e in zip(range(CHUNK), events, strict=False)
                ]
                if not chunk:
                    break
                await asyncio.gather(*chunk)
                sent += len(chunk)
    finally:
        await producer.stop()
    return sent


class Prepared(NamedTuple):
    topic: str
    value: bytes  # malformed bytes as they are, or a document open for its stamp (below)
    stamped: bool  # ``value + b'<sent_ns>}'`` is the event: orjson's bytes with the field last
    key: bytes | None
    headers: list[tuple[str, bytes]]


def prepare(topics: dict[str, int], count: int, seed: int) -> list[Prepared]:
    """``count`` events, round robin over the topics (topic -> width)."""
    per_topic = -(-count // len(topics))
    streams = [
        (topic, synthetic(per_topic, seed=seed + 7 * width, classes=width, id_prefix=f"l{width}"))
        for topic, width in topics.items()
    ]
    out: list[Prepared] = []
    while len(out) < count:
        for topic, events in streams:
            e = next(events)
            if e.expect_dead_letter:
                out.append(Prepared(topic, e.value, False, e.key, e.headers))
            else:
                # The document with its generation stamp taken out and ``"sent_ns":`` last,
                # less the stamp and "}": they are written as the event goes out.
                doc = orjson.loads(e.value)
                doc.pop("sent_ns", None)
                open_doc = orjson.dumps(doc)[:-1] + b',"sent_ns":'
                out.append(Prepared(topic, open_doc, True, e.key, e.headers))
    return out[:count]


class Window(NamedTuple):
    """What the paced producer did: its rate over the whole phase, and the stamp of the first
    event after the warm-up (every earlier event carries a smaller ``sent_ns``)."""

    achieved_rate: float
    measured_from_ns: int


class _Delivery:
    """Counts the delivery reports of the paced producer; the first failure is kept."""

    def __init__(self) -> None:
        self.acked = 0
        self.error: KafkaError | None = None

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.acked += 1
        elif self.error is None:
            self.error = err


async def paced(
    bootstrap: str,
    prepared: Sequence[Prepared],
    rate: float,
    warmup: int = 0,
    on_measure: Callable[[], None] | None = None,
) -> Window:
    """Send the ``prepared`` events at ``rate`` per second, each stamped with ``sent_ns``.

    The first ``warmup`` events are the warm-up: the same load, before the window that the
    percentiles are taken over (``Window.measured_from_ns``); ``on_measure`` is called as the
    window opens. Events are encoded before the clock starts; only the stamp is written on
    the way out.

    The load is an instrument on the contenders' two cores, so it publishes with librdkafka
    (confluent-kafka, installed with Quix Streams), whose batching and sending run in C
    threads: with aiokafka the same load took a quarter of a core at 10,000 events/s. Keys
    are partitioned with murmur2 (``murmur2_random``), as the Java client and aiokafka do:
    librdkafka's own default would put them elsewhere. The garbage collector is frozen and
    off while pacing: a full collection with the prepared events alive took 300 to 360 ms,
    and every contender's tail latency carried those pauses.
    """
    count = len(prepared)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 0,  # the tick below is the linger
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": max(100_000, count),
        }
    )
    delivery = _Delivery()
    measured_from = 0
    gc.freeze()
    gc.disable()
    try:
        started = time.monotonic()
        sent = 0
        while sent < count:
            due = min(count, int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                p = prepared[sent]
                if sent == warmup:
                    measured_from = time.time_ns()
                    if on_measure is not None:
                        on_measure()
                value = p.value + b"%d}" % time.time_ns() if p.stamped else p.value
                producer.produce(p.topic, value, p.key, headers=p.headers, on_delivery=delivery)
                sent += 1
            producer.poll(0)  # delivery reports
            await asyncio.sleep(TICK_S)
        elapsed = time.monotonic() - started
        left = await asyncio.to_thread(producer.flush, 60)
    finally:
        gc.enable()
        gc.unfreeze()
    if delivery.error is not None or left or delivery.acked != count:
        raise KafkaException(
            delivery.error or f"the paced load: {delivery.acked} of {count} events acknowledged"
        )
    if warmup >= count:  # nothing after the warm-up: an empty window
        measured_from = time.time_ns()
    return Window(count / elapsed if elapsed > 0 else float(count), measured_from)
