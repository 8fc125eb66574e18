"""``BatchHistogram`` exposes what prometheus-client's own ``Histogram`` would, line for line,
for the same values observed one at a time: values on a bound, below the first, above the last,
infinite, in batches of any size."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, generate_latest

from worker.observability.histograms import BatchHistogram
from worker.observability.metrics import LATENCY_BUCKETS, UNIT_BUCKETS

TOPICS = ("a.topic", "b.topic")
BOUND_VALUES = st.sampled_from([0.0, *UNIT_BUCKETS, *LATENCY_BUCKETS, math.inf])
VALUES = st.one_of(BOUND_VALUES, st.floats(min_value=-1.0, max_value=100.0), st.just(math.inf))


def expositions(
    batches: list[tuple[str, list[float]]], buckets: tuple[float, ...]
) -> tuple[str, str]:
    disable_created_metrics()  # as worker.observability.metrics does
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("x_seconds", "Help.", TOPICS, buckets, ours)
    reference = Histogram("x_seconds", "Help.", ["topic"], buckets=buckets, registry=theirs)
    for topic in TOPICS:
        reference.labels(topic)  # made up front, as the worker does
    for topic, values in batches:
        batch.observe_many(topic, values)
        for v in values:
            reference.labels(topic).observe(v)
    return generate_latest(ours).decode(), generate_latest(theirs).decode()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(TOPICS), st.lists(VALUES, max_size=40)), max_size=6),
    st.sampled_from([UNIT_BUCKETS, LATENCY_BUCKETS, (0.5,)]),
)
def test_the_exposition_is_the_client_histograms(
    batches: list[tuple[str, list[float]]], buckets: tuple[float, ...]
) -> None:
    ours, theirs = expositions(batches, buckets)
    # Sums may differ in the last bits: we add exactly (fsum), the client one value at a time.
    assert _without_sums(ours) == _without_sums(theirs)
    for a, b in zip(_sums(ours), _sums(theirs), strict=True):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12) or (math.isinf(a) and a == b)


def test_a_histogram_with_nothing_observed_reads_zero_for_every_topic() -> None:
    ours, theirs = expositions([], UNIT_BUCKETS)
    assert ours == theirs
    assert 'x_seconds_count{topic="b.topic"} 0.0' in ours


def test_buckets_out_of_order_are_refused_naming_the_metric() -> None:
    with pytest.raises(ValueError, match="x_seconds"):
        BatchHistogram("x_seconds", "Help.", TOPICS, (0.5, 0.1), CollectorRegistry())


def _without_sums(text: str) -> list[str]:
    return [line for line in text.splitlines() if "_sum{" not in line]


def _sums(text: str) -> list[float]:
    return [float(line.split()[-1]) for line in text.splitlines() if "_sum{" in line]
