"""The broker's warm-up (``bench.run._warm_broker``): which runs it makes, in which order, and
what it reports when the broker refuses exactly-once. Its runs are recorded here instead of
made; the runs themselves are the benchmark's smoke test's, on a real broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import run as bench_run
from bench.contender import Contender, Run

RATE = 50_000.0


class Runs:
    """Stands in for ``_attempt``: each run's name and guarantee, in order; exactly-once
    refused if asked."""

    def __init__(self, refuse_exactly_once: bool) -> None:
        self.refuse_exactly_once = refuse_exactly_once
        self.made: list[tuple[str, str, bool]] = []

    async def __call__(
        self, run: Run, c: Contender, rate: float | None, *, latency: bool = True
    ) -> dict[str, Any]:
        guarantee = c.processing.get("guarantee", "at_least_once")
        self.made.append((c.name, guarantee, latency))
        if guarantee == "exactly_once" and self.refuse_exactly_once:
            return {"name": c.name, "available": False, "reason": "KafkaError: no coordinator"}
        result: dict[str, Any] = {"name": c.name, "available": True, "events_per_s": RATE}
        if latency:
            result["latency"] = {"rate": rate, "achieved_rate": rate, "warmup_s": 0.0,
                                 "receipt_ms": {"p50": 1.0, "p99": 2.0},
                                 "cpu_cores": {"contender": 0.5}}  # fmt: skip
        return result


def _run(tmp_path: Path) -> Run:
    return Run(
        bootstrap="127.0.0.1:9", run_id="bench-test", inputs={}, ends={}, partitions=3,
        workdir=tmp_path, kafka={}, processing={}, quix_commit_interval=5.0,
        latency_seconds=1.0, warmup_seconds=0.0, stall_s=10.0, profile_dir=None, seed=1,
    )  # fmt: skip


async def _warm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, refuse: bool, rate: float | None
) -> tuple[Runs, dict[str, Any]]:
    """The warm-up against a broker whose JIT compiler is quiet from the start, so that two
    passes with the same rate end it; the runs it made, and its report."""
    runs = Runs(refuse_exactly_once=refuse)
    monkeypatch.setattr(bench_run, "_attempt", runs)
    monkeypatch.setattr(bench_run, "_jit", lambda run: 1.0)
    return runs, await bench_run._warm_broker(_run(tmp_path), budget_s=600, rate=rate)


async def test_each_pass_runs_at_least_once_then_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, done = await _warm(tmp_path, monkeypatch, refuse=False, rate=None)
    assert runs.made == [
        ("broker_warmup1", "at_least_once", False),
        ("broker_warmup_eos1", "exactly_once", False),
        ("broker_warmup2", "at_least_once", False),
        ("broker_warmup_eos2", "exactly_once", False),
        ("broker_warmup_latency", "at_least_once", True),
    ]
    assert done["passes"] == 2 and done["quiet"] is True
    assert done["events_per_s"] == done["events_per_s_exactly_once"] == [RATE, RATE]
    assert "exactly_once_failed" not in done and "failed" not in done
    assert done["latency_pass"]["rate"] == RATE / 2


async def test_a_broker_refusing_exactly_once_is_still_warmed_under_at_least_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, done = await _warm(tmp_path, monkeypatch, refuse=True, rate=RATE)
    # Exactly-once is tried once; the passes and the latency pass go on without it.
    assert [guarantee for _, guarantee, _ in runs.made] == [
        "at_least_once", "exactly_once", "at_least_once", "at_least_once"
    ]  # fmt: skip
    assert done["exactly_once_failed"] == "KafkaError: no coordinator"
    assert "failed" not in done
    assert done["passes"] == 2 and done["events_per_s_exactly_once"] == []
    assert done["latency_pass"]["rate"] == RATE
