"""The routing core against the lab's figures and an independent high-precision oracle."""

from __future__ import annotations

import math
import random

import mpmath
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.unit import oracle
from worker.core.routing import Policy, ScoringError, decide, route, score, softmax

LAB = [3.2, 2.8, 0.5]


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [
        (1.0, [0.5755, 0.3858, 0.0387]),
        (0.7, [0.6306, 0.3561, 0.0133]),
        (1.5, [0.5178, 0.3966, 0.0856]),
    ],
)
def test_lab_probabilities(temperature: float, expected: list[float]) -> None:
    assert [round(p, 4) for p in softmax(LAB, temperature)] == expected


def test_lab_margin() -> None:
    assert round(score(LAB, 1.0).margin, 4) == 0.1897


# Any double a classifier could send, most of the time a "normal" logit, sometimes extreme.
finite_logit = st.one_of(
    st.floats(-50.0, 50.0),
    st.floats(-1e308, 1e308, allow_nan=False, allow_infinity=False),
)
logit = st.one_of(finite_logit, finite_logit, finite_logit, st.just(-math.inf))
temperatures = st.floats(1e-6, 1e6)


def vectors(max_size: int) -> st.SearchStrategy[list[float]]:
    return st.lists(logit, min_size=2, max_size=max_size).filter(
        lambda xs: any(math.isfinite(x) for x in xs)
    )


@settings(max_examples=400, deadline=None)
@given(vectors(100), temperatures)
def test_probabilities_match_oracle_up_to_100_classes(logits: list[float], t: float) -> None:
    got = softmax(logits, t)
    want = oracle.softmax(logits, t)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-14
    assert abs(math.fsum(got) - 1.0) <= 1e-12


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(1.0, 1e4), temperatures)
def test_probabilities_match_oracle_for_10000_classes(seed: int, spread: float, t: float) -> None:
    # Hypothesis lists stop short of 10,000 elements: draw a seed and a scale instead.
    rng = random.Random(seed)
    logits = [rng.gauss(0.0, spread) for _ in range(10_000)]
    logits[rng.randrange(10_000)] = -math.inf
    got = score(logits, t)
    want = oracle.softmax(logits, t)
    assert max(abs(a - b) for a, b in zip(got.probabilities, want, strict=True)) <= 1e-12
    assert abs(math.fsum(got.probabilities) - 1.0) <= 1e-12
    assert abs(got.entropy - oracle.entropy(logits, t)) <= 1e-12 * math.log(len(logits))


@settings(max_examples=300, deadline=None)
@given(vectors(30), temperatures)
def test_entropy_margin_and_top_class(logits: list[float], t: float) -> None:
    s = score(logits, t)
    assert abs(s.entropy - oracle.entropy(logits, t)) <= 1e-12
    assert 0.0 <= s.margin <= 1.0
    assert s.top1 >= s.top2
    assert s.margin == s.top1 - s.top2
    assert s.top1 == s.probabilities[s.class_index] == max(s.probabilities)
    assert s.class_index == logits.index(max(logits))  # the first largest logit


# Logits on a dyadic grid, so that adding the constant is exact in binary floating point:
# then shift invariance must hold to the last bit, not just approximately.
grid = st.integers(-(2**30), 2**30).map(lambda k: k / 1024)


@settings(max_examples=300, deadline=None)
@given(st.lists(grid, min_size=2, max_size=50), grid, temperatures)
def test_adding_a_constant_changes_nothing(logits: list[float], c: float, t: float) -> None:
    shifted = [x + c for x in logits]
    assert all(s - c == x for s, x in zip(shifted, logits, strict=True))  # the shift is exact
    assert score(shifted, t) == score(logits, t)


