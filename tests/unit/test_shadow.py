"""A shadow policy and the audit sample (issue 22, items 4 and 5), through ``Router.process`` on
both paths: the shadow block is what the shadow policy decides, computed here independently;
a shadow changes nothing else; the audit sample is the share configured, drawn by the event id
alone, so a second run (or the other path) samples the same events."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from tests.consumed import Consumed
from worker.core import native
from worker.core.errors import ConfigError
from worker.core.records import Outbound, Router
from worker.core.routing import Policy, audit_sampled, audit_threshold, route
from worker.core.settings import Settings, load_settings
from worker.devkit import traffic
from worker.observability.metrics import POLICY_DECISIONS, Metrics

TOPIC = "support.intents"
LABELS = ["billing", "tech", "sales"]
LIVE: dict[str, Any] = {"temperature": 0.7, "min_margin": 0.15, "labels": LABELS}
SHADOW: dict[str, Any] = {"temperature": 1.3, "min_margin": 0.1, "min_top1": 0.5}
PATHS = pytest.mark.parametrize("native_on", [True, False], ids=["compiled", "python"])


def router(native_on: bool, **policy: Any) -> Router:
    r = Router(Settings(topics={TOPIC: {**LIVE, **policy}}, processing={"native": native_on}))
    assert (r.native_topics is not None) == (native_on and native.available())
    return r


def records(n: int, seed: int = 7) -> list[Consumed]:
    events = traffic.synthetic(n, seed=seed, classes=3)
    return [
        Consumed(TOPIC, 0, i, 1_700_000_000_000 + i, e.key, e.value, e.headers)
        for i, e in enumerate(events)
    ]


def scored(outs: list[Outbound]) -> list[dict[str, Any]]:
    return [orjson.loads(o.value) for o in outs if o.kind != "dead_letter" and o.value]


@PATHS
def test_the_shadow_block_is_what_the_shadow_policy_decides(native_on: bool) -> None:
    recs = records(3000)
    outs = router(native_on, shadow=SHADOW).process(recs)
    # The shadow policy written out here, not taken from the settings.
    policy = Policy(SHADOW["temperature"], SHADOW["min_margin"], SHADOW["min_top1"], tuple(LABELS))
    seen: Counter[tuple[str, str | None]] = Counter()
    for out in outs:
        if out.kind == "dead_letter":
            assert out.shadow is None
            continue
        assert out.value is not None
        doc = orjson.loads(out.value)
        logits = [-math.inf if x is None else x for x in doc["logits"]]
        want = route(logits, policy, doc.get("labels"))
        got = doc["shadow"]
        assert got == {
            "decision": want.decision,
            "reason": want.reason,
            "margin": want.scores.margin,
        }
        assert out.shadow == want.decision
        seen[got["decision"], got["reason"]] += 1
    assert set(seen) == {
        ("routed", None),
        ("escalated", "low_margin"),
        ("escalated", "low_top1"),
    }, seen


@PATHS
def test_a_shadow_changes_nothing_of_the_live_routing(native_on: bool) -> None:
    recs = records(3000)
    plain = router(native_on).process(recs)
    shadowed = router(native_on, shadow=SHADOW).process(recs)

    def live(o: Outbound) -> tuple[Any, ...]:
        if o.kind == "dead_letter":
            return (o.topic, o.key, o.value, o.headers, o.kind, o.reason)
        assert o.value is not None
        doc = orjson.loads(o.value)
        doc.pop("shadow", None)
        # The config's hash covers the shadow: the one other field that differs.
        doc.pop("config_version")
        return (o.topic, o.key, doc, o.headers, o.kind, o.reason, o.scores)

    assert [live(o) for o in shadowed] == [live(o) for o in plain]
    assert all("shadow" not in d for d in scored(plain))
    assert all("shadow" in d for d in scored(shadowed))
    # Where they disagree, and yet every event went where the live policy sent it.
    assert any(o.shadow != o.kind for o in shadowed if o.kind != "dead_letter")


RATE = 0.1
N = 100_000


def test_the_audit_sample_is_the_rate_of_the_would_be_routed_and_the_same_every_run() -> None:
    recs = records(N, seed=22)
    unsampled = router(True).process(recs)
    first = router(True, audit_sample_rate=RATE).process(recs)
    would_route = [i for i, o in enumerate(unsampled) if o.kind == "routed"]
    sampled = {i for i, o in enumerate(first) if o.reason == "audit_sample"}
    # Only events that would have been routed are sampled; every other output is as it was.
    assert sampled <= set(would_route)
    escalated = Settings(topics={TOPIC: LIVE}).outputs.escalated
    for i, (a, b) in enumerate(zip(unsampled, first, strict=True)):
        if i in sampled:
            assert (b.topic, b.kind) == (escalated, "escalated")
        else:
            assert (a.topic, a.kind, a.reason) == (b.topic, b.kind, b.reason)
    n = len(would_route)
    share = len(sampled) / n
    se = math.sqrt(RATE * (1 - RATE) / n)
    assert abs(share - RATE) < 3 * se, (share, RATE, se, n)
    # The sample is the stated rule applied to the ids, nothing else.
    ids = [orjson.loads(recs[i].value or b"")["id"] for i in would_route]
    by_rule = {i for i, ident in zip(would_route, ids, strict=True)
               if audit_sampled(ident, audit_threshold(RATE))}  # fmt: skip
    assert sampled == by_rule
    # A second run, the Python path, and a batch cut differently sample the same events.
    second = router(True, audit_sample_rate=RATE).process(recs)
    python = router(False, audit_sample_rate=RATE).process(recs[:20_000])
    halves = router(True, audit_sample_rate=RATE)
    cut = halves.process(recs[:N // 3]) + halves.process(recs[N // 3:])  # fmt: skip
    assert [o.value for o in second] == [o.value for o in first]
    assert [o.value for o in python] == [o.value for o in first[:20_000]]
    assert [o.value for o in cut] == [o.value for o in first]


def test_rates_0_and_1_sample_nothing_and_everything() -> None:
    recs = records(2000)
    unsampled = router(True).process(recs)
    for rate, want in ((0.0, 0), (1.0, sum(o.kind == "routed" for o in unsampled))):
        outs = router(True, audit_sample_rate=rate).process(recs)
        assert sum(o.reason == "audit_sample" for o in outs) == want
        assert not any(o.kind == "routed" for o in outs) or rate == 0.0


@PATHS
def test_shadow_pairs_are_counted_per_batch(native_on: bool) -> None:
    s = Settings(
        topics={TOPIC: {**LIVE, "shadow": SHADOW, "audit_sample_rate": 0.2}, "other": {}},
        processing={"native": native_on},
    )
    registry = CollectorRegistry()
    metrics = Metrics(s, registry)
    outs = Router(s).process(records(3000))
    metrics.record_outputs(outs)
    docs = scored(outs)
    # From the published outputs: an audit sample was routed by its live policy.
    want = Counter(
        ("routed" if d["reason"] == "audit_sample" else d["decision"], d["shadow"]["decision"])
        for d in docs
    )
    assert (
        want["routed", "routed"] and want["escalated", "escalated"] and want["routed", "escalated"]
    )
    for live in POLICY_DECISIONS:
        for shadow in POLICY_DECISIONS:
            labels = {"topic": TOPIC, "live": live, "shadow": shadow}
            got = registry.get_sample_value("logit_router_shadow_decisions_total", labels)
            assert got == want[live, shadow], labels
            # A topic without a shadow has no such series.
            other = {**labels, "topic": "other"}
            assert registry.get_sample_value("logit_router_shadow_decisions_total", other) is None


def test_the_shadow_and_the_rate_are_held_to_the_policy_rules() -> None:
    for topic, where in (
        ({"shadow": {"temperature": 0.0}}, "topics.t.shadow.temperature = 0.0"),
        ({"shadow": {"min_margin": 1.5}}, "topics.t.shadow.min_margin = 1.5"),
        ({"shadow": {"labels": ["a", "b"]}}, "topics.t.shadow.labels"),
        ({"audit_sample_rate": -0.1}, "topics.t.audit_sample_rate = -0.1"),
        ({"audit_sample_rate": math.nan}, "topics.t.audit_sample_rate = nan"),
    ):
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            load_settings(topics={"t": topic})


def test_the_config_version_covers_them_and_is_unchanged_without_them() -> None:
    base = Settings(topics={"t": {}})
    # The canonical document of a config that sets neither has no key for them.
    doc = base.model_dump(mode="json", include={"topics"})["topics"]["t"]
    assert set(doc) == {"temperature", "min_margin", "min_top1", "labels"}
    topics: tuple[dict[str, Any], ...] = (
        {},
        {"audit_sample_rate": 0.0},
        {"audit_sample_rate": 0.1},
        {"shadow": {}},
        {"shadow": {"temperature": 0.9}},
    )
    versions = {Settings(topics={"t": topic}).config_version for topic in topics}
    assert len(versions) == 4  # a rate of 0 is the default: the same config
