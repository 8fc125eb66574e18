"""The metrics object on a fresh registry: series exist at 0 from the start, a batch of real
router outputs is counted and observed as it was decided, and the exposition passes
``promtool check metrics`` (Prometheus' own naming lint)."""

from __future__ import annotations

import asyncio
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, cast, get_args

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.prom import promtool
from worker import __version__
from worker.core import native
from worker.core.batch import Item, route_batch
from worker.core.events import Reason
from worker.core.records import Outbound, Router
from worker.core.routing import Policy, ScoringError
from worker.core.settings import Settings
from worker.devkit import traffic
from worker.observability.metrics import (
    DEAD_LETTER_REASONS,
    DECISIONS,
    ESCALATION_REASONS,
    OTHER_REASON,
    UNIT_BUCKETS,
    Metrics,
)
from worker.stream import pipeline
from worker.stream.pipeline import Worker

SUPPORT, FRAUD = "support.intents", "fraud.scores"


def settings() -> Settings:
    return Settings(
        topics={
            SUPPORT: {"temperature": 0.7, "min_margin": 0.15, "labels": ["a", "b", "c"]},
            FRAUD: {"temperature": 1.5, "min_margin": 0.3, "min_top1": 0.6},
        }
    )


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    timestamp: int
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def records(n: int, now_ms: int) -> list[Rec]:
    """Synthetic traffic for both topics (confident, uncertain, malformed), timestamped."""
    out: list[Rec] = []
    for topic, classes in ((SUPPORT, 3), (FRAUD, 2)):
        events = traffic.synthetic(n, seed=7, classes=classes, malformed_rate=0.1)
        out += [
            Rec(topic, i % 3, i, now_ms - 250 * (i % 5), e.value, e.key, e.headers)
            for i, e in enumerate(events)
        ]
    out.append(Rec(FRAUD, 0, n, 0, traffic.lab_event().value))  # no timestamp: no latency
    return out


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exposed"
    return value


def test_every_labelled_series_reads_zero_from_the_start() -> None:
    registry = CollectorRegistry()
    s = settings()
    Metrics(s, registry)
    for topic in (SUPPORT, FRAUD):
        for decision in ("routed", "escalated", "dead_letter"):
            assert (
                sample(registry, "logit_router_events_total", topic=topic, decision=decision) == 0
            )
        for reason in ("low_margin", "low_top1"):
            assert (
                sample(registry, "logit_router_escalations_total", topic=topic, reason=reason) == 0
            )
        for reason in (*get_args(Reason), "nan_logit", "pos_inf_logit", "no_finite_logit"):
            assert (
                sample(registry, "logit_router_dead_letters_total", topic=topic, reason=reason) == 0
            )
        for hist in ("margin", "top1_probability", "entropy_nats", "end_to_end_latency_seconds"):
            assert sample(registry, f"logit_router_{hist}_count", topic=topic) == 0
    for name in ("commit_failures_total", "rebalances_total", "assigned_partitions"):
        assert sample(registry, "logit_router_" + name) == 0
    for name in (
        "batch_duration_seconds",
        "produce_ack_duration_seconds",
        "commit_duration_seconds",
    ):
        assert sample(registry, f"logit_router_{name}_count") == 0
    assert sample(registry, "logit_router_last_processed_timestamp_seconds") == 0
    hot_path = "compiled" if native.in_use(s) else "python"
    info = {"version": __version__, "config_version": s.config_version, "hot_path": hot_path}
    assert sample(registry, "logit_router_build_info", **info) == 1
    assert sample(registry, "logit_router_policy_temperature", topic=SUPPORT) == 0.7
    assert sample(registry, "logit_router_policy_min_margin", topic=FRAUD) == 0.3
    assert sample(registry, "logit_router_policy_min_top1", topic=FRAUD) == 0.6
    assert registry.get_sample_value("logit_router_policy_min_top1", {"topic": SUPPORT}) is None


