"""``whatif`` on JSONL files: every number equals a direct computation with the scalar core,
whether the file holds input events or the worker's output events."""

from __future__ import annotations

import bisect
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.png import png_size
from worker.audit import sources, whatif
from worker.core.events import EventError, decode_event
from worker.core.records import Router
from worker.core.routing import Policy, Routing, ScoringError, route
from worker.core.settings import Settings
from worker.devkit import traffic

LABELS = ("billing", "tech", "sales")


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: int = 1_764_158_400_000
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def synthetic_lines(n: int = 1500, seed: int = 3) -> list[bytes]:
    events = traffic.synthetic(n, seed=seed, classes=3, malformed_rate=0.03, uncertain_rate=0.4)
    return [e.value for e in events]


def direct(lines: list[bytes], policy: Policy) -> dict[str, Any]:
    done: list[Routing] = []
    for raw in lines:
        try:
            event = decode_event(raw, max_bytes=10**7, max_classes=10**4)
            done.append(route(event.logit_values(), policy, event.labels))
        except (EventError, ScoringError):
            continue
    esc = [r for r in done if r.decision == "escalated"]
    return {
        "scored": len(done),
        "escalated": len(esc),
        "rate": len(esc) / len(done),
        "low_margin": sum(1 for r in esc if r.reason == "low_margin"),
        "low_top1": sum(1 for r in esc if r.reason == "low_top1"),
        "routed_labels": dict(Counter(r.label for r in done if r.decision == "routed")),
    }


def samples_of(lines: list[bytes]) -> list[whatif.Sample]:
    return sources.from_lines(lines, "t").samples["t"]


@pytest.mark.parametrize("labels", [None, LABELS])
def test_every_cell_equals_the_scalar_core(labels: tuple[str, ...] | None) -> None:
    lines = synthetic_lines()
    cells = whatif.grid(samples_of(lines), [0.5, 1.0, 2.0], [0.1, 0.25], [None, 0.55], labels)
    assert len(cells) == 12
    for cell in cells:
        want = direct(lines, Policy(cell.temperature, cell.min_margin, cell.min_top1, labels))
        assert {k: cell.as_dict()[k] for k in want} == want
    assert cells[0].unscored == 0


def test_the_threshold_found_reaches_the_nearest_reachable_rate() -> None:
    lines = synthetic_lines()
    samples = samples_of(lines)
    for t, t1, target in [(0.7, None, 0.2), (1.3, None, 0.33), (1.0, 0.5, 0.3), (0.5, None, 0.0)]:
        s = whatif.threshold_for(samples, t, target, t1)
        want = direct(lines, Policy(t, s.min_margin, t1))
        assert s.rate == want["rate"]
        # Every count some threshold can give, from the margins computed by the scalar core.
        scores = [route(x.logits, Policy(t, 0.0)).scores for x in samples]
        forced = sum(1 for sc in scores if t1 is not None and sc.top1 < t1)
        free = sorted(sc.margin for sc in scores if t1 is None or sc.top1 >= t1)
        counts = {forced + bisect.bisect_left(free, m) for m in [0.0, 1.0, *free]}
        goal = round(target * len(scores))
        assert abs(want["escalated"] - goal) == min(abs(c - goal) for c in counts)
        assert s.exact == (want["escalated"] == goal)


def test_suggest_picks_the_nearest_then_the_least_crowded() -> None:
    samples = samples_of(synthetic_lines())
    best, rows = whatif.suggest(samples, [0.5, 0.7, 1.0, 2.0], 0.25)
    assert best is not None and best in rows and len(rows) == 4
    nearest = min(abs(r.rate - 0.25) for r in rows)
    tied = [r for r in rows if abs(r.rate - 0.25) - nearest < 1e-12]
    assert best.crowding == min(r.crowding for r in tied)
    for r in rows:  # crowding is the share of margins within the band of the threshold
        scores = [route(x.logits, Policy(r.temperature, 0.0)).scores for x in samples]
        near = sum(1 for sc in scores if abs(sc.margin - r.min_margin) < whatif.CROWD_BAND)
        assert r.crowding == near / len(scores)


@pytest.mark.parametrize(
    ("lo", "hi", "want"),
    [(0.1234, 0.2, 0.2), (0.15, 0.151, 0.151), (0.3, 0.30000001, 0.30000001),
     (0.0999, 0.1003, 0.1), (0.0, 1.0, 1.0), (0.41, 0.58, 0.5)],
)  # fmt: skip
def test_shortest_between(lo: float, hi: float, want: float) -> None:
    assert whatif.shortest_between(lo, hi) == want