@settings(max_examples=300, deadline=None)
@given(st.floats(20.0, 340.0), st.integers(2, 50), st.floats(0.5, 2.0))
@example(36.0, 2, 1.0)
def test_a_confident_events_entropy_keeps_its_relative_precision(
    gap: float, classes: int, t: float
) -> None:
    # One class far ahead: the entropy is tiny (down to 1e-293), and log(1 + tiny) would keep
    # none of its digits. The oracle needs digits to match: 60 would leave it 1e-60 absolute.
    logits = [0.0] + [-gap] * (classes - 1)
    with mpmath.workdps(400):
        want = oracle.entropy(logits, t)
    assert want > 0.0
    assert abs(score(logits, t).entropy - want) <= 1e-13 * want


@settings(max_examples=300, deadline=None)
@given(st.floats(9e307, 1.7e308), st.floats(1e306, 1e308))
@example(1e308, 1e308)
def test_a_gap_past_the_float_range_is_scored_at_a_huge_temperature(x: float, t: float) -> None:
    logits = [x, -x]  # x - (-x) overflows; (x - -x) / t does not
    got = score(logits, t).probabilities
    want = oracle.softmax(logits, t)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-14


def test_the_top_class_is_the_largest_logit_where_probabilities_round_equal() -> None:
    s = score([0.0, 1e-17], 1.0)
    assert s.probabilities == (0.5, 0.5)  # exp(-1e-17) rounds to 1
    assert (s.class_index, s.margin) == (1, 0.0)
    assert score([1.0, 1.0, 0.0], 1.0).class_index == 0  # a true tie: the lowest index


def test_tiny_temperature_is_one_hot_without_overflow() -> None:
    assert softmax([1e308, -1e308, 1e308 * 0.5], 1e-6) == [1.0, 0.0, 0.0]


def test_huge_temperature_is_near_uniform() -> None:
    probs = softmax([3.2, 2.8, 0.5], 1e6)
    assert all(abs(p - 1 / 3) < 1e-6 for p in probs)


def test_masked_class_has_probability_zero() -> None:
    s = score([-math.inf, 1.0, 1.0], 1.0)
    assert s.probabilities == (0.0, 0.5, 0.5)
    assert s.margin == 0.0
    assert s.class_index == 1


def test_tie_gives_zero_margin_and_lowest_index() -> None:
    s = score([2.0, 5.0, 5.0, 1.0], 0.7)
    assert s.margin == 0.0
    assert s.class_index == 1


@pytest.mark.parametrize(
    ("logits", "code"),
    [
        ([1.0, math.nan], "nan_logit"),
        ([1.0, math.inf], "pos_inf_logit"),
        ([1.0], "too_few_classes"),
        ([], "too_few_classes"),
        ([-math.inf, -math.inf], "no_finite_logit"),
    ],
)
def test_unscorable_input_is_an_error(logits: list[float], code: str) -> None:
    """An event's logits are checked per event; a policy's temperature and thresholds are not
    (they are checked where they enter: test_settings.py and test_cli_score.py)."""
    with pytest.raises(ScoringError) as err:
        score(logits, 1.0)
    assert err.value.code == code


def test_policy_escalates_on_low_margin_before_low_top1() -> None:
    s = score(LAB, 1.0)  # margin 0.1897, top1 0.5755
    assert decide(s, Policy(1.0, 0.15)).decision == "routed"
    low_margin = decide(s, Policy(1.0, 0.2, min_top1=0.9))
    assert (low_margin.decision, low_margin.reason) == ("escalated", "low_margin")
    low_top1 = decide(s, Policy(1.0, 0.15, min_top1=0.6))
    assert (low_top1.decision, low_top1.reason) == ("escalated", "low_top1")


def test_label_comes_from_event_then_topic_then_index() -> None:
    topic = Policy(1.0, 0.1, labels=("billing", "tech", "sales"))
    assert route(LAB, topic, ["a", "b", "c"]).label == "a"
    assert route(LAB, topic).label == "billing"
    assert route(LAB, Policy(1.0, 0.1)).label == "0"


def test_labels_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ScoringError) as err:
        route(LAB, Policy(1.0, 0.1, labels=("a", "b")))
    assert err.value.code == "topic_labels_mismatch"
    with pytest.raises(ScoringError) as err:
        route(LAB, Policy(1.0, 0.1), ["a"])
    assert err.value.code == "labels_length_mismatch"
