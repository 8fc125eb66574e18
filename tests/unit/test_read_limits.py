"""The output topics' limits as ``read_limits`` takes them from a DescribeConfigs answer, with
the admin client's answer made here (no broker): the integration tests read real ones."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from worker.core.kafka_settings import KafkaSettings
from worker.stream import limits
from worker.stream.limits import TOPIC_AUTHORIZATION_FAILED, TopicLimit, read_limits

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1")


class Admin:
    """An admin client that answers DescribeConfigs with ``resources``."""

    def __init__(self, resources: list[tuple[Any, ...]]) -> None:
        self.resources = resources

    async def start(self) -> None:
        pass

    async def describe_configs(self, _resources: Any) -> list[Any]:
        return [SimpleNamespace(resources=self.resources)]

    async def close(self) -> None:
        pass


def described(topic: str, max_bytes: str, policy: str = "delete") -> tuple[Any, ...]:
    entries = [("max.message.bytes", max_bytes), ("cleanup.policy", policy)]
    return (0, None, 2, topic, entries)


async def test_a_topic_whose_limit_cannot_be_read_is_held_to_kafkas_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not max_request_size (8 MiB): under exactly-once an output the topic refuses is refused
    # again after every restart, and a worker that cannot read the limit never learns it.
    answer = [
        (TOPIC_AUTHORIZATION_FAILED, "denied", 2, "routed", []),
        described("escalated", "2097152"),
        described("dlq", "1048588"),
    ]
    monkeypatch.setattr(limits, "make_admin", lambda _kafka: Admin(answer))
    got = await read_limits(KAFKA, ["routed", "escalated", "dlq"], "dlq")
    assert got["routed"] == TopicLimit(1_048_588, compacted=False)
    assert got["escalated"] == TopicLimit(2_097_152, compacted=False)  # its own, read
    small = KafkaSettings(bootstrap_servers="127.0.0.1:1", max_request_size=524_288)
    got = await read_limits(small, ["routed", "escalated", "dlq"], "dlq")
    assert got["routed"].max_bytes == 524_288  # never past what the producer may send