def output_events(lines: list[bytes], topic: str) -> list[bytes]:
    """What the worker publishes for these inputs: routed/escalated docs (dead letters drop)."""
    settings = Settings(topics={topic: {"temperature": 0.7, "labels": list(LABELS)}})
    outs = Router(settings).process([Record(topic, 0, k, v) for k, v in enumerate(lines)])
    return [o.value for o in outs if o.kind != "dead_letter" and o.value is not None]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_input_and_output_event_files_give_the_same_numbers(tmp_path: Path) -> None:
    lines = synthetic_lines(800, seed=9)
    inputs, outputs = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inputs.write_bytes(b"\n".join(lines) + b"\n\n")
    outputs.write_bytes(b"\n".join(output_events(lines, "support.intents")) + b"\n")
    grid = ["--temperatures", "0.7,1.5", "--min-margins", "0.1,0.2", "--json"]
    a = run("whatif", "--input", inputs, "--topic", "support.intents", *grid)
    b = run("whatif", "--input", outputs, *grid)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    ta = orjson.loads(a.stdout)["topics"]["support.intents"]
    tb = orjson.loads(b.stdout)["topics"]["support.intents"]
    assert ta["unreadable"] > 0 and tb["unreadable"] == 0  # malformed inputs never got output
    assert ta["grid"] == tb["grid"]
    for cell in ta["grid"]:
        want = direct(lines, Policy(cell["temperature"], cell["min_margin"]))
        assert {k: cell[k] for k in want} == want


def test_table_target_and_chart(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"\n".join(synthetic_lines(600)) + b"\n")
    png = tmp_path / "rates.png"
    proc = run("whatif", "--input", path, "--target-escalation-rate", "0.2", "--png", png)
    assert proc.returncode == 0, proc.stderr
    assert "e.jsonl: " in proc.stdout and "routed labels" in proc.stdout
    assert "target escalation rate 20.0%" in proc.stdout
    assert "suggested: temperature = " in proc.stdout
    assert png_size(png) == (700, 380)


def test_a_topic_filter_and_per_topic_tables(tmp_path: Path) -> None:
    lines = output_events(synthetic_lines(200, 1), "a") + output_events(
        synthetic_lines(300, 2), "b"
    )
    random.Random(0).shuffle(lines)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    both = orjson.loads(run("whatif", "--input", path, "--json").stdout)["topics"]
    only = orjson.loads(run("whatif", "--input", path, "--topic", "b", "--json").stdout)["topics"]
    assert sorted(both) == ["a", "b"] and sorted(only) == ["b"]
    assert only["b"] == both["b"]


def test_the_table_header_counts_the_unreadable_lines_as_the_json_does(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"id": "a", "logits": [1, 2]}\nnot json\n{"not": "an event"}\n[]\n')
    table = run("whatif", "--input", path)
    doc = orjson.loads(run("whatif", "--input", path, "--json").stdout)["topics"]["mixed.jsonl"]
    assert table.returncode == 0 and doc["unreadable"] == 3
    assert table.stdout.splitlines()[0].startswith(
        "mixed.jsonl: 1 events scored, 0 not scorable, 3 not readable as events; "
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--input", "{tmp}/e.jsonl", "--temperatures", "0"], "temperatures"),
        (["--input", "{tmp}/e.jsonl", "--min-margins", "0.1,2"], "min-margins"),
        (["--input", "{tmp}/e.jsonl", "--target-escalation-rate", "1.5"], "target"),
        (["--input", "{tmp}/e.jsonl", "--from", "0:1"], "--from/--to read topics"),
        (["--input", "{tmp}/missing.jsonl"], "no such file"),
        (["--input", "{tmp}/e.jsonl", "--png", "{tmp}/no/x.png"], "no such directory"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    (tmp_path / "e.jsonl").write_text('{"id": "a", "logits": [1, 2]}\n')
    proc = run("whatif", *(a.format(tmp=tmp_path) for a in args))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("chart", [["whatif"], ["plot", "margins", "-o", "{tmp}/m.png"]])
def test_a_file_with_no_events_gets_one_line_and_exit_1(tmp_path: Path, chart: list[str]) -> None:
    path = tmp_path / "none.jsonl"
    path.write_text('{"not": "an event"}\nnot json\n')
    proc = run(*(a.format(tmp=tmp_path) for a in chart), "--input", path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"logit-router {chart[0]}: no events to score in {path} (2 records not readable as events)"
    ]
    assert proc.stdout == ""
