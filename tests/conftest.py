"""Fixtures shared by both tiers. One real Kafka broker per test session (integration tier):
from KAFKA_BOOTSTRAP_SERVERS, a Docker engine, or a local process (see worker/devkit/broker/).
Every test gets its own uuid-named topics and group, so tests share no state."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from worker.devkit.broker import Broker, throwaway_broker


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    with throwaway_broker(auto_create_topics=False) as broker:
        yield broker


@pytest.fixture
def bootstrap(kafka_broker: Broker) -> str:
    return kafka_broker.bootstrap_servers


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]
