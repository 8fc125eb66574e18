"""What a reload may change without a restart (no broker): the routing part is applied, the
rest is refused naming each differing field, and a secret's value is never shown."""

from __future__ import annotations

from typing import Any

import pytest

from worker.core.changes import RESTART_ONLY, compare
from worker.core.settings import Settings

BASE: dict[str, Any] = {
    "topics": {"support": {"temperature": 0.7, "labels": ["a", "b"]}, "fraud": {}},
    "kafka": {"group_id": "g"},
}


def settings(**overrides: Any) -> Settings:
    doc: dict[str, Any] = {key: dict(value) for key, value in BASE.items()}
    for key, value in overrides.items():
        doc[key] = {**doc.get(key, {}), **value}
    return Settings(**doc)


def test_the_same_config_is_unchanged() -> None:
    change = compare(settings(), settings())
    assert change.result == "unchanged"
    assert not change.resubscribes


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            {"topics": {"support": {"temperature": 1.2, "labels": ["a", "b"]}}},
            'topics."support".temperature 0.7 -> 1.2',
        ),
        (
            {"topics": {"support": {"temperature": 0.7, "labels": ["a", "c"]}}},
            "topics.\"support\".labels ('a', 'b') -> ('a', 'c')",
        ),
        ({"topics": {"fraud": {"min_top1": 0.6}}}, 'topics."fraud".min_top1 None -> 0.6'),
        ({"limits": {"max_classes": 50}}, "limits.max_classes 10000 -> 50"),
    ],
)
def test_a_policy_or_limit_change_is_applied_and_named(
    overrides: dict[str, Any], line: str
) -> None:
    change = compare(settings(), settings(**overrides))
    assert change.result == "applied"
    assert change.routing == [line]
    assert not change.restart_only
    assert not change.resubscribes


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"kafka": {"group_id": "other"}}, "kafka.group_id 'g' -> 'other'"),
        ({"kafka": {"bootstrap_servers": "b:9092"}}, "kafka.bootstrap_servers"),
        ({"processing": {"guarantee": "exactly_once"}}, "processing.guarantee"),
        ({"outputs": {"routed": "elsewhere"}}, "outputs.routed 'logits.routed' -> 'elsewhere'"),
        ({"http": {"port": 9999}}, "http.port 9464 -> 9999"),
        ({"log": {"format": "json"}}, "log.format 'text' -> 'json'"),
    ],
)
def test_a_change_that_needs_a_restart_is_refused_and_named(
    overrides: dict[str, Any], line: str
) -> None:
    section = next(iter(overrides))
    assert section in RESTART_ONLY
    new = settings(topics={"support": {"temperature": 2.0}}, **overrides)
    change = compare(settings(), new)
    assert change.result == "refused"  # even beside a change that could be applied
    assert len(change.restart_only) == 1
    assert change.restart_only[0].startswith(line)
    assert change.refusal() == "needs a restart: " + change.restart_only[0]


def test_a_changed_secret_is_refused_without_showing_either_value() -> None:
    sasl = {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}
    old = settings(kafka={**sasl, "sasl_password": "old-Pa55"})
    new = settings(kafka={**sasl, "sasl_password": "new-Pa55"})
    change = compare(old, new)
    assert change.result == "refused"
    assert change.refusal() == "needs a restart: kafka.sasl_password '**********' -> '**********'"
    assert "Pa55" not in change.refusal()
    assert compare(old, settings(kafka={**sasl, "sasl_password": "old-Pa55"})).result == (
        "unchanged"
    )


def test_adding_or_removing_an_input_topic_is_applied_and_resubscribes() -> None:
    new = settings(topics={"billing": {"temperature": 1.5}})
    change = compare(settings(), new)
    assert change.result == "applied"
    assert change.resubscribes
    assert (change.added, change.removed) == (["billing"], [])
    assert change.routing == ['topics."billing" added']
    back = compare(new, settings())
    assert (back.added, back.removed, back.routing) == (
        [],
        ["billing"],
        ['topics."billing" removed'],
    )
