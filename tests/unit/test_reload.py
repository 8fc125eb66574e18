"""Reloads without a broker: the watched file, the hook after an applied reload, and what is
counted; the worker is built but never connected (a policy change needs no consumer)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from worker.core.settings import Settings, load_settings
from worker.observability.metrics import Metrics
from worker.stream.connections import FatalError
from worker.stream.pipeline import Worker, cancelled
from worker.stream.reload import Outcome, Reloader

CONFIG = '[http]\nenabled = false\n[topics."t"]\ntemperature = {t}\n'


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LOGIT_ROUTER_"):
            monkeypatch.delenv(key)


def worker_for(path: Path) -> Worker:
    settings = load_settings(path)
    return Worker(settings, Metrics(settings, CollectorRegistry()))


def reloads(worker: Worker, result: str) -> float | None:
    return worker.metrics.registry.get_sample_value(
        "logit_router_config_reloads_total", {"result": result}
    )


async def test_a_watched_file_is_reloaded_once_per_change(tmp_path: Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(CONFIG.format(t=0.7))
    worker = worker_for(path)
    applied: list[Settings] = []

    async def hook(settings: Settings) -> None:
        applied.append(settings)

    reloader = Reloader(path, worker, on_applied=hook)
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    reload = reloader.reload

    async def recorded(source: str) -> Outcome:
        outcome = await reload(source)
        outcomes.put_nowait(outcome)
        return outcome

    reloader.reload = recorded  # type: ignore[method-assign]
    watching = asyncio.create_task(reloader.watch(0.02))
    try:
        path.write_text(CONFIG.format(t=1.3))
        assert (await asyncio.wait_for(outcomes.get(), 10)).result == "applied"
        assert worker.router.policies["t"].temperature == 1.3
        assert [s.config_version for s in applied] == [worker.router.config_version]
        assert worker.fitter.router is worker.router
        path.write_text(CONFIG.format(t=-1.0))
        assert (await asyncio.wait_for(outcomes.get(), 10)).result == "refused"
        with pytest.raises(TimeoutError):  # once per change, not at every look
            await asyncio.wait_for(outcomes.get(), 0.3)
    finally:
        await cancelled(watching)
    assert reloads(worker, "refused") == 1
    assert reloads(worker, "applied") == 1
    assert worker.router.policies["t"].temperature == 1.3  # the refused file changed nothing
    assert len(applied) == 1


async def test_the_hook_failing_does_not_undo_the_reload(tmp_path: Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(CONFIG.format(t=0.7))
    worker = worker_for(path)

    async def hook(settings: Settings) -> None:
        raise RuntimeError("history topic unavailable")

    path.write_text(CONFIG.format(t=2.0))
    outcome = await Reloader(path, worker, on_applied=hook).reload("test")
    assert (outcome.result, outcome.version) == ("applied", worker.settings.config_version)
    assert worker.router.policies["t"].temperature == 2.0


async def test_a_version_that_cannot_be_recorded_is_refused_and_the_old_one_stays(
    tmp_path: Path,
) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(CONFIG.format(t=0.7))
    worker = worker_for(path)
    running = worker.settings.config_version
    recorded: list[str] = []
    applied: list[Settings] = []

    async def record(settings: Settings) -> None:
        recorded.append(settings.config_version)
        raise FatalError("cannot reach Kafka at 127.0.0.1:1 within 3s (config history producer)")

    async def hook(settings: Settings) -> None:
        applied.append(settings)

    path.write_text(CONFIG.format(t=2.0))
    outcome = await Reloader(path, worker, on_applied=hook, record=record).reload("test")
    assert (outcome.result, outcome.version) == ("refused", running)
    assert "cannot be recorded: cannot reach Kafka" in outcome.detail
    assert recorded and recorded[0] != running  # the new version was tried
    assert worker.router.policies["t"].temperature == 0.7
    assert applied == []
    assert reloads(worker, "refused") == 1


async def test_a_new_version_is_recorded_before_it_routes(tmp_path: Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(CONFIG.format(t=0.7))
    worker = worker_for(path)
    seen: list[float] = []

    async def record(settings: Settings) -> None:
        seen.append(worker.router.policies["t"].temperature)  # still the old router

    path.write_text(CONFIG.format(t=2.0))
    outcome = await Reloader(path, worker, record=record).reload("test")
    assert outcome.result == "applied"
    assert seen == [0.7]
    assert worker.router.policies["t"].temperature == 2.0


async def test_a_stopping_worker_refuses_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(CONFIG.format(t=0.7))
    worker = worker_for(path)
    worker._stop = asyncio.Event()
    worker._stop.set()  # as the stop handlers do: the worker is draining
    path.write_text(CONFIG.format(t=2.0))
    outcome = await Reloader(path, worker).reload("SIGHUP")
    assert (outcome.result, outcome.detail) == ("refused", "the worker is stopping")
    assert worker.router.policies["t"].temperature == 0.7
    assert reloads(worker, "refused") == 1


@pytest.mark.parametrize(
    "content", [b'[topics."\xff"]\n', b"\x7fELF\x02\x01\x01\x00\xff\xfe"], ids=["toml", "binary"]
)
async def test_a_file_that_is_not_utf8_is_refused_and_the_running_config_stays(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(CONFIG.format(t=0.7))
    worker = worker_for(path)
    path.write_bytes(content)
    outcome = await Reloader(path, worker).reload("SIGHUP")
    assert outcome.result == "refused"
    assert "not UTF-8 text" in outcome.detail
    assert worker.router.policies["t"].temperature == 0.7


async def test_an_environment_variable_that_is_not_utf8_refuses_a_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(CONFIG.format(t=0.7))
    worker = worker_for(path)
    monkeypatch.setenv("LOGIT_ROUTER_TOPICS__t__LABELS", os.fsdecode(b'["\xff", "b"]'))
    outcome = await Reloader(path, worker).reload("SIGHUP")
    assert outcome.result == "refused"
    assert "LOGIT_ROUTER_TOPICS__t__LABELS: its value is not UTF-8 text" in outcome.detail
