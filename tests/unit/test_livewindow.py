"""``calibrate --watch``'s sliding window: its figures equal the one-shot join and measures on
the records inside the window, what leaves the window leaves the figures and the memory, the
caps hold, and only outputs a verdict can be used on are kept. And the command's arguments:
one line and exit 2 for what --watch refuses, exit 1 when Kafka cannot be reached."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests import verdict_traffic as vt
from tests.unit.test_verdicts import output_line
from worker.audit import calibrate
from worker.audit import verdicts as v
from worker.audit.livewindow import RESULTS, LiveWindow
from worker.core import calibration as cal
from worker.core.settings import Limits
from worker.core.topic_settings import TopicPolicy

T = "t"
HOUR_MS = 3_600_000
POLICY = TopicPolicy(temperature=1.0, min_margin=0.2, audit_sample_rate=0.1)


def window(**kw: int | bool) -> LiveWindow:
    args: dict[str, int | bool] = {
        "window_ms": HOUR_MS,
        "ground_truth": False,
        "max_outputs": 1_000_000,
        "max_verdicts": 1_000_000,
    }
    args.update(kw)
    return LiveWindow(
        T,
        Limits(),
        int(args["window_ms"]),
        bool(args["ground_truth"]),
        int(args["max_outputs"]),
        int(args["max_verdicts"]),
    )


def verdict(event_id: str, label: int | str) -> bytes:
    return orjson.dumps({"id": event_id, "label": label})


def traffic(n: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """Outputs (escalated below a margin of 0.3 at T=1, a tenth of the rest audit-sampled,
    the rest routed) and one verdict per output, labels from softmax(z / 1.5)."""
    rng = np.random.default_rng(seed)
    z = vt.logits(rng, n, 4)
    y = vt.labels_at(rng, z, 1.5)
    margin = cal.margins(cal.probabilities(z, 1.0))
    outs, verdicts = [], []
    for i in range(n):
        if margin[i] < 0.3:
            decision, reason = "escalated", "low_margin"
        elif rng.random() < 0.1:
            decision, reason = "escalated", "audit_sample"
        else:
            decision, reason = "routed", None
        outs.append(output_line(f"e{i}", z[i].tolist(), decision, reason, T))
        verdicts.append(verdict(f"e{i}", int(y[i])))
    return outs, verdicts


def test_the_window_gives_the_one_shot_figures_of_the_same_records() -> None:
    outs, verdicts = traffic(3_000, seed=1)
    routed = next(i for i, raw in enumerate(outs) if b'"routed"' in raw)
    escalated = next(i for i, raw in enumerate(outs) if b'"escalated"' in raw)
    verdicts += [b"{nope", verdict("no-such", 0), verdicts[5]]
    verdicts += [verdict(f"e{routed}", "not-a-class"), verdict(f"e{escalated}", "not-a-class")]
    outs.append(output_line("x1", [1.0, 0.0], "escalated", "low_margin", "other"))
    verdicts.append(verdict("x1", 0))
    live = window()
    for n, raw in enumerate(outs):
        live.add_output(raw, 1_000 + n)
    for n, raw in enumerate(verdicts):
        live.add_verdict(raw, 2_000 + n, 0, n)
    got = live.figures(10_000, POLICY, min_verdicts=1)

    joined = v.join(v.outputs_from_lines(outs, T, Limits()), v.verdicts_from_lines(verdicts), None)
    doc = calibrate.report(T, joined, POLICY)
    assert got.fitted == doc["fit"]["fitted"]
    assert got.ece["live", "equal_width"] == doc["before"]["ece"]
    assert got.ece["live", "adaptive"] == doc["before"]["adaptive_ece"]
    assert got.ece["fitted", "equal_width"] == doc["after"]["ece"]
    counts = doc["verdicts"]
    folded = counts["unknown_id"] + counts["other_topic"] + counts["routed_not_sampled"]
    want = {k: counts[k] for k in RESULTS} | {"unknown_id": folded}
    # A routed event's bad label: unknown_label in the one-shot, unknown_id here (not kept).
    assert got.counts == want | {
        "unknown_id": folded + 1,
        "unknown_label": counts["unknown_label"] - 1,
    }
    assert counts["unknown_label"] == 2 and counts["other_topic"] == 1
    assert (
        got.counts["used"] > 500 and got.counts["duplicates"] == 3
    )  # e5, and the two bad labels correcting a verdict
    # Only what a verdict can be used on is kept: no routed output, no other topic's.
    kept = sum(b'"escalated"' in raw and b'"topic":"t"' in raw for raw in outs)
    assert got.kept_outputs == kept < len(outs) / 2


def test_what_leaves_the_window_leaves_the_figures_and_the_memory() -> None:
    outs, verdicts = traffic(2_000, seed=2)
    live = window(window_ms=10_000)
    for raw in outs[:1_000]:
        live.add_output(raw, 0)
    for raw in outs[1_000:]:
        live.add_output(raw, 20_000)
    for n, raw in enumerate(verdicts[1_000:]):
        live.add_verdict(raw, 21_000, 0, n)
    for n, raw in enumerate(verdicts[:1_000]):  # on events now out of the window
        live.add_verdict(raw, 22_000, 1, n)
    early = live.figures(25_000, POLICY, min_verdicts=1)
    # Outputs stamped 0 are before 25,000 - 10,000: their verdicts find nothing.
    second = v.join(
        v.outputs_from_lines(outs[1_000:], T, Limits()),
        v.verdicts_from_lines(verdicts[1_000:]),
        None,
    )
    assert early.counts["used"] == second.counts["used"]
    assert early.counts["read"] == 2_000
    assert early.ece["live", "equal_width"] == calibrate.report(T, second, POLICY)["before"]["ece"]
    assert early.kept_outputs == len(second.kinds) + second.counts["unknown_label"]
    # Later the verdicts stamped 21,000 leave too: only the 22,000 ones count, on nothing.
    later = live.figures(31_500, POLICY, min_verdicts=1)
    assert later.counts["read"] == 1_000 and later.counts["used"] == 0
    assert later.kept_outputs == 0 and later.kept_verdicts == 1_000
    assert math.isnan(later.fitted) and math.isnan(later.ece["live", "equal_width"])
    gone = live.figures(40_000, POLICY, min_verdicts=1)
    assert gone.kept_verdicts == 0 and gone.counts == dict.fromkeys(RESULTS, 0)


def test_the_caps_keep_the_newest_and_count_what_they_drop() -> None:
    live = window(max_outputs=3, max_verdicts=2)
    for i in range(5):
        live.add_output(output_line(f"e{i}", [1.0, 0.9], "escalated", "low_margin", T), 1_000 + i)
    # A redelivery of e3: its older copy in the arrival order must not evict the new one.
    live.add_output(output_line("e3", [1.0, 0.9], "escalated", "low_margin", T), 1_010)
    for i in range(4):
        live.add_verdict(verdict(f"e{i + 1}", 0), 2_000 + i, 0, i)
    f = live.figures(5_000, POLICY, min_verdicts=1)
    assert live.dropped == {"outputs": 2, "verdicts": 2}
    assert f.kept_outputs == 3 and f.kept_verdicts == 2
    # Kept: e2, e4 and e3 (redelivered); verdicts kept: e3, e4.
    assert f.counts["used"] == 2 and f.counts["read"] == 2


def test_routed_outputs_are_kept_only_for_ground_truth() -> None:
    outs, verdicts = traffic(500, seed=3)
    plain, truth = window(), window(ground_truth=True)
    for raw in outs:
        plain.add_output(raw, 0)
        truth.add_output(raw, 0)
    for n, raw in enumerate(verdicts):
        plain.add_verdict(raw, 0, 0, n)
        truth.add_verdict(raw, 0, 0, n)
    a, b = plain.figures(1, POLICY, 1), truth.figures(1, POLICY, 1)
    assert b.kept_outputs == b.counts["used"] == 500
    assert a.counts["used"] == a.kept_outputs < 250
    assert a.counts["unknown_id"] == 500 - a.counts["used"]
    joined = v.join(
        v.outputs_from_lines(outs, T, Limits()), v.verdicts_from_lines(verdicts), None, True
    )
    assert b.fitted == calibrate.report(T, joined, POLICY, ground_truth=True)["fit"]["fitted"]


def test_below_the_minimum_the_figures_are_nan() -> None:
    outs, verdicts = traffic(400, seed=4)
    live = window()
    for raw in outs:
        live.add_output(raw, 0)
    for n, raw in enumerate(verdicts):
        live.add_verdict(raw, 0, 0, n)
    used = live.figures(1, POLICY, 1).counts["used"]
    short = live.figures(1, POLICY, used + 1)
    assert all(math.isnan(x) for x in short.ece.values()) and math.isnan(short.fitted)
    assert short.counts["used"] == used
    enough = live.figures(1, POLICY, used)
    assert all(math.isfinite(x) for x in enough.ece.values())


# --- the command's arguments ----------------------------------------------------------------

CONFIG = """
[kafka]
bootstrap_servers = "127.0.0.1:9"
connect_timeout_s = 1
[outputs]
routed = "out.routed"
escalated = "out.escalated"
dead_letter = "out.dlq"
[topics."in.a"]
"""


def run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp / "c.toml"
    config.write_text(CONFIG)
    (tmp / "v.jsonl").write_text("")
    argv = [a.format(cfg=config, tmp=tmp) for a in args]
    return subprocess.run(
        [sys.executable, "-m", "worker", "calibrate", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


BASE = ("--topic", "in.a", "--config", "{cfg}")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--verdicts", "v", "--watch", "--json"], "--watch does not take --json"),
        (["--verdicts", "v", "--watch", "--png", "{tmp}/a.png"], "--watch does not take --png"),
        (
            ["--verdicts", "v", "--watch", "--outputs-file", "{tmp}/v.jsonl"],
            "--watch does not take --outputs-file",
        ),
        (["--verdicts-file", "{tmp}/v.jsonl", "--watch"], "--watch does not take --verdicts-file"),
        (
            ["--verdicts", "v", "--watch", "--from", "2026-01-01T00:00:00Z"],
            "--watch does not take --from",
        ),
        (["--verdicts", "v", "--watch", "--target-error", "0.1"], "does not take --target-error"),
        (["--verdicts", "v", "--interval", "5s"], "--interval is for --watch"),
        (["--verdicts", "v", "--watch", "--window", "0"], "--window: must be > 0"),
        (["--verdicts", "v", "--watch", "--window", "1w"], "not a duration"),
        (["--verdicts", "v", "--watch", "--metrics-port", "70000"], "not a port number"),
        (["--verdicts", "v", "--watch", "--min-verdicts", "0"], "must be > 0"),
    ],
)
def test_a_bad_watch_argument_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    proc = run(tmp_path, *BASE, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert proc.stdout == ""


def test_watch_with_kafka_unreachable_is_one_line_and_exit_1(tmp_path: Path) -> None:
    proc = run(tmp_path, *BASE, "--verdicts", "v", "--watch", "--metrics-port", "0")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "cannot reach Kafka at 127.0.0.1:9 within 1s" in proc.stderr
