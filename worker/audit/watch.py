"""``calibrate --watch``: a process beside the worker that follows a topic's calibration live.

It reads the escalated and verdicts topics (and the routed one with ``--ground-truth``) from
``now - window`` on, with one consumer outside any group that keeps its positions (each record
is read once), feeds a
``worker.audit.livewindow.LiveWindow``, and every ``interval`` works the figures out again
from the window in memory and sets the gauges that ``/metrics`` serves. The worker's hot path
is untouched: it never sees a verdict.

Partitions are those of the three topics when the monitor starts; partitions added later are
not read until it restarts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from dataclasses import dataclass

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from worker.audit import calibrate, ranges
from worker.audit.livewindow import RESULTS, Figures, LiveWindow
from worker.core.settings import Settings
from worker.observability.health import HealthServer
from worker.stream import admin
from worker.stream.service import install_stop_handlers

log = logging.getLogger(__name__)

FETCH_RECORDS = 10_000


@dataclass(frozen=True)
class WatchOptions:
    topic: str
    verdicts: str
    window_s: float
    interval_s: float
    min_verdicts: int
    max_outputs: int
    max_verdicts: int
    ground_truth: bool
    host: str
    port: int


class Gauges:
    """The monitor's metrics, in a registry of its own."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.registry = CollectorRegistry()
        r = self.registry
        self.ece = Gauge(
            "logit_router_calibration_error",
            "Expected calibration error (15 bins) of the verdicts in the window, at the config's "
            "temperature (live) or the fitted one; NaN below the minimum verdict count.",
            ["topic", "temperature", "binning"],
            registry=r,
        )
        self.fitted = Gauge(
            "logit_router_calibration_fitted_temperature",
            "The temperature that minimises the weighted NLL of the verdicts in the window.",
            ["topic"],
            registry=r,
        )
        self.live = Gauge(
            "logit_router_calibration_live_temperature",
            "The topic's temperature in the monitor's config.",
            ["topic"],
            registry=r,
        )
        self.verdicts = Gauge(
            "logit_router_calibration_verdicts",
            "Verdicts in the window by what became of them (unknown_id: no kept output).",
            ["topic", "result"],
            registry=r,
        )
        self.kept = Gauge(
            "logit_router_calibration_kept_outputs",
            "Outputs held in memory for the join.",
            ["topic"],
            registry=r,
        )
        self.records = Counter(
            "logit_router_calibration_records",
            "Records read since the monitor started, by stream (outputs, verdicts).",
            ["topic", "stream"],
            registry=r,
        )
        self.dropped = Counter(
            "logit_router_calibration_dropped",
            "Records dropped over a cap before leaving the window, by store.",
            ["topic", "store"],
            registry=r,
        )
        self.updated = Gauge(
            "logit_router_calibration_last_update_timestamp_seconds",
            "When the figures were last worked out (Unix time): a stalled monitor stops it.",
            ["topic"],
            registry=r,
        )
        for stream in ("outputs", "verdicts"):
            self.records.labels(topic, stream)
            self.dropped.labels(topic, stream)
        self.show(Figures(dict.fromkeys(RESULTS, 0), {}, math.nan, 0, 0), math.nan, {})

    def show(self, f: Figures, live_temperature: float, dropped: dict[str, int]) -> None:
        t = self.topic
        for temperature in ("live", "fitted"):
            for binning in ("equal_width", "adaptive"):
                value = f.ece.get((temperature, binning), math.nan)
                self.ece.labels(t, temperature, binning).set(value)
        self.fitted.labels(t).set(f.fitted)
        self.live.labels(t).set(live_temperature)
        for result in RESULTS:
            self.verdicts.labels(t, result).set(f.counts[result])
        self.kept.labels(t).set(f.kept_outputs)
        for store, n in dropped.items():
            self.dropped.labels(t, store).inc(n)


async def watch(settings: Settings, opts: WatchOptions, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set. Raises ``LookupError`` for a missing topic."""
    policy = settings.topics[opts.topic]
    window_ms = int(opts.window_s * 1000)
    start = ranges.Bound("now - window", timestamp_ms=int(time.time() * 1000) - window_ms)
    # Only escalated events can take a verdict unless every event gets one (--ground-truth):
    # the routed topic, most of the traffic, is then not read at all.
    kept = {settings.outputs.escalated}
    if opts.ground_truth:
        kept.add(settings.outputs.routed)
    output_topics = sorted(kept)
    spans = [
        span
        for name in [*output_topics, opts.verdicts]
        for span in await ranges.resolve(settings.kafka, name, start, None)
    ]
    window = LiveWindow(
        opts.topic,
        settings.limits,
        window_ms,
        opts.ground_truth,
        opts.max_outputs,
        opts.max_verdicts,
    )
    gauges = Gauges(opts.topic)
    updated = False
    server = HealthServer(gauges.registry, lambda: updated, opts.host, opts.port)
    await server.start()
    sys.stderr.write(
        f"logit-router calibrate: watching {opts.topic}; /metrics on "
        f"http://{opts.host}:{server.port}\n"
    )
    sys.stderr.flush()
    warned = False
    dropped_before: dict[str, int] = {}
    try:
        async with admin.standalone_consumer(settings.kafka) as consumer:
            tps = [TopicPartition(s.topic, s.partition) for s in spans]
            consumer.assign(tps)
            for span, tp in zip(spans, tps, strict=True):
                consumer.seek(tp, span.start)
            due = time.monotonic()
            while not stop.is_set():
                wait_ms = max(0, min(500, int((due - time.monotonic()) * 1000)))
                fetched = await consumer.getmany(timeout_ms=wait_ms, max_records=FETCH_RECORDS)
                for tp, records in fetched.items():
                    stream = "verdicts" if tp.topic == opts.verdicts else "outputs"
                    for rec in records:
                        if stream == "verdicts":
                            window.add_verdict(rec.value, rec.timestamp, tp.partition, rec.offset)
                        else:
                            window.add_output(rec.value, rec.timestamp)
                    gauges.records.labels(opts.topic, stream).inc(len(records))
                if time.monotonic() < due:
                    continue
                due = time.monotonic() + opts.interval_s
                try:
                    # On a thread, so that /metrics answers during a long refresh; nothing
                    # else touches the window meanwhile (this loop is its only writer).
                    figures = await asyncio.to_thread(
                        window.figures, int(time.time() * 1000), policy, opts.min_verdicts
                    )
                except calibrate.CalibrationRefused as exc:
                    if not warned:
                        sys.stderr.write(f"logit-router calibrate: {exc}\n")
                        warned = True
                    continue
                new_drops = {k: n - dropped_before.get(k, 0) for k, n in window.dropped.items()}
                dropped_before = dict(window.dropped)
                gauges.show(figures, policy.temperature, new_drops)
                gauges.updated.labels(opts.topic).set(time.time())
                updated = True
    finally:
        await server.stop()


async def run(settings: Settings, opts: WatchOptions) -> None:
    """``watch`` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    install_stop_handlers(stop)
    await watch(settings, opts, stop)
