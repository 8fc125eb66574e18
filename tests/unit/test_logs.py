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


def _lookup_failed(
    err: Exception, capsys: pytest.CaptureFixture[str], level: str = "INFO"
) -> list[dict[str, str]]:
    logs.configure(level, "json")
    logging.getLogger(COORDINATOR).error("Group Coordinator Request failed: %s", err)
    return [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_a_retried_coordinator_lookup_is_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    [line] = _lookup_failed(errors.GroupCoordinatorNotAvailableError(), capsys)
    assert line["level"] == "WARNING"
    assert line["logger"] == COORDINATOR
    assert "GroupCoordinatorNotAvailable" in line["message"]


def test_a_lookup_that_fails_for_good_stays_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = errors.GroupAuthorizationFailedError("g")
    assert not err.retriable
    [line] = _lookup_failed(err, capsys)
    assert line["level"] == "ERROR"


def test_a_retried_lookup_is_not_shown_when_only_errors_are_asked_for(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _lookup_failed(errors.GroupCoordinatorNotAvailableError(), capsys, "ERROR") == []
    [line] = _lookup_failed(errors.GroupAuthorizationFailedError("g"), capsys, "ERROR")
    assert line["level"] == "ERROR"


def test_other_aiokafka_errors_keep_their_level(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "text")
    logging.getLogger(COORDINATOR).error("Heartbeat failed: %r", errors.RequestTimedOutError())
    assert " ERROR " + COORDINATOR in capsys.readouterr().err


def test_configuring_twice_adds_the_filter_once() -> None:
    logs.configure()
    logs.configure()
    filters = logging.getLogger(COORDINATOR).filters
    assert sum(isinstance(f, logs.RetriedLookupIsAWarning) for f in filters) == 1
