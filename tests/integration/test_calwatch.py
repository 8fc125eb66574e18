"""``calibrate --watch`` with real parts: a real worker routes synthetic traffic (labels drawn
from softmax(z / T*)) on a real broker, the monitor runs as a real process, a real Prometheus
scrapes it with the repo's alert rules, and reviewers' verdicts arrive in two waves. After
each wave Prometheus holds the ECE, the fitted temperature and the verdict counts that a
one-shot ``calibrate --json`` over the same topics reports; the dashboard's calibration panel
and the calibration alert return data; SIGTERM stops the monitor with exit status 0."""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests import verdict_traffic as vt
from tests.integration import helpers
from tests.integration.test_calibrate import send
from tests.integration.test_observability import ALERTS, empty_queries, poll, queries
from tests.prom import (
    CALIBRATION_JOB,
    Prometheus,
    free_port,
    http_get,
    promtool,
    running_prometheus,
)
from worker.devkit import traffic
from worker.stream import admin

pytestmark = pytest.mark.integration

EVENTS = 6_000
TRUE_T = 1.6
RATE = 0.1
LABELS = ["billing", "tech", "sales", "hr"]
THRESHOLD = 0.05  # LogitRouterCalibrationError's, in deploy/prometheus/alerts.yml


def scraped(prom: Prometheus, topic: str) -> dict[str, Any]:
    """The monitor's figures for ``topic`` as Prometheus holds them."""

    def values(expr: str, label: str | None = None) -> dict[str, float]:
        return {
            (s["metric"][label] if label else ""): float(s["value"][1])
            for s in prom.vector(expr)
            if s["metric"].get("topic") == topic
        }

    ece = prom.vector("logit_router_calibration_error")
    return {
        "ece": {
            (s["metric"]["temperature"], s["metric"]["binning"]): float(s["value"][1]) for s in ece
        },
        "fitted": values("logit_router_calibration_fitted_temperature").get("", math.nan),
        "verdicts": values("logit_router_calibration_verdicts", "result"),
        "kept": values("logit_router_calibration_kept_outputs").get("", math.nan),
        "updated": values("logit_router_calibration_last_update_timestamp_seconds").get("", 0.0),
    }