def test_label_sets_are_the_fixed_sets_the_code_produces() -> None:
    assert set(DECISIONS) == {"routed", "escalated", "dead_letter"}
    assert set(ESCALATION_REASONS) == {"low_margin", "low_top1", "audit_sample"}
    # Every refusal the decoder and the scorer can produce has its own pre-made series.
    assert {reason for reason, _ in traffic.MALFORMED} <= set(DEAD_LETTER_REASONS)
    bad = [
        Item([math.nan, 1.0], Policy(1.0, 0.1)),
        Item([math.inf, 1.0], Policy(1.0, 0.1)),
        Item([-math.inf, -math.inf], Policy(1.0, 0.1)),
        Item([1.0, 2.0], Policy(1.0, 0.1, labels=("a", "b", "c"))),
    ]
    codes = [r.code for r in route_batch(bad) if isinstance(r, ScoringError)]
    assert len(codes) == len(bad)
    assert set(codes) <= set(DEAD_LETTER_REASONS)
    assert OTHER_REASON in DEAD_LETTER_REASONS


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "attrgetter"])
def test_a_batch_is_counted_and_observed_as_it_was_decided(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both ways of reading a batch's columns: the compiled module's pass, and Python's.
    if compiled and native.output_columns is None:
        assert os.environ.get("LOGIT_ROUTER_EXPECT_NATIVE") != "1", "the extension is missing"
        pytest.skip("the compiled module is not installed")
    if not compiled:
        monkeypatch.setattr(native, "output_columns", None)
    registry = CollectorRegistry()
    s = settings()
    metrics = Metrics(s, registry)
    now_ms = 1_800_000_000_000
    outputs = Router(s).process(records(400, now_ms))
    acked = now_ms / 1000 + 0.5
    metrics.record_outputs(outputs, acked_at=acked)

    decisions: Counter[tuple[str, str]] = Counter((o.source_topic, o.kind) for o in outputs)
    reasons = Counter((o.source_topic, o.kind, o.reason) for o in outputs if o.reason)
    assert {k for _, k in decisions} == {"routed", "escalated", "dead_letter"}
    for topic in (SUPPORT, FRAUD):
        for decision in DECISIONS:
            got = sample(registry, "logit_router_events_total", topic=topic, decision=decision)
            assert got == decisions[topic, decision]
        for reason in ESCALATION_REASONS:
            got = sample(registry, "logit_router_escalations_total", topic=topic, reason=reason)
            assert got == reasons[topic, "escalated", reason]
        for reason in DEAD_LETTER_REASONS:
            got = sample(registry, "logit_router_dead_letters_total", topic=topic, reason=reason)
            assert got == reasons[topic, "dead_letter", reason]
        check_histograms(registry, topic, [o for o in outputs if o.source_topic == topic])
        timed = [o for o in outputs if o.source_topic == topic and o.source_timestamp > 0]
        want = math.fsum(acked - o.source_timestamp / 1000 for o in timed)
        assert sample(
            registry, "logit_router_end_to_end_latency_seconds_count", topic=topic
        ) == len(timed)
        assert sample(
            registry, "logit_router_end_to_end_latency_seconds_sum", topic=topic
        ) == pytest.approx(want, rel=1e-9)


def check_histograms(registry: CollectorRegistry, topic: str, outputs: list[Outbound]) -> None:
    """Bucket by bucket, the margin histogram is the distribution of the published margins."""
    docs: list[dict[str, Any]] = [
        orjson.loads(o.value) for o in outputs if o.kind != "dead_letter" and o.value
    ]
    margins = [d["margin"] for d in docs]
    assert sample(registry, "logit_router_margin_count", topic=topic) == len(margins)
    assert sample(registry, "logit_router_top1_probability_count", topic=topic) == len(margins)
    assert sample(registry, "logit_router_margin_sum", topic=topic) == pytest.approx(
        math.fsum(margins), rel=1e-12
    )
    assert sample(registry, "logit_router_entropy_nats_sum", topic=topic) == pytest.approx(
        math.fsum(d["entropy"] for d in docs), rel=1e-12
    )
    for le in UNIT_BUCKETS:
        got = sample(registry, "logit_router_margin_bucket", topic=topic, le=repr(float(le)))
        assert got == sum(m <= le for m in margins), f"{topic} margin le={le}"
        got = sample(registry, "logit_router_top1_probability_bucket", topic=topic, le=repr(le))
        assert got == sum(d["top1"] <= le for d in docs), f"{topic} top1 le={le}"


def test_the_buckets_draw_the_distribution_on_0_1_finely_below_0_3() -> None:
    assert UNIT_BUCKETS[-1] == 1.0
    assert list(UNIT_BUCKETS) == sorted(set(UNIT_BUCKETS))
    below = [b for b in UNIT_BUCKETS if b <= 0.3]
    assert max(b - a for a, b in pairwise((0.0, *below))) <= 0.0100001
    assert max(b - a for a, b in pairwise(UNIT_BUCKETS)) <= 0.05 + 1e-9


def test_an_unknown_dead_letter_reason_is_counted_as_other() -> None:
    registry = CollectorRegistry()
    s = settings()
    metrics = Metrics(s, registry)
    rec = Rec(SUPPORT, 0, 0, 0, b"{}")
    odd = Router(s).dead_letter(rec, "made_up_reason", ValueError("x"))
    metrics.record_outputs([odd])
    assert sample(registry, "logit_router_dead_letters_total", topic=SUPPORT, reason="other") == 1
    assert (
        registry.get_sample_value(
            "logit_router_dead_letters_total", {"topic": SUPPORT, "reason": "made_up_reason"}
        )
        is None
    )


def test_lag_series_follow_the_assignment() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(settings(), registry)
    metrics.set_assignment([(SUPPORT, 0), (SUPPORT, 1), (FRAUD, 2)])
    assert sample(registry, "logit_router_assigned_partitions") == 3
    assert sample(registry, "logit_router_consumer_lag_records", topic=FRAUD, partition="2") == 0
    metrics.set_lag(SUPPORT, 1, 42)
    metrics.set_lag(FRAUD, 2, -3)  # a highwater older than the position: never below 0
    assert sample(registry, "logit_router_consumer_lag_records", topic=SUPPORT, partition="1") == 42
    assert sample(registry, "logit_router_consumer_lag_records", topic=FRAUD, partition="2") == 0
    metrics.set_assignment([(FRAUD, 0)])  # a rebalance took the others away
    assert sample(registry, "logit_router_assigned_partitions") == 1
    assert (
        registry.get_sample_value(
            "logit_router_consumer_lag_records", {"topic": SUPPORT, "partition": "1"}
        )
        is None
    )
    assert sample(registry, "logit_router_consumer_lag_records", topic=FRAUD, partition="0") == 0


async def test_a_failed_lag_refresh_is_logged_and_the_refreshes_go_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The lag gauge is refreshed on a task of its own: a refresh that raises is logged, and
    the next one runs; a metric never stops the worker."""
    worker = Worker(settings(), Metrics(settings(), CollectorRegistry()))
    refreshes = 0
    third = asyncio.Event()

    async def update_lag(consumer: object) -> None:
        nonlocal refreshes
        refreshes += 1
        if refreshes == 3:
            third.set()
        if refreshes == 1:
            raise RuntimeError("no position yet")

    monkeypatch.setattr(worker, "_update_lag", update_lag)
    monkeypatch.setattr(pipeline, "LAG_REFRESH_S", 0.001)
    task = asyncio.create_task(worker._refresh_lag(cast(Any, None)))
    try:
        async with asyncio.timeout(10):
            await third.wait()
        assert not task.done()
    finally:
        await pipeline.cancelled(task)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["consumer lag not refreshed: RuntimeError: no position yet"]


def test_two_metrics_objects_on_two_registries_do_not_clash() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    ma, _ = Metrics(settings(), a), Metrics(settings(), b)
    ma.rebalances.inc()
    assert sample(a, "logit_router_rebalances_total") == 1
    assert sample(b, "logit_router_rebalances_total") == 0


def test_the_exposition_of_a_busy_worker_passes_promtool_check_metrics() -> None:
    registry = CollectorRegistry()
    s = settings()
    metrics = Metrics(s, registry)
    metrics.record_outputs(Router(s).process(records(300, 1_800_000_000_000)))
    metrics.set_assignment([(SUPPORT, 0), (FRAUD, 0)])
    metrics.set_lag(SUPPORT, 0, 12)
    for m in (metrics.batch_seconds, metrics.produce_seconds, metrics.commit_seconds):
        m.observe(0.02)
    metrics.batch_records.observe(601)
    metrics.commit_failures.inc()
    metrics.rebalances.inc()
    metrics.last_processed.set(1_800_000_000.5)
    exposition = generate_latest(registry)
    proc = promtool("check", "metrics", stdin=exposition)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    assert proc.stdout.strip() == b"", proc.stdout.decode()  # not a single lint remark
    text = exposition.decode()
    assert "_created" not in text  # no start-time series beside each counter and histogram
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert all(n.startswith("logit_router_") for n in names)
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line


def test_after_a_reload_the_config_series_follow_the_new_config() -> None:
    registry = CollectorRegistry()
    old = Settings(topics={"a": {"temperature": 0.7, "min_top1": 0.5}})
    metrics = Metrics(old, registry)
    metrics._events["a", "routed"].inc(4)
    new = Settings(topics={"b": {"temperature": 1.5}})
    metrics.configure(new)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value("logit_router_" + name, labels)

    assert value("build_info", version=__version__, config_version=new.config_version,
                 hot_path="compiled" if native.in_use(new) else "python") == 1  # fmt: skip
    assert value("build_info", version=__version__, config_version=old.config_version,
                 hot_path="compiled" if native.in_use(old) else "python") is None  # fmt: skip
    assert value("policy_temperature", topic="b") == 1.5
    assert value("policy_temperature", topic="a") is None  # no longer a policy
    assert value("policy_min_top1", topic="a") is None
    assert value("events_total", topic="b", decision="routed") == 0  # a new topic reads 0
    assert value("margin_count", topic="b") == 0
    assert value("events_total", topic="a", decision="routed") == 4  # counts are kept
    for result in ("applied", "refused", "unchanged"):
        assert value("config_reloads_total", result=result) == 0
