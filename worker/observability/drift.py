"""``logit_router_drift_psi{topic,measure}``: the PSI of the last window against a reference.

Each topic with a ``[topics."NAME".drift]`` reference keeps the bin counts of its last window
(``worker.core.drift.SlidingCounts``); a batch adds to them with one ``observe`` call per topic
(a ``bincount``, whatever the batch's size). The PSI itself is worked out when Prometheus
scrapes, and at most once every ``EVERY_S`` seconds per topic, never per event. Below the
topic's ``min_events`` in the window the gauge reads NaN: too few events to say anything.

Collection runs on the worker's event loop, as the updates do, so no lock is needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from worker.core import drift
from worker.core.settings import Settings
from worker.core.topic_settings import DriftWatch

NAME = "logit_router_drift_psi"
DOC = (
    "Population stability index of the margin or top-1 distribution of the last window "
    "against the topic's reference (NaN while the window has too few events)."
)
EVERY_S = 5.0  # the longest a scrape may see a PSI that is out of date


class _Watch:
    def __init__(self, config: DriftWatch) -> None:
        self.config = config
        self.reference = config.loaded()
        self.window = drift.SlidingCounts(config.window_s)
        self.psi: dict[str, float] = dict.fromkeys(drift.MEASURES, math.nan)
        self.computed_at = -math.inf

    def refresh(self, now: float) -> None:
        if now - self.computed_at < EVERY_S:
            return
        self.computed_at = now
        counts = self.window.counts(now)
        enough = int(counts[drift.MEASURES[0]].sum()) >= self.config.min_events
        for m in drift.MEASURES:
            self.psi[m] = drift.psi(self.reference.counts(m), counts[m]) if enough else math.nan


class DriftGauges:
    """The drift gauge of every topic that names a reference; registered in ``registry``."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._watches: dict[str, _Watch] = {}
        self.configure(settings)
        registry.register(self)

    def configure(self, settings: Settings) -> None:
        """Follow the config: a new or changed window starts empty; a new reference alone
        keeps the window's counts (the bins are fixed) and is compared from the next scrape."""
        watches: dict[str, _Watch] = {}
        for topic, tp in settings.topics.items():
            if tp.drift is None:
                continue
            old = self._watches.get(topic)
            watch = _Watch(tp.drift)
            if old is not None and old.config.window_s == tp.drift.window_s:
                watch.window = old.window
            watches[topic] = watch
        self._watches = watches

    def observe(
        self, topic: str, margins: Sequence[float] | np.ndarray, top1s: Sequence[float] | np.ndarray
    ) -> None:
        """One batch's scored events of ``topic`` (margins and top-1 probabilities)."""
        watch = self._watches.get(topic)
        if watch is not None and len(margins):
            watch.window.add(self._clock(), {"margin": margins, "top1": top1s})

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(NAME, DOC, labels=["topic", "measure"])]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(NAME, DOC, labels=["topic", "measure"])
        now = self._clock()
        for topic, watch in sorted(self._watches.items()):
            watch.refresh(now)
            for m in drift.MEASURES:
                family.add_metric([topic, m], watch.psi[m])
        yield family
