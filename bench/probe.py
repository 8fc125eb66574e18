"""The latency probe, in its own process:
``python -m bench.probe BOOTSTRAP EXPECTED DEADLINE_S DUMP_PATH TOPIC...``.

It reads a contender's output topics (read_committed, from their end offsets at start), and for
every output that carries ``sent_ns`` records two latencies, in microseconds:

* receipt: this process's wall clock when the consumer hands the record over, minus
  ``sent_ns`` (what a downstream consumer sees; for exactly-once it includes waiting for the
  commit);
* append: the output record's broker timestamp (the bench creates output topics with
  ``message.timestamp.type=LogAppendTime``, 1 ms resolution) minus ``sent_ns``.

It prints ``{"ready": true}`` once positioned. After EXPECTED outputs or its deadline it reads
one line from stdin, the ``sent_ns`` at which the measured window opens (the events before it
are the warm-up; an empty line: none), and prints one JSON line with the counts and the
percentiles of the window. With a DUMP_PATH (an empty argument: none) it also writes every
sample there, warm-up included, one ``sent_ns receipt_us`` line each, in arrival order.

The consumer is librdkafka (confluent-kafka), not aiokafka: on two cores the probe's CPU comes
out of the contender's share, and at 16,000 events/s this one takes 0.10 to 0.12 of a core
where the aiokafka probe took 0.21 to 0.28 (``docs/performance.md``). It fetches in its own
thread as aiokafka's fetcher task does; ``poll`` waits for the first record, then what has
arrived with it is taken at once (``consume`` with a count waits for the count).
"""

from __future__ import annotations

import gc
import sys
import time
import uuid
from array import array

import confluent_kafka

from bench.spec import die_with_parent, report
from bench.stats import percentiles

MARK = b'"sent_ns":'
POLL_S = 0.1  # how long one poll waits for a record: also how often the deadline is checked
DRAIN = 10_000  # at most this many records taken at once after the first


def sent_ns(value: bytes | None) -> int | None:
    """The ``sent_ns`` field of a JSON value, found without decoding the whole document."""
    if value is None:
        return None
    at = value.find(MARK)
    if at < 0:
        return None
    start = at + len(MARK)
    end = start
    while end < len(value) and 48 <= value[end] <= 57:
        end += 1
    return int(value[start:end]) if end > start else None


def window(
    stamps: array[int], *latencies: array[int], measured_from_ns: int
) -> tuple[int, list[list[int]]]:
    """How many samples were stamped before ``measured_from_ns`` (the warm-up), and each of
    ``latencies`` restricted to the samples stamped from then on."""
    keep = [i for i, sent in enumerate(stamps) if sent >= measured_from_ns]
    return len(stamps) - len(keep), [[lat[i] for i in keep] for lat in latencies]


def _dump(path: str, stamps: array[int], receipt: array[int]) -> None:
    with open(path, "w") as out:
        out.writelines(f"{s} {r}\n" for s, r in zip(stamps, receipt, strict=True))


def _positioned(bootstrap: str, topics: list[str]) -> confluent_kafka.Consumer:
    """A consumer of every partition of ``topics``, from the end offsets they have now."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-probe-{uuid.uuid4().hex}",  # never joined: offsets assigned
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    starts = []
    metadata = consumer.list_topics(timeout=30)
    for topic in topics:
        for partition in sorted(metadata.topics[topic].partitions):
            tp = confluent_kafka.TopicPartition(topic, partition)
            _, end = consumer.get_watermark_offsets(tp, timeout=30)
            starts.append(confluent_kafka.TopicPartition(topic, partition, end))
    consumer.assign(starts)
    return consumer


def probe(
    bootstrap: str, expected: int, topics: list[str], deadline_s: float, dump: str | None
) -> None:
    consumer = _positioned(bootstrap, topics)
    try:
        report(ready=True)
        # No collector pauses in the figure: every record is freed by reference counting.
        gc.freeze()
        gc.disable()
        receipt: array[int] = array("q")
        append: array[int] = array("q")
        stamps: array[int] = array("q")
        seen = 0
        deadline = time.monotonic() + deadline_s
        while seen < expected and time.monotonic() < deadline:
            first = consumer.poll(POLL_S)
            if first is None:
                continue
            handed = [first, *consumer.consume(DRAIN, timeout=0)]
            now = time.time_ns()  # once all are in hand: no record is timed before it is
            for m in handed:
                error = m.error()
                if error is not None:
                    if error.fatal():
                        raise confluent_kafka.KafkaException(error)
                    continue  # a transient one: librdkafka retries by itself
                seen += 1
                sent = sent_ns(m.value())
                if sent is not None:
                    receipt.append((now - sent) // 1000)
                    stamps.append(sent)
                    append.append((m.timestamp()[1] * 1_000_000 - sent) // 1000)
        if dump:  # every sample, to see where in the phase a tail comes from
            _dump(dump, stamps, receipt)
        line = sys.stdin.readline()
        measured_from = int(line) if line.strip() else 0
        warmup, (in_receipt, in_append) = window(
            stamps, receipt, append, measured_from_ns=measured_from
        )
        report(
            outputs=seen,
            timed=len(in_receipt),
            warmup_timed=warmup,
            receipt_ms=percentiles(in_receipt),
            append_ms=percentiles(in_append),
        )
    finally:
        consumer.close()


def main(argv: list[str]) -> int:
    die_with_parent()
    bootstrap, expected, deadline, dump, *topics = argv
    probe(bootstrap, int(expected), topics, float(deadline), dump or None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
