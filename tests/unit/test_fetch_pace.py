"""The fetch follows the event loop's load: it grows while the loop is busy, a step per look,
settles where the loop is neither busy nor idle, and comes back once the loop is idle."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from worker.core.fetch_pace import BUSY_FROM, IDLE_BELOW, Fetch, FetchPace
from worker.core.kafka_settings import KafkaSettings
from worker.core.settings import Settings
from worker.observability.metrics import Metrics
from worker.stream import fetch_pacing


def pace(**kafka: int) -> FetchPace:
    return FetchPace(KafkaSettings(**kafka))


def test_a_busy_loop_grows_the_fetch_in_four_steps_to_the_busy_setting_and_no_further() -> None:
    p = pace()
    assert p.fetch == Fetch(196_608, 10)
    seen = [p.observe(0.9) for _ in range(6)]
    assert seen == [
        Fetch(278_528, 12),
        Fetch(360_448, 15),
        Fetch(442_368, 18),
        Fetch(524_288, 20),
        None,  # already there: nothing to change
        None,
    ]


def test_between_the_thresholds_the_fetch_stays_where_it_is() -> None:
    p = pace()
    p.observe(0.9)
    p.observe(0.9)
    middle = p.fetch
    for share in (BUSY_FROM, IDLE_BELOW, (BUSY_FROM + IDLE_BELOW) / 2):
        assert p.observe(share) is None
    assert p.fetch == middle


def test_an_idle_loop_brings_the_fetch_back_to_the_light_setting() -> None:
    p = pace()
    for _ in range(4):
        p.observe(1.0)
    back = [p.observe(0.05) for _ in range(5)]
    assert back[3] == Fetch(196_608, 10)
    assert back[4] is None
    assert p.fetch == p.light


@pytest.mark.parametrize(
    ("kafka", "light", "busy"),
    [
        ({}, Fetch(196_608, 10), Fetch(524_288, 20)),
        # A light fetch set above the busy default: the busy one is the light one, so no error.
        (
            {"fetch_min_bytes": 2_000_000, "fetch_max_wait_ms": 50},
            Fetch(2_000_000, 50),
            Fetch(2_000_000, 50),
        ),
        (
            {"fetch_min_bytes_busy": 1_048_576, "fetch_max_wait_ms_busy": 40},
            Fetch(196_608, 10),
            Fetch(1_048_576, 40),
        ),
        # Both set to the light values: the fetch is fixed.
        (
            {"fetch_min_bytes_busy": 196_608, "fetch_max_wait_ms_busy": 10},
            Fetch(196_608, 10),
            Fetch(196_608, 10),
        ),
    ],
)
def test_the_two_ends_come_from_the_settings(
    kafka: dict[str, int], light: Fetch, busy: Fetch
) -> None:
    p = pace(**kafka)
    assert (p.light, p.busy) == (light, busy)
    for _ in range(4):
        p.observe(1.0)
    assert p.fetch == busy


@pytest.mark.parametrize(("follow", "warned"), [(True, 1), (False, 0)])
async def test_without_the_fetch_settings_in_the_client_the_fetch_stays_light_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, follow: bool, warned: int
) -> None:
    """A consumer with no fetcher to set (never started here, or an aiokafka that keeps the
    settings elsewhere): one warning, the fetch gauge at the light setting, the loop's load
    still exported. Not following the load (exactly-once), it never tries: no warning."""
    monkeypatch.setattr(fetch_pacing, "PACE_S", 0.01)
    monkeypatch.setattr(fetch_pacing.ThreadLoad, "read", lambda self: 0.95)
    settings = Settings(topics={"t": {}})
    registry = CollectorRegistry()
    metrics = Metrics(settings, registry)
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
    task = asyncio.create_task(
        fetch_pacing.pace_fetches(consumer, settings.kafka, metrics, follow=follow)
    )
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await consumer.stop()
    warnings = [r for r in caplog.records if r.name == fetch_pacing.__name__]
    assert len(warnings) == warned, warnings
    assert all("fetches stay at 196608 bytes or 10 ms" in w.getMessage() for w in warnings)
    assert registry.get_sample_value("logit_router_fetch_min_bytes") == 196_608
    assert registry.get_sample_value("logit_router_event_loop_cpu_ratio") == 0.95
