"""Transactional ids name one group, topic and partition: two deployments never share one."""

from __future__ import annotations

import itertools

from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from worker.stream.transactions import transactional_id

# Kafka topic names: 1 to 249 of [a-zA-Z0-9._-]; group ids may hold any character.
TOPICS = st.from_regex(r"[a-zA-Z0-9._-]{1,20}", fullmatch=True)
GROUPS = st.text(min_size=1, max_size=20)
PARTITIONS = st.integers(min_value=0, max_value=10_000)


def test_the_dotted_pair_that_collided_before_gets_two_ids() -> None:
    a = transactional_id("router", TopicPartition("eu.events", 0))
    b = transactional_id("router.eu", TopicPartition("events", 0))
    assert a != b


@given(st.lists(st.tuples(GROUPS, TOPICS, PARTITIONS), min_size=2, max_size=8, unique=True))
def test_distinct_group_topic_partition_triples_never_share_an_id(
    triples: list[tuple[str, str, int]],
) -> None:
    ids = [transactional_id(g, TopicPartition(t, p)) for g, t, p in triples]
    for (x, ix), (y, iy) in itertools.combinations(zip(triples, ids, strict=True), 2):
        assert ix != iy, (x, y)