def one_shot(topic: str, verdicts: str, config: Path) -> dict[str, Any]:
    done = helpers.cli(
        "calibrate", "--topic", topic, "--verdicts", verdicts, "--config", config, "--json"
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = orjson.loads(done.stdout)
    return report


def check_equal(got: dict[str, Any], report: dict[str, Any]) -> None:
    """The live figures are the one-shot report's (its routed_not_sampled and other_topic
    are the monitor's unknown_id: it keeps no output a verdict cannot be used on)."""
    assert got["ece"]["live", "equal_width"] == pytest.approx(report["before"]["ece"], abs=1e-9)
    assert got["ece"]["live", "adaptive"] == pytest.approx(
        report["before"]["adaptive_ece"], abs=1e-9
    )
    assert got["ece"]["fitted", "equal_width"] == pytest.approx(report["after"]["ece"], abs=1e-9)
    assert got["fitted"] == pytest.approx(report["fit"]["fitted"], rel=1e-9)
    counts = report["verdicts"]
    folded = counts["unknown_id"] + counts["other_topic"] + counts["routed_not_sampled"]
    assert got["verdicts"] == {
        "read": counts["read"],
        "malformed": counts["malformed"],
        "duplicates": counts["duplicates"],
        "unknown_id": folded,
        "unknown_label": counts["unknown_label"],
        "masked_label": counts["masked_label"],
        "used": counts["used"],
    }


async def test_the_monitor_serves_the_one_shot_figures_and_follows_new_verdicts(
    bootstrap: str, uid: str, tmp_path: Path
) -> None:
    support, verdict_topic = f"support-{uid}", f"verdicts-{uid}"
    live = {"temperature": 1.0, "min_margin": 0.2, "labels": LABELS, "audit_sample_rate": RATE}
    settings = helpers.make_settings(bootstrap, uid, topics={support: live})
    await helpers.create_all(settings)
    await admin.create_topics(settings.kafka, [verdict_topic], 3)
    rng = np.random.default_rng(7)
    z = vt.logits(rng, EVENTS, len(LABELS))
    truth = vt.labels_at(rng, z, TRUE_T)
    await traffic.produce(bootstrap, support, vt.events(z))
    async with helpers.running_worker(settings):
        await helpers.wait_until_committed(settings)
    outputs = await helpers.read_outputs(settings)
    decision = {orjson.loads(r.value)["id"]: "escalated" for r in outputs.escalated}
    reviewed = [i for i in range(EVENTS) if f"e{i}" in decision]
    routed = [i for i in range(EVENTS) if f"e{i}" not in decision]
    assert len(reviewed) > 1_000 and routed

    config = helpers.write_config(settings, tmp_path / "live.toml")
    port = free_port()
    log = tmp_path / "monitor.log"
    monitor = start_monitor(log, support, verdict_topic, config, port)
    async with running_prometheus(
        tmp_path / "prom", [f"127.0.0.1:{port}"], [ALERTS], job=CALIBRATION_JOB
    ) as prom:

        async def figures() -> dict[str, Any]:
            return await asyncio.to_thread(scraped, prom, support)

        # Before any verdict: every escalated output kept, nothing read, the ECE is NaN.
        first = await poll(
            figures,
            lambda f: f["kept"] == len(reviewed) and f["verdicts"].get("read") == 0,
            "the monitor to read the outputs",
        )
        assert all(math.isnan(x) for x in first["ece"].values()) and len(first["ece"]) == 4
        assert math.isnan(first["fitted"])

        # First wave: half the reviewed events, and verdicts the monitor cannot use.
        half = reviewed[: len(reviewed) // 2]
        wave: list[dict[str, Any] | bytes] = [
            {"id": f"e{i}", "label": LABELS[truth[i]] if i % 2 else int(truth[i])} for i in half
        ]
        wave += [
            b"{not json",
            {"id": "no-such-event", "label": 1},
            *({"id": f"e{i}", "label": 0} for i in routed[:3]),
            {"id": f"e{half[0]}", "label": (int(truth[half[0]]) + 1) % 4},  # a correction
        ]
        await send(bootstrap, verdict_topic, [(body, now_ms()) for body in wave])
        one = await poll(
            figures,
            lambda f: f["verdicts"].get("read") == len(wave),
            "the monitor to read the first wave",
        )
        report = await asyncio.to_thread(one_shot, support, verdict_topic, config)
        check_equal(one, report)
        assert one["verdicts"]["used"] == len(half) and one["verdicts"]["unknown_id"] == 4

        # Second wave: the rest. The figures move to the one-shot ones over both waves.
        rest: list[tuple[dict[str, Any] | bytes, int]] = [
            ({"id": f"e{i}", "label": int(truth[i])}, now_ms()) for i in reviewed[len(half) :]
        ]
        await send(bootstrap, verdict_topic, rest)
        two = await poll(
            figures,
            lambda f: f["verdicts"].get("read") == len(wave) + len(rest),
            "the monitor to read the second wave",
        )
        report = await asyncio.to_thread(one_shot, support, verdict_topic, config)
        check_equal(two, report)
        assert two["verdicts"]["used"] == len(reviewed)
        assert two["ece"]["live", "equal_width"] != one["ece"]["live", "equal_width"]
        assert two["updated"] > one["updated"]
        assert abs(two["fitted"] / TRUE_T - 1) < 0.1

        # The dashboard's calibration panel and the alert rule return data from the monitor,
        # and the alert is pending exactly when the ECE at the live temperature is above it.
        checked = [what for what, _ in queries([support], calibration=True)]
        assert sorted(checked) == [
            *["Calibration error (ECE), fitted and live temperature"] * 3,
            "alert LogitRouterCalibrationError (bool)",
        ]
        assert await asyncio.to_thread(empty_queries, prom, [support], True) == []
        above = two["ece"]["live", "equal_width"] > THRESHOLD
        await poll(
            lambda: asyncio.to_thread(calibration_alerts, prom),
            lambda found: found == ([(support, "pending")] if above else []),
            f"the calibration alert to be {'pending' if above else 'quiet'}",
        )

        # What Prometheus scraped passes promtool's lint, NaN gauges and all.
        _, _, exposition = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
        proc = await asyncio.to_thread(promtool, "check", "metrics", stdin=exposition)
        assert proc.returncode == 0 and proc.stdout.strip() == b"", proc.stdout + proc.stderr

    monitor.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(monitor.wait, 30) == 0, log.read_text()
    text = log.read_text()
    assert f"watching {support}; /metrics on http://127.0.0.1:{port}" in text
    assert "Traceback" not in text


def start_monitor(
    log: Path, topic: str, verdicts: str, config: Path, port: int
) -> subprocess.Popen[bytes]:
    """``calibrate --watch`` as a real process, refreshing every second; output to ``log``."""
    with log.open("wb") as out:
        monitor = subprocess.Popen(
            [
                sys.executable, "-m", "worker", "calibrate", "--watch",
                "--topic", topic, "--verdicts", verdicts, "--config", str(config),
                "--interval", "1s", "--min-verdicts", "300", "--metrics-port", str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    helpers.STARTED.append(monitor)
    return monitor


def calibration_alerts(prom: Prometheus) -> list[tuple[str, str]]:
    answer = prom.api("alerts")
    assert answer["status"] == "success", answer
    return [
        (a["labels"]["topic"], a["state"])
        for a in answer["data"]["alerts"]
        if a["labels"]["alertname"] == "LogitRouterCalibrationError"
    ]


def now_ms() -> int:
    return int(time.time() * 1000)
