"""Drift with real parts: a reference taken by ``drift snapshot`` (a subprocess) from what a
worker published on a real broker; a worker watching it, scraped by a real Prometheus that
evaluates the real alert rule (its ``for:`` shortened, the expression unchanged; the real 10
minutes are covered by promtool's unit tests); and the offline ``drift`` command checked
against scipy on the events the test itself sent."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from scipy import special, stats

from tests.integration.helpers import (
    cli,
    create_all,
    make_settings,
    running_worker,
    wait_until_committed,
    write_config,
)
from tests.integration.test_observability import (
    active_alerts,
    poll,
    poll_prom,
    serving_worker,
)
from tests.prom import DEPLOY, running_prometheus
from worker.core import drift
from worker.devkit import traffic

pytestmark = pytest.mark.integration

TEMPERATURE = 0.7
WINDOW_S = 20.0  # the worker's window in this test (600 s in production)
SHIFTED_SCALE = 3.0  # the logit scale after the shift (1.0 before, and in the reference)
RATE_EVENTS = 100  # per quarter second


class Sent:
    """Events sent, with the margins and top-1 probabilities the worker should publish."""

    def __init__(self) -> None:
        self.margins: list[float] = []
        self.top1s: list[float] = []
        self.shifted_from = -1  # the index of the first event sent at another scale

    def make(self, n: int, scale: float, rng: np.random.Generator) -> list[traffic.Event]:
        if scale != 1.0 and self.shifted_from < 0:
            self.shifted_from = len(self.margins)
        z = rng.normal(size=(n, 3)) * scale
        scaled = z / TEMPERATURE
        p = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        top = np.sort(p, axis=1)
        self.margins += (top[:, -1] - top[:, -2]).tolist()
        self.top1s += top[:, -1].tolist()
        start = len(self.margins) - n
        return [
            traffic.Event(None, orjson.dumps({"id": f"e{start + i}", "logits": row}), [], None)
            for i, row in enumerate(z.tolist())
        ]


def shortened_rules(path: Path) -> Path:
    """deploy/prometheus/alerts.yml with every ``for:`` cut to 5 s; expressions as they are."""
    doc = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "5s"
    path.write_text(yaml.safe_dump(doc))
    return path


def independent_psi(reference_counts: list[int], values: list[float]) -> float:
    counts, _ = np.histogram(values, bins=np.array(drift.EDGES))
    e = np.maximum(np.asarray(reference_counts) / sum(reference_counts), 1e-4)
    a = np.maximum(counts / counts.sum(), 1e-4)
    return float(np.sum(special.rel_entr(a, e) + special.rel_entr(e, a)))


def drift_alerts(prom: Any, topic: str) -> list[dict[str, Any]]:
    answer = prom.api("alerts")
    return [
        a
        for a in answer["data"]["alerts"]
        if a["labels"]["alertname"] == "LogitRouterMarginDrift" and a["labels"]["topic"] == topic
    ]


async def test_a_logit_scale_shift_drives_the_psi_past_0_25_and_the_alert_fires(
    bootstrap: str, uid: str, tmp_path: Path
) -> None:
    topic = f"support-{uid}"
    policy: dict[str, Any] = {
        "temperature": TEMPERATURE,
        "min_margin": 0.15,
        "labels": ["billing", "tech", "sales"],
    }
    settings = make_settings(bootstrap, uid, topics={topic: policy})
    await create_all(settings)
    rng = np.random.default_rng(23)
    config = write_config(settings, tmp_path / "worker.toml")

    # 1. The reference: 3,000 events at scale 1 through a worker, then `drift snapshot`.
    before = Sent()
    async with running_worker(settings):
        await traffic.produce(bootstrap, topic, before.make(3_000, 1.0, rng))
        await wait_until_committed(settings)
    ref_path = tmp_path / "ref.json"
    proc = await asyncio.to_thread(
        cli, "drift", "snapshot", "--topic", topic, "--config", config, "-o", ref_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wrote {ref_path}: 3,000 scored events of {topic}\n"
    reference = drift.parse_reference(ref_path.read_bytes())
    assert reference.n == 3_000
    assert reference.counts("margin").tolist() == drift.bin_counts(before.margins).tolist()
    assert sorted(reference.measures["top1"].sample) == pytest.approx(sorted(before.top1s))

    # 2. A worker watching it, scraped by Prometheus; traffic at scale 1, then at scale 3.
    watched = {**policy, "drift": {"reference": str(ref_path), "window_s": WINDOW_S}}
    live = make_settings(bootstrap, uid, topics={topic: watched}, http={"enabled": True, "port": 0})
    assert live.config_version == settings.config_version  # watching changes no decision
    rules = shortened_rules(tmp_path / "alerts.yml")
    after = Sent()
    shift = asyncio.Event()
    shift_at: list[str] = []  # the ISO time before the first shifted record

    async def stream(stop: asyncio.Event) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            while not stop.is_set():
                if shift.is_set() and not shift_at:
                    await asyncio.sleep(0.01)  # every earlier record is stamped before it
                    shift_at.append(datetime.now(UTC).isoformat())
                scale = SHIFTED_SCALE if shift_at else 1.0
                await traffic.send_all(producer, topic, after.make(RATE_EVENTS, scale, rng))
                await asyncio.sleep(0.25)
        finally:
            await producer.stop()

    registry = CollectorRegistry()
    started = time.monotonic()
    async with (
        serving_worker(live, registry) as (_, port),
        running_prometheus(tmp_path / "prom", [f"127.0.0.1:{port}"], [rules]) as prom,
    ):
        stop = asyncio.Event()
        producing = asyncio.create_task(stream(stop))
        try:
            psi = f'logit_router_drift_psi{{topic="{topic}"}}'
            # Steady: both measures get a number, and stay below 0.1 over a dozen seconds.
            await poll_prom(prom, f"count({psi} >= 0) == 2", "a PSI of the steady traffic")
            steady_from = time.time()
            await asyncio.sleep(12)
            highest = await asyncio.to_thread(
                prom.vector, f"max_over_time({psi}[{int(time.time() - steady_from) + 1}s])"
            )
            assert len(highest) == 2
            for s in highest:
                assert float(s["value"][1]) < 0.1, s
            assert drift_alerts(prom, topic) == []

            # The shift: the gauge passes 0.25 and the real rule fires (critical).
            shift.set()
            margin_psi = f'logit_router_drift_psi{{topic="{topic}", measure="margin"}}'
            await poll_prom(prom, f"{margin_psi} > 0.25", "the margin PSI past 0.25")
            firing = await poll(
                lambda: asyncio.to_thread(drift_alerts, prom, topic),
                lambda alerts: any(
                    a["state"] == "firing" and a["labels"]["severity"] == "critical" for a in alerts
                ),
                "LogitRouterMarginDrift to fire",
            )
            measures = {
                a["labels"]["measure"] for a in firing if a["labels"]["severity"] == "critical"
            }
            assert "margin" in measures
        finally:
            stop.set()
            await producing
        assert ("LogitRouterMarginDrift", topic) in await asyncio.to_thread(active_alerts, prom)
    await wait_until_committed(live)
    elapsed = time.monotonic() - started

    # 3. Offline, from the shift on: PSI and KS as scipy computes them on the events sent.
    proc = await asyncio.to_thread(
        cli, "drift", "--reference", ref_path, "--topic", topic, "--config", config,
        "--from", shift_at[0], "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)
    first = after.shifted_from
    shifted = {"margin": after.margins[first:], "top1": after.top1s[first:]}
    assert report["events"] == len(after.margins) - first
    assert report["reference"]["events"] == 3_000
    ref_values = {"margin": before.margins, "top1": before.top1s}
    for m in drift.MEASURES:
        want_psi = independent_psi(list(reference.measures[m].counts), shifted[m])
        assert report[m]["psi"] == pytest.approx(want_psi, rel=1e-9), m
        assert report[m]["psi"] > 0.25
        want_ks = stats.ks_2samp(shifted[m], ref_values[m]).statistic
        assert report[m]["ks"] == pytest.approx(want_ks, abs=1e-9), m
    # The table a person reads says the same.
    proc = await asyncio.to_thread(
        cli, "drift", "--reference", ref_path, "--topic", topic, "--config", config,
        "--from", shift_at[0],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    margin_row = next(line for line in proc.stdout.splitlines() if line.startswith("margin"))
    assert margin_row.split()[1] == f"{report['margin']['psi']:.4f}"
    assert margin_row.endswith("shifted")
    assert elapsed < 120, f"the live part took {elapsed:.0f}s"
