"""What the worker's log lines look like: levels a person or a log pipeline can act on."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
from aiokafka import errors

from worker.observability import logs

# The logger and the call aiokafka's group coordinator makes when a lookup fails.
COORDINATOR = "aiokafka.consumer.group_coordinator"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _client_and_worker_lines(capsys: pytest.CaptureFixture[str], level: str) -> list[str]:
    logs.configure(level, "json")
    logging.getLogger(COORDINATOR).error(
        "Group Coordinator Request failed: %s", errors.GroupCoordinatorNotAvailableError()
    )
    logging.getLogger("aiokafka").warning("Unable connect to %r", "127.0.0.1:1")
    logging.getLogger("worker.stream.service").error("cannot reach Kafka at 127.0.0.1:1")
    return [orjson.loads(line)["logger"] for line in capsys.readouterr().err.splitlines()]


@pytest.mark.parametrize("level", ["INFO", "warning", "ERROR"])
def test_the_clients_own_lines_are_left_out_below_debug(
    capsys: pytest.CaptureFixture[str], level: str
) -> None:
    assert _client_and_worker_lines(capsys, level) == ["worker.stream.service"]


def test_debug_shows_the_clients_own_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert _client_and_worker_lines(capsys, "DEBUG") == [
        COORDINATOR,
        "aiokafka",
        "worker.stream.service",
    ]
