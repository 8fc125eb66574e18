"""Prometheus metrics, prefix ``logit_router_``, base units, ``_total`` on counters.

Labels come only from small fixed sets: topics named in the config, decisions and reason codes
(a reason outside the known codes is counted as ``other``, so a label set never grows at run
time). Every labelled child is created up front, so a dashboard reads 0, not "no data", from the
start. The object takes its registry: tests pass a fresh ``CollectorRegistry``.
docs/observability.md lists every metric with its unit and labels.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from itertools import chain
from operator import attrgetter
from typing import get_args

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from worker import __version__
from worker.core import native
from worker.core.changes import RESULTS
from worker.core.events import Reason
from worker.core.records import INTERNAL_ERROR, Kind, Outbound, WriteRefusal
from worker.core.routing import AUDIT_SAMPLE, Decision, EscalationReason
from worker.core.settings import BATCH_RECORDS, EXACTLY_ONCE_BATCH_RECORDS, Settings
from worker.observability.drift import DriftGauges
from worker.observability.histograms import BatchHistogram

DECISIONS: tuple[str, ...] = get_args(Kind)
ESCALATION_REASONS: tuple[str, ...] = get_args(EscalationReason)
# The two policies' decisions, live and shadow (a dead letter has neither).
POLICY_DECISIONS: tuple[str, ...] = get_args(Decision)
# Decoding refusals (core.events) and scoring refusals (core.routing), then the catch-all.
# Refusals after decoding: by the core (routing.ScoringError) or when writing the output.
SCORING_REASONS = (
    "topic_labels_mismatch",
    "nan_logit",
    "pos_inf_logit",
    "no_finite_logit",
    "not_encodable",
    INTERNAL_ERROR,
)
OTHER_REASON = "other"
DEAD_LETTER_REASONS: tuple[str, ...] = (
    *get_args(Reason),
    *SCORING_REASONS,
    *get_args(WriteRefusal),
    OTHER_REASON,
)

# Dense below 0.3, where escalation thresholds live, coarser above: enough to draw the
# distribution on [0, 1] as a heatmap and to read quantiles near a threshold.
UNIT_BUCKETS = (
    *(round(0.01 * i, 2) for i in range(1, 30)),
    *(round(0.05 * i, 2) for i in range(6, 20)),
    0.97,
    0.99,
    1.0,
)
ENTROPY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# What ``record_outputs`` reads of each output, in C.
_LABELS = attrgetter("source_topic", "kind", "reason", "shadow")
_SOURCE_TOPIC = attrgetter("source_topic")
_TIMESTAMP = attrgetter("source_timestamp")
_SCORES = attrgetter("scores")


class Metrics:
    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        # prometheus-client would add a ``*_created`` gauge beside every counter and histogram
        # child: twice the series for a start time that Prometheus does not use. (Process-wide
        # switch of the client library; it only affects metrics created after it.)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the client
        topics = sorted(settings.topics)
        p = "logit_router_"
        self.registry = registry

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(p + name, doc, list(labels), registry=registry)

        def seconds(name: str, doc: str) -> Histogram:
            return Histogram(p + name, doc, buckets=SECONDS_BUCKETS, registry=registry)

        def per_topic(name: str, doc: str, buckets: Sequence[float]) -> BatchHistogram:
            # Observed once per batch (observability.histograms), not once per event.
            return BatchHistogram(p + name, doc, topics, buckets, registry)

        self.events = counter(
            "events_total", "Events processed, by input topic and decision.", ["topic", "decision"]
        )
        self.escalations = counter(
            "escalations_total", "Escalated events, by input topic and reason.", ["topic", "reason"]
        )
        self.dead_letters = counter(
            "dead_letters_total",
            "Dead-lettered events, by input topic and reason.",
            ["topic", "reason"],
        )
        self.shadow_decisions = counter(
            "shadow_decisions_total",
            "Scored events of topics with a shadow policy, by the live policy's decision (an "
            "audit sample counts as routed, as its policy decided) and the shadow's.",
            ["topic", "live", "shadow"],
        )
        self.margin = per_topic(
            "margin", "Confidence margin (top-1 minus top-2 probability) of scored events.",
            UNIT_BUCKETS,
        )  # fmt: skip
        self.top1 = per_topic(
            "top1_probability", "Top-1 probability of scored events.", UNIT_BUCKETS
        )
        self.entropy = per_topic(
            "entropy_nats", "Entropy of the probabilities of scored events, in nats.",
            ENTROPY_BUCKETS,
        )  # fmt: skip
        self.batch_seconds = seconds(
            "batch_duration_seconds", "Time to score, publish and commit one batch."
        )
        # Each guarantee's default bound is a bucket bound, so full batches, the sign of a
        # backlog, can be counted.
        self.batch_records = Histogram(
            p + "batch_records", "Records per processed batch.",
            buckets=sorted({1, 10, 50, 100, 250, 500, 1000, BATCH_RECORDS,
                            EXACTLY_ONCE_BATCH_RECORDS, 10000}),
            registry=registry,
        )  # fmt: skip
        self.latency = per_topic(
            "end_to_end_latency_seconds",
            "From the input record's timestamp to its output being acknowledged.",
            LATENCY_BUCKETS,
        )
        self.produce_seconds = seconds(
            "produce_ack_duration_seconds", "Time for a batch's outputs to be acknowledged."
        )
        self.commit_seconds = seconds(
            "commit_duration_seconds", "Time to commit a batch's input offsets."
        )
        self.commit_failures = counter(
            "commit_failures_total", "Offset commits that failed (the batch is redelivered)."
        )
        self.lag = Gauge(
            p + "consumer_lag_records", "Records behind the end of each assigned partition.",
            ["topic", "partition"], registry=registry,
        )  # fmt: skip
        self.last_processed = Gauge(
            p + "last_processed_timestamp_seconds",
            "Unix time when the last batch was committed.",
            registry=registry,
        )  # fmt: skip
        self.assigned = Gauge(
            p + "assigned_partitions", "Input partitions assigned to this worker.",
            registry=registry,
        )  # fmt: skip
        self.loop_cpu = Gauge(
            p + "event_loop_cpu_ratio",
            "Share of a core the event loop's thread used over the last second.",
            registry=registry,
        )  # fmt: skip
        self.fetch_min_bytes = Gauge(
            p + "fetch_min_bytes", "Bytes a fetch waits for now (follows the event loop's load).",
            registry=registry,
        )  # fmt: skip
        self.fetch_min_bytes.set(settings.kafka.fetch_min_bytes)  # the light fetch, at start
        self.rebalances = Counter(
            p + "rebalances_total", "Partition assignments received from the group.",
            registry=registry,
        )  # fmt: skip
        # Exposed as ``logit_router_build_info`` (the client appends ``_info``), value 1.
        self.info = Info(
            p + "build",
            "Worker version, hash of its routing config, its hot path (compiled or python).",
            registry=registry,
        )
        # The policy of each topic, so a dashboard can draw the threshold over the distribution.
        self.policy_temperature = Gauge(
            p + "policy_temperature", "Softmax temperature configured for the input topic.",
            ["topic"], registry=registry,
        )  # fmt: skip
        self.policy_min_margin = Gauge(
            p + "policy_min_margin", "Margin below which an event of the topic is escalated.",
            ["topic"], registry=registry,
        )  # fmt: skip
        self.policy_min_top1 = Gauge(
            p + "policy_min_top1",
            "Top-1 probability below which an event is escalated (topics that set one).",
            ["topic"], registry=registry,
        )  # fmt: skip
        self.config_reloads = Counter(
            p + "config_reloads_total",
            "Reloads of the config (SIGHUP, POST /-/reload), by result.",
            ["result"], registry=registry,
        )  # fmt: skip
        for result in RESULTS:
            self.config_reloads.labels(result)
        self._events: dict[tuple[str, str], Counter] = {}
        self._escalations: dict[tuple[str, str], Counter] = {}
        self._dead_letters: dict[tuple[str, str], Counter] = {}
        self._shadow_decisions: dict[tuple[str, str, str], Counter] = {}
        self.drift = DriftGauges(settings, registry)
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """The series that follow the config: at start, and after each applied reload (a new
        topic's series read 0 from then on; a removed topic's counters are kept)."""
        topics = sorted(settings.topics)
        self.drift.configure(settings)
        self.info.info(
            {
                "version": __version__,
                "config_version": settings.config_version,
                "hot_path": "compiled" if native.in_use(settings) else "python",
            }
        )
        for gauge in (self.policy_temperature, self.policy_min_margin, self.policy_min_top1):
            gauge.clear()
        for topic, tp in settings.topics.items():
            self.policy_temperature.labels(topic).set(tp.temperature)
            self.policy_min_margin.labels(topic).set(tp.min_margin)
            if tp.min_top1 is not None:
                self.policy_min_top1.labels(topic).set(tp.min_top1)
        for histogram in (self.margin, self.top1, self.entropy, self.latency):
            histogram.add_topics(topics)
        # Every child up front (so it reads 0), kept by key for the per-batch update.
        for t in topics:
            for d in DECISIONS:
                self._events.setdefault((t, d), self.events.labels(t, d))
            for r in ESCALATION_REASONS:
                self._escalations.setdefault((t, r), self.escalations.labels(t, r))
            for r in DEAD_LETTER_REASONS:
                self._dead_letters.setdefault((t, r), self.dead_letters.labels(t, r))
        for t, tp in settings.topics.items():
            if tp.shadow is None:
                continue
            for live in POLICY_DECISIONS:
                for shadow in POLICY_DECISIONS:
                    key = (t, live, shadow)
                    self._shadow_decisions.setdefault(key, self.shadow_decisions.labels(*key))

    def record_outputs(self, outputs: Sequence[Outbound], acked_at: float | None = None) -> None:
        """Count a batch whose outputs are acknowledged; observe scores and latency.

        No Python code runs per output: the label sets (topic, decision, reason, shadow) are
        tallied and the columns read in one compiled pass (``_columns``), every counter is added
        to once per batch, and each topic's values go into the histograms as numpy arrays.
        """
        now_ms = 1000 * (time.time() if acked_at is None else acked_at)
        n = len(outputs)
        if n == 0:
            return
        labels, codes, stamps, scored, values, topic_order = _columns(outputs)
        decisions: Tally[tuple[str, str]] = Tally()
        escalations: Tally[tuple[str, str]] = Tally()
        dead: Tally[tuple[str, str]] = Tally()
        pairs: Tally[tuple[str, str, str]] = Tally()
        for (topic, kind, reason, shadow), count in labels.items():
            decisions[topic, kind] += count
            if kind == "dead_letter":
                dead[topic, reason or OTHER_REASON] += count
                continue
            if reason is not None:
                escalations[topic, reason] += count
            if shadow is not None:
                live = "routed" if reason == AUDIT_SAMPLE else kind
                pairs[topic, live, shadow] += count
        for key, count in decisions.items():
            self._events[key].inc(count)
        for key, count in escalations.items():
            self._escalations[key].inc(count)
        for pair, count in pairs.items():
            self._shadow_decisions[pair].inc(count)
        for (topic, reason), count in dead.items():
            child = (
                self._dead_letters.get((topic, reason)) or self._dead_letters[topic, OTHER_REASON]
            )
            child.inc(count)
        scored_codes = codes[scored]
        waited_s = np.maximum(now_ms - stamps, 0.0) / 1000
        stamped = stamps > 0
        for i, topic in enumerate(topic_order):
            mine = values[scored_codes == i]
            self.top1.observe_many(topic, mine[:, 0])
            self.margin.observe_many(topic, mine[:, 1])
            self.entropy.observe_many(topic, mine[:, 2])
            self.drift.observe(topic, mine[:, 1], mine[:, 0])
            self.latency.observe_many(topic, waited_s[(codes == i) & stamped])

    def set_assignment(self, partitions: Iterable[tuple[str, int]]) -> None:
        """A new assignment: lag series for exactly these partitions, each at 0 until measured."""
        parts = list(partitions)
        self.assigned.set(len(parts))
        self.lag.clear()
        for topic, partition in parts:
            self.lag.labels(topic, str(partition))

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Records between the next offset to process and the partition's end (never < 0)."""
        self.lag.labels(topic, str(partition)).set(max(0, lag))


