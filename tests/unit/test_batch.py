"""The batch path gives the scalar path's decisions, event for event."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit import oracle
from worker.core.batch import Item, route_batch
from worker.core.routing import Policy, Routing, ScoringError, route

WIDTHS = (2, 3, 3, 5, 10, 10, 100)


def random_items(rng: random.Random, n: int) -> list[Item]:
    """Mixed widths, temperatures and thresholds, with ties, masks and bad rows sprinkled in."""
    items = []
    for _ in range(n):
        width = rng.choice(WIDTHS)
        scale = rng.choice((0.5, 3.0, 20.0))
        logits = [rng.gauss(0.0, scale) for _ in range(width)]
        roll = rng.random()
        if roll < 0.02:
            logits[1] = logits[0]  # an exact tie
        elif roll < 0.03:
            logits[0] = -math.inf  # a masked class
        elif roll < 0.035:
            logits[0] = math.nan  # must come back as an error, in place
        t = rng.choice((0.3, 0.7, 1.0, 1.5, 4.0))
        min_top1 = rng.choice((None, None, 0.5, 0.8))
        policy = Policy(t, rng.choice((0.0, 0.05, 0.15, 0.3)), min_top1)
        items.append(Item(logits, policy, None))
    return items


def assert_same(batch: list[Routing | ScoringError], items: list[Item]) -> None:
    for got, item in zip(batch, items, strict=True):
        try:
            want: Routing | ScoringError = route(item.logits, item.policy, item.labels)
        except ScoringError as exc:
            want = exc
        if isinstance(want, ScoringError):
            assert isinstance(got, ScoringError)
            assert got.code == want.code
            continue
        assert isinstance(got, Routing)
        assert (got.decision, got.reason, got.label) == (want.decision, want.reason, want.label)
        assert got.scores.class_index == want.scores.class_index
        err = max(
            abs(a - b)
            for a, b in zip(got.scores.probabilities, want.scores.probabilities, strict=True)
        )
        assert err <= 1e-14


def test_batch_agrees_with_scalar_on_100000_random_events() -> None:
    items = random_items(random.Random(20261126), 100_000)
    assert_same(route_batch(items), items)


def test_thresholds_sitting_exactly_on_the_margin_still_agree() -> None:
    rng = random.Random(7)
    items = random_items(rng, 2_000)
    # Put each threshold exactly on the scalar margin or top-1: the worst case for rounding.
    exact = []
    for item in items:
        try:
            s = route(item.logits, item.policy).scores
        except ScoringError:
            exact.append(item)
            continue
        policy = Policy(item.policy.temperature, s.margin, s.top1 if rng.random() < 0.5 else None)
        exact.append(Item(item.logits, policy, None))
    assert_same(route_batch(exact), exact)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3),
    st.integers(4, 300),
    st.floats(0.01, 100.0),
    st.floats(0.0, 1.0),
)
def test_batch_of_one_shape_matches_the_oracle(
    logits: list[float], copies: int, t: float, min_margin: float
) -> None:
    items = [Item(logits, Policy(t, min_margin), ("a", "b", "c"))] * copies
    want = oracle.softmax(logits, t)
    for got in route_batch(items):
        assert isinstance(got, Routing)
        assert max(abs(a - b) for a, b in zip(got.scores.probabilities, want, strict=True)) <= 1e-14
    assert_same(route_batch(items), items)


def test_labels_mismatch_is_reported_per_row() -> None:
    good = Item([1.0, 2.0, 3.0], Policy(1.0, 0.1), ("a", "b", "c"))
    bad = Item([1.0, 2.0, 3.0], Policy(1.0, 0.1), ("a", "b"))
    out = route_batch([good] * 200 + [bad])
    assert isinstance(out[-1], ScoringError)
    assert out[-1].code == "labels_length_mismatch"
    assert all(isinstance(r, Routing) for r in out[:-1])


def test_an_event_scores_the_same_whatever_batch_it_comes_in() -> None:
    """What an auditor's replay relies on: the output is a function of the event alone."""
    items = random_items(random.Random(11), 3_000)
    together = route_batch(items)
    for k in (0, 1, 17, 1234, 2999):
        alone = route_batch([items[k]])[0]
        if isinstance(alone, ScoringError):
            assert isinstance(together[k], ScoringError)
        else:
            assert alone == together[k]
    shuffled = list(range(len(items)))
    random.Random(3).shuffle(shuffled)
    again = route_batch([items[k] for k in shuffled])
    for pos, k in enumerate(shuffled):
        a, b = again[pos], together[k]
        assert (a.code == b.code) if isinstance(a, ScoringError) else a == b  # type: ignore[union-attr]
