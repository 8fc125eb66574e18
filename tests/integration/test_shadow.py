"""A shadow policy and the audit sample on a real broker: the published shadow blocks are what
the shadow policy decides, the audit samples are the events the stated rule picks among those
the live policy routes, and the shadow metric counts what the output topics hold."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from tests.integration import helpers
from tests.schemas import check_output
from worker.core.routing import Policy, audit_sampled, audit_threshold, route
from worker.devkit import traffic
from worker.observability.metrics import POLICY_DECISIONS

pytestmark = pytest.mark.integration

RATE = 0.25
SHADOW: dict[str, Any] = {"temperature": 1.2, "min_margin": 0.1, "min_top1": 0.5}


async def test_a_shadow_and_an_audit_sample_are_published_and_counted(
    bootstrap: str, uid: str
) -> None:
    support = f"support-{uid}"
    live: dict[str, Any] = {"temperature": 0.7, "min_margin": 0.15, "labels": ["a", "b", "c"]}
    settings = helpers.make_settings(
        bootstrap,
        uid,
        topics={support: {**live, "shadow": SHADOW, "audit_sample_rate": RATE}},
    )
    await helpers.create_all(settings)
    events = traffic.synthetic(4000, seed=22, classes=3, malformed_rate=0.02)
    sent = await traffic.produce(bootstrap, support, events)
    fraud = traffic.synthetic(500, seed=23, classes=2, malformed_rate=0.0)
    sent += await traffic.produce(bootstrap, f"fraud-{uid}", fraud)
    registry = CollectorRegistry()
    async with helpers.running_worker(settings, registry):
        await helpers.wait_until_committed(settings)
    inputs = {(r.topic, r.partition, r.offset): r for r in await helpers.read_inputs(settings)}
    assert len(inputs) == sent
    outputs = await helpers.read_outputs(settings)

    # Written out here: the policies as the config above states them.
    live_policy = Policy(live["temperature"], live["min_margin"], None, ("a", "b", "c"))
    shadow_policy = Policy(SHADOW["temperature"], SHADOW["min_margin"], SHADOW["min_top1"])
    pairs: Counter[tuple[str, str]] = Counter()
    would_route = sampled = 0
    for kind, recs in (("routed", outputs.routed), ("escalated", outputs.escalated)):
        for r in recs:
            doc = orjson.loads(r.value)
            check_output(doc)
            assert doc["decision"] == kind
            if doc["source"]["topic"] != support:
                assert "shadow" not in doc and doc["reason"] != "audit_sample"
                continue
            rec = inputs[support, doc["source"]["partition"], doc["source"]["offset"]]
            sent_doc = orjson.loads(rec.value)
            logits = [-math.inf if x is None else x for x in sent_doc["logits"]]
            want = route(logits, live_policy)
            want_shadow = route(logits, shadow_policy, live_policy.labels)
            assert doc["shadow"] == {
                "decision": want_shadow.decision,
                "reason": want_shadow.reason,
                "margin": want_shadow.scores.margin,
            }
            # The live policy routes it; the audit sample, by the id alone, escalates it.
            if want.decision == "routed":
                would_route += 1
                picked = audit_sampled(sent_doc["id"], audit_threshold(RATE))
                sampled += picked
                assert (doc["decision"], doc["reason"]) == (
                    ("escalated", "audit_sample") if picked else ("routed", None)
                )
            else:
                assert (doc["decision"], doc["reason"]) == (want.decision, want.reason)
            live_decision = "routed" if doc["reason"] == "audit_sample" else doc["decision"]
            pairs[live_decision, doc["shadow"]["decision"]] += 1
    assert 0 < sampled < would_route
    assert pairs["routed", "routed"] and pairs["routed", "escalated"]
    for live_d in POLICY_DECISIONS:
        for shadow_d in POLICY_DECISIONS:
            got = registry.get_sample_value(
                "logit_router_shadow_decisions_total",
                {"topic": support, "live": live_d, "shadow": shadow_d},
            )
            assert got == pairs[live_d, shadow_d], (live_d, shadow_d)
    escalated = registry.get_sample_value(
        "logit_router_escalations_total", {"topic": support, "reason": "audit_sample"}
    )
    assert escalated == sampled