Columns = tuple[
    dict[tuple[str, str, str | None, str | None], int],
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    list[str],
]


def _columns(outputs: Sequence[Outbound]) -> Columns:
    """The label sets and their counts, each output's source topic as a small integer and its
    timestamp, whether it has scores, the (top1, margin, entropy) rows of those that do (as
    ``Summary`` orders them), and the source topics in order of first appearance. Read by the
    compiled module in one pass where it is installed, else with ``attrgetter`` in C."""
    read = native.output_columns
    if read is not None:
        label_rows, topic_order, codes, stamps, scored, values = read(list(outputs))
        return (
            {(t, kind, reason, shadow): count for t, kind, reason, shadow, count in label_rows},
            np.frombuffer(codes, np.int64),
            np.frombuffer(stamps, np.float64),
            np.frombuffer(scored, np.bool_),
            np.frombuffer(values, np.float64).reshape(-1, 3),
            topic_order,
        )
    n = len(outputs)
    labels = dict(Tally(map(_LABELS, outputs)))
    topics = list(map(_SOURCE_TOPIC, outputs))
    index = {topic: i for i, topic in enumerate(dict.fromkeys(topics))}
    codes = np.fromiter(map(index.__getitem__, topics), dtype=np.int64, count=n)
    stamps = np.fromiter(map(_TIMESTAMP, outputs), dtype=np.float64, count=n)
    summaries = list(map(_SCORES, outputs))
    scored = np.fromiter(map(bool, summaries), dtype=np.bool_, count=n)
    rows = int(scored.sum())
    values = np.fromiter(
        chain.from_iterable(filter(None, summaries)), dtype=np.float64, count=3 * rows
    ).reshape(rows, 3)
    return labels, codes, stamps, scored, values, list(index)
