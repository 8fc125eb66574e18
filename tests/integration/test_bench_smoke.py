"""The benchmark runs end to end on a tiny count: every contender reports sane figures.

It asserts no timing (this machine is shared); it checks that every event produced was
counted in each contender's outputs, and that the report has what docs/performance.md says.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from worker.core import native

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EVENTS = 2000
LATENCY_EVENTS = 400  # a second at 400 events/s, after half a second of warm-up
WARMUP_EVENTS = 200
# Ten contenders, each its own process; from a clean cache, a first Maven build of the Kafka
# Streams peer (plugins and jars from Maven Central) on top.
TIMEOUT_S = 600
PEERS = {"quix", "kstreams", "kstreams_eos", "faststream", "faststream_tuned"}


def test_a_tiny_benchmark_reports_every_contender(bootstrap: str, tmp_path: Path) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench", "--events", str(EVENTS),
            "--rate", str(LATENCY_EVENTS), "--latency-seconds", "1", "--warmup-seconds", "0.5",
            "--quix-commit-interval", "0.5", "--stall-seconds", "60",
            "--broker-warmup-seconds", "0.1",
            "--latency-samples", str(tmp_path / "samples"), "--save", str(tmp_path / "run.json"),
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith("contender") for line in lines)  # the table
    # The broker's warm-up comes before the first contender, and is not one of them. This
    # broker is not a process the bench can look at, so the budget alone ends it: one pass.
    runs = [line for line in lines if line.startswith("running ")]
    assert runs[:2] == [
        "running the broker's warm-up (the worker, untimed) ...",
        "running (b) worker, at-least-once ...",
    ]
    summary = orjson.loads(lines[-1])
    assert summary["events_produced"] == EVENTS
    warmup = summary["broker_warmup"]
    assert warmup["passes"] == 1 and "failed" not in warmup
    assert warmup["jit_cores"] == [] and warmup["quiet"] is False
    # Each pass runs the worker under both guarantees: the broker's transaction paths are
    # warmed before (c) too.
    assert len(warmup["events_per_s"]) == len(warmup["events_per_s_exactly_once"]) == 1
    assert warmup["events_per_s_exactly_once"][0] > 0
    assert any(line.startswith("  pass 1: ") and "under exactly-once" in line for line in lines)
    # Then one pass with a latency phase, at the run's rate: the paced load's paths warmed too.
    assert warmup["latency_pass"]["rate"] == LATENCY_EVENTS, warmup
    assert warmup["latency_pass"]["receipt_ms"]["p50"] > 0
    assert any(line.startswith("  latency pass: latency at") for line in lines)
    assert summary["environment"]["aiokafka_c_extension"] is True
    # ./dev builds the compiled hot path wherever cargo is found, and then says so here.
    expect_native = os.environ.get("LOGIT_ROUTER_EXPECT_NATIVE") == "1"
    assert summary["environment"]["native_hot_path"] is (expect_native or native.available())
    results = summary["contenders"]
    assert set(results) == {"raw", "worker", "worker_shadow", "worker_eos", "worker_x2", *PEERS}
    assert results["worker_x2"]["processes"] == 2 and results["worker"]["processes"] == 1
    for name, r in results.items():
        if name == "worker_eos" and not r["available"]:
            assert r["reason"]  # exactly-once may be refused; then it says why
            continue
        assert r["available"], (name, r.get("reason"))
        assert r["events_in"] == r["events_out"] == EVENTS, name
        assert r["exit_code"] == 0, name
        assert r["transactional_outputs"] is (name in ("worker_eos", "kstreams_eos"))
        assert r["events_per_s"] > 0 and r["cpu_s"] >= 0 and r["peak_rss_mb"] > 0
        assert r["rss_mb_first_tenth"] > 0 and r["rss_mb_last_tenth"] > 0
        # The throughput phase's CPU in cores; the broker's only when it is the bench's own.
        assert set(r["cpu_cores"]) == {"contender"}, name
        # cpu_s is rounded to 0.01 s and seconds to 1 ms: on a tiny run that moves the ratio.
        cores = r["cpu_s"] / r["seconds"]
        rounding = (0.005 + 0.0005 * cores) / r["seconds"] + 0.005
        assert r["cpu_cores"]["contender"] == pytest.approx(cores, abs=rounding), name
        lat = r["latency"]
        assert lat["warmup_sent"] == WARMUP_EVENTS
        assert lat["sent"] == WARMUP_EVENTS + LATENCY_EVENTS <= lat["outputs"]
        # Malformed events carry no sent_ns; the warm-up's samples are left out of the figures.
        assert 0 < lat["timed"] <= LATENCY_EVENTS and 0 < lat["warmup_timed"] <= WARMUP_EVENTS
        assert lat["timed"] + lat["warmup_timed"] <= lat["outputs"]
        q = lat["receipt_ms"]
        assert 0 <= q["p50"] <= q["p99"] <= q["p99.9"] <= q["max"]
        # The load's lag behind its schedule, beside the latency it is part of: at 400
        # events/s it keeps up within seconds, whatever the machine's load.
        lag = lat["pacer_lag_ms"]
        assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"] < 5000, name
        # The CPU of each process over the window; an external broker's is not known here.
        assert set(lat["cpu_cores"]) == {"contender", "load", "probe"}, name
        cpus = os.cpu_count() or 1
        assert all(0 <= cores <= cpus + 0.5 for cores in lat["cpu_cores"].values()), name
        # The machine's lowest free memory in the phase, at most all there is.
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
        assert 0 < lat["memory_free_min_mb"] < total_mb, name
        # --latency-samples: one "sent_ns receipt_us" line per timed output, warm-up included;
        # those stamped from the window's start are the figures' samples, the same maximum.
        text = (tmp_path / "samples" / f"{name}.txt").read_text()
        samples = [tuple(map(int, line.split())) for line in text.splitlines()]
        assert len(samples) == lat["timed"] + lat["warmup_timed"], name
        measured = [us for sent, us in samples if sent >= lat["measured_from_ns"]]
        assert len(measured) == lat["timed"], name
        assert max(measured) / 1000 == pytest.approx(q["max"], abs=0.001)
        # Stamped with the time each was due, not when the pacer reached it: the stamps sit
        # on the schedule, one interval of 1/rate apart or more (a malformed event between two
        # carries none), where stamps taken on the way out would be microseconds apart
        # within each 5-ms tick.
        stamps = sorted({sent for sent, _ in samples})
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert min(gaps) >= 1e9 / LATENCY_EVENTS - 1, name
        assert stamps[0] < lat["measured_from_ns"] <= stamps[-1]
    assert results["raw"]["ratio_to_raw"] == 1.0
    assert results["worker"]["ratio_to_raw"] > 0
    assert results["worker"]["ratio_to_worker"] == 1.0
    assert all(results[name]["ratio_to_worker"] > 0 for name in PEERS)
    targets = {t["target"]: t for t in summary["targets"]}
    assert list(targets)[:1] == ["worker >= 0.85 x raw"]
    cpu = targets["worker CPU <= 15 us per event"]
    assert cpu["value"] == results["worker"]["cpu_us_per_event"]
    assert cpu["met"] is (cpu["value"] <= 15)
    # --save keeps the same report (a full run keeps it in bench/results/ by itself).
    assert orjson.loads((tmp_path / "run.json").read_bytes()) == summary
    assert summary["environment"]["commit"]
