"""Fixtures shared by both tiers. One real Kafka broker per test session (integration tier):
from KAFKA_BOOTSTRAP_SERVERS, a Docker engine, or a local process (see worker/devkit/broker/).
Every test gets its own uuid-named topics and group, so tests share no state.

The quick tier (``-m quick``) is the unit tests plus the pipeline's integration tests: what a
developer runs between edits. CI runs everything."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.devkit.broker import Broker, throwaway_broker

TESTS = Path(__file__).resolve().parent
QUICK = (TESTS / "unit", TESTS / "integration" / "test_pipeline.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.path == q or q in item.path.parents for q in QUICK):
            item.add_marker(pytest.mark.quick)


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
