"""``logit-router demo``: the whole flow on a throwaway broker, then a summary.

Starts a broker (see ``worker.devkit.broker``), creates two input topics with different
temperatures, the three outputs and the config history, runs the worker, publishes the lab's
example and synthetic traffic (confident, uncertain and malformed), waits until the worker has
committed every input offset, reads the outputs back, prints a human summary and a last line
of JSON, and cleans up.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from typing import Any, TextIO

import orjson

from worker.core.records import DLQ_PREFIX
from worker.core.settings import Settings
from worker.devkit import traffic
from worker.devkit.broker import throwaway_broker
from worker.stream import admin, history
from worker.stream.service import install_stop_handlers, run_loop, serve

log = logging.getLogger(__name__)

SUPPORT = "support.intents"
FRAUD = "fraud.scores"
SUPPORT_LABELS = ("billing", "tech", "sales")


def demo_settings(bootstrap_servers: str, http_port: int) -> Settings:
    return Settings(
        kafka={"bootstrap_servers": bootstrap_servers, "group_id": "logit-router-demo"},
        topics={
            SUPPORT: {"temperature": 0.7, "min_margin": 0.15, "labels": SUPPORT_LABELS},
            FRAUD: {"temperature": 1.5, "min_margin": 0.30, "min_top1": 0.60},
        },
        http={"port": http_port},
    )


def run_demo(events: int, http_port: int, keep_running: bool, out: TextIO = sys.stdout) -> int:
    with throwaway_broker(auto_create_topics=False) as broker:
        out.write(f"Kafka broker ({broker.source}) at {broker.bootstrap_servers}\n")
        settings = demo_settings(broker.bootstrap_servers, http_port)
        return run_loop(lambda: _demo(settings, events, keep_running, out))


async def _demo(settings: Settings, events: int, keep_running: bool, out: TextIO) -> int:
    kafka = settings.kafka
    outputs = settings.outputs
    big = {"max.message.bytes": "8388608"}
    await admin.create_topics(kafka, [SUPPORT, FRAUD], partitions=3, configs=big)
    await admin.create_topics(
        kafka, [outputs.routed, outputs.escalated, outputs.dead_letter], 3, big
    )
    await history.create_topic(kafka, outputs.config_history)
    stop = asyncio.Event()
    install_stop_handlers(stop)
    ports: list[int] = []
    worker_task = asyncio.create_task(
        serve(settings, stop, on_ready=lambda _w, http: ports.append(http.port) if http else None)
    )
    started = time.monotonic()
    sent = await traffic.produce(kafka.bootstrap_servers, SUPPORT, [traffic.lab_event()])
    sent += await traffic.produce(
        kafka.bootstrap_servers, SUPPORT, traffic.synthetic(events, seed=1, classes=3)
    )
    sent += await traffic.produce(
        kafka.bootstrap_servers, FRAUD, traffic.synthetic(events, seed=2, classes=2)
    )
    ends = await admin.end_offsets(kafka, [SUPPORT, FRAUD])
    committed = await admin.wait_for_commits(kafka, kafka.group_id, ends, timeout_s=120)
    elapsed = time.monotonic() - started
    if worker_task.done() or any(committed[tp] < end for tp, end in ends.items()):
        stop.set()
        code = await worker_task
        out.write(f"demo failed: the worker did not process every event (exit {code})\n")
        return 1
    counts, lab = await _read_outputs(settings)
    _print_summary(out, counts, lab, sent, elapsed, ports[0] if ports else None)
    if keep_running and ports:
        out.write(f"still running: http://127.0.0.1:{ports[0]}/metrics (Ctrl-C to stop)\n")
        out.flush()
    else:
        stop.set()
    return await worker_task


async def _read_outputs(settings: Settings) -> tuple[dict[str, Counter[str]], dict[str, Any]]:
    """Counts per input topic and decision, read back from the three output topics."""
    kafka = settings.kafka
    counts: dict[str, Counter[str]] = {t: Counter() for t in settings.topics}
    lab: dict[str, Any] = {}
    for topic in (settings.outputs.routed, settings.outputs.escalated):
        for rec in await admin.read_topic(kafka, topic):
            doc = orjson.loads(rec.value)
            counts[doc["source"]["topic"]][doc["decision"]] += 1
            if doc.get("id") == "lab-03":
                lab = doc
    for rec in await admin.read_topic(kafka, settings.outputs.dead_letter):
        headers = dict(rec.headers)
        counts[headers[DLQ_PREFIX + "source.topic"].decode()]["dead_letter"] += 1
    return counts, lab


def _print_summary(
    out: TextIO,
    counts: dict[str, Counter[str]],
    lab: dict[str, Any],
    sent: int,
    elapsed: float,
    port: int | None,
) -> None:
    total = sum(sum(c.values()) for c in counts.values())
    out.write(f"\n{sent} events published, {total} outputs read back in {elapsed:.1f}s\n")
    for topic, c in sorted(counts.items()):
        n = sum(c.values())
        out.write(
            f"  {topic:<16} {n:>6} in: {c['routed']:>6} routed, {c['escalated']:>5} escalated,"
            f" {c['dead_letter']:>4} dead-letter ({c['escalated'] / max(n, 1):.1%} escalated)\n"
        )
    if lab:
        probs = ", ".join(f"{p:.4f}" for p in lab["probabilities"])
        out.write(
            f"  lab example [3.2, 2.8, 0.5] at T={lab['temperature']}: [{probs}],"
            f" margin {lab['margin']:.4f} -> {lab['decision']} as {lab['label']!r}\n"
        )
    if port:
        out.write(f"  metrics were served at http://127.0.0.1:{port}/metrics\n")
    summary = {
        "published": sent,
        "outputs": total,
        "counts": {t: {d: c[d] for d in ("routed", "escalated", "dead_letter")}
                   for t, c in sorted(counts.items())},
        "lab": {k: lab.get(k) for k in ("probabilities", "margin", "decision", "label")},
    }  # fmt: skip
    out.write(orjson.dumps(summary).decode() + "\n")
    out.flush()
