"""Verdicts: what is malformed, late, duplicated or unknown is counted, and the join keeps the
rest with the class each verdict names; ``calibrate`` on JSONL files as a real process."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests import verdict_traffic as vt
from tests.png import png_size
from worker.audit import verdicts as v
from worker.core.routing import Policy, route
from worker.core.settings import Limits, Settings, load_settings


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"label": "a"}',
        b'{"id": "", "label": "a"}',
        b'{"id": 7, "label": "a"}',
        b'{"id": "e1"}',
        b'{"id": "e1", "label": ""}',
        b'{"id": "e1", "label": -1}',
        b'{"id": "e1", "label": true}',
        b'{"id": "e1", "label": 1.5}',
        b'{"id": "e1", "label": ["a"]}',
        None,
    ],
)
def test_a_malformed_verdict_is_refused(raw: bytes | None) -> None:
    assert v.parse(raw) is None


def test_a_verdict_names_its_label_by_name_or_index() -> None:
    assert v.parse(b'{"id": "e1", "label": "tech", "by": "ana"}') == ("e1", "tech")
    assert v.parse(b'{"id": "e1", "label": 2}') == ("e1", 2)
    assert v.class_index(2, 3, None) == 2
    assert v.class_index(3, 3, None) is None
    assert v.class_index("tech", 3, ("billing", "tech", "sales")) == 1
    assert v.class_index("2", 3, None) == 2  # how the worker labels an unnamed class
    assert v.class_index("2", 3, ("billing", "tech", "sales")) is None
    assert v.class_index("hr", 3, ("billing", "tech", "sales")) is None


def test_the_last_verdict_wins_and_late_ones_are_left_out() -> None:
    found = v.Verdicts()
    found.add(b'{"id": "a", "label": 0}', (100, 0, 5), late=False)
    found.add(b'{"id": "a", "label": 1}', (200, 1, 2), late=False)
    found.add(b'{"id": "a", "label": 2}', (150, 0, 6), late=False)  # read last, stamped earlier
    found.add(b'{"id": "b", "label": 1}', (900, 0, 7), late=True)
    found.add(b"{", (300, 0, 8), late=False)
    assert found.standing["a"].label == 1
    assert "b" not in found.standing
    assert found.counts == {"read": 5, "duplicates": 2, "late": 1, "malformed": 1}


def output_line(
    event_id: str, logits: list[float | None], decision: str, reason: str | None, topic: str
) -> bytes:
    return orjson.dumps(
        {
            "id": event_id,
            "logits": logits,
            "decision": decision,
            "reason": reason,
            "source": {"topic": topic, "partition": 0, "offset": 0, "timestamp": None},
        }
    )


def test_the_join_counts_every_verdict_it_cannot_use() -> None:
    outputs = v.outputs_from_lines(
        [
            output_line("u1", [2.0, 1.9, 0.0], "escalated", "low_margin", "t"),
            output_line("s1", [5.0, 0.0, 0.0], "escalated", "audit_sample", "t"),
            output_line("r1", [5.0, 0.0, None], "routed", None, "t"),
            output_line("m1", [2.0, 1.9, None], "escalated", "low_margin", "t"),
            output_line("o1", [2.0, 1.9, 0.0], "escalated", "low_margin", "other"),
            output_line("u1", [2.0, 1.9, 0.0], "escalated", "low_margin", "t"),  # redelivered
            b"not an output",
        ],
        "t",
        Limits(),
    )
    assert (outputs.read, outputs.duplicates, outputs.unreadable) == (7, 1, 1)
    found = v.verdicts_from_lines(
        line.encode()
        for line in [
            '{"id": "u1", "label": "tech"}',
            '{"id": "s1", "label": 0}',
            '{"id": "r1", "label": 0}',
            '{"id": "m1", "label": 2}',  # a masked class
            '{"id": "o1", "label": 0}',
            '{"id": "zz", "label": 0}',
            '{"id": "u1", "label": "hr"}',  # a duplicate, with a label the topic lacks
            "",
            "{oops",
        ]
    )
    joined = v.join(outputs, found, ("billing", "tech", "sales"))
    assert joined.counts == {
        "read": 8,
        "malformed": 1,
        "duplicates": 1,
        "unknown_label": 1,
        "masked_label": 1,
        "routed_not_sampled": 1,
        "other_topic": 1,
        "unknown_id": 1,
        "used": 1,
    }
    assert joined.kinds == ["audit_sample"] and joined.labels.tolist() == [0]
    everything = v.join(outputs, found, ("billing", "tech", "sales"), ground_truth=True)
    assert everything.kinds == ["audit_sample", "routed"]
    assert everything.logits[1].tolist() == [5.0, 0.0, -np.inf]


# --- the command on files ---------------------------------------------------------------------

TOPIC = "support"
LABELS = ("billing", "tech", "sales", "hr")
LIVE = {"temperature": 1.0, "min_margin": 0.2, "audit_sample_rate": 0.1}


def config_text() -> str:
    return (
        '[kafka]\nbootstrap_servers = "localhost:1"\n'
        f"[topics.{TOPIC}]\n"
        + "".join(f"{k} = {val!r}\n" for k, val in LIVE.items())
        + f"labels = {list(LABELS)!r}\n".replace("'", '"')
    )


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "calibrate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """30,000 events routed by the worker's own rule; verdicts on every escalated one, drawn
    from softmax(z / 1.6), plus some a user would get wrong."""
    tmp = tmp_path_factory.mktemp("calibrate")
    rng = np.random.default_rng(7)
    z = vt.logits(rng, 30_000, len(LABELS))
    y = vt.labels_at(rng, z, 1.6)
    policy = Policy(1.0, 0.2, None, LABELS, 0.1)
    outputs, verdicts = [], []
    for i, (row, label) in enumerate(zip(z.tolist(), y.tolist(), strict=True)):
        eid = f"evt-{i}"
        routing = route(row, policy, None, eid)
        outputs.append(output_line(eid, row, routing.decision, routing.reason, TOPIC))
        if routing.decision == "escalated":
            name: str | int = LABELS[label] if i % 2 else label
            verdicts.append(orjson.dumps({"id": eid, "label": name}))
    extras = [b"{not json", b'{"id": "nobody", "label": 1}', verdicts[0], b'{"id": "evt-1"}']
    (tmp / "outputs.jsonl").write_bytes(b"\n".join(outputs) + b"\n")
    (tmp / "verdicts.jsonl").write_bytes(b"\n".join(verdicts + extras) + b"\n")
    (tmp / "live.toml").write_text(config_text())
    return {"tmp": tmp, "escalated": len(verdicts)}


def test_calibrate_on_files_fits_reports_and_proposes_a_loadable_policy(
    files: dict[str, Any],
) -> None:
    tmp: Path = files["tmp"]
    png = tmp / "calibration.png"
    done = run(
        "--topic", TOPIC, "--config", tmp / "live.toml",
        "--outputs-file", tmp / "outputs.jsonl", "--verdicts-file", tmp / "verdicts.jsonl",
        "--target-error", "0.2", "--json", "--png", png,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = orjson.loads(done.stdout)
    assert doc["verdicts"] == {
        "read": files["escalated"] + 4,
        "malformed": 2,
        "late": 0,
        "duplicates": 1,
        "unknown_id": 1,
        "other_topic": 0,
        "unknown_label": 0,
        "masked_label": 0,
        "routed_not_sampled": 0,
        "used": files["escalated"],
    }
    assert doc["weighted"] is True and doc["warnings"] == []
    assert abs(doc["fit"]["fitted"] / 1.6 - 1) < 0.05
    assert doc["after"]["nll"] <= doc["before"]["nll"]
    assert doc["target"]["upper_bound"] <= 0.2
    assert png_size(png) == (1100, 460)
    # The shadow table appended to the config loads, and so does the config with the live keys.
    shadow = load_settings(
        _written(tmp / "shadow.toml", config_text() + doc["toml"].split("\n\n")[0])
    )
    proposed = shadow.topics[TOPIC].shadow
    assert proposed is not None
    assert (proposed.temperature, proposed.min_margin) == (
        doc["fit"]["temperature"],
        doc["target"]["min_margin"],
    )
    live = tomllib.loads(doc["toml"].split("\n\n")[1])["topics"][TOPIC]
    merged = tomllib.loads(config_text())
    merged["topics"][TOPIC].update(live)
    assert Settings(**merged).topics[TOPIC].temperature == doc["fit"]["temperature"]


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_without_an_audit_sample_the_report_says_it_is_biased(files: dict[str, Any]) -> None:
    tmp: Path = files["tmp"]
    lines = (tmp / "outputs.jsonl").read_bytes().splitlines()
    kept = [line for line in lines if b"audit_sample" not in line]
    (tmp / "no-audit.jsonl").write_bytes(b"\n".join(kept) + b"\n")
    done = run(
        "--topic", TOPIC, "--config", tmp / "live.toml",
        "--outputs-file", tmp / "no-audit.jsonl", "--verdicts-file", tmp / "verdicts.jsonl",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning: biased: no verdict is on an audit-sampled event" in done.stdout
    assert "T is estimated on low-margin events" in done.stdout
    assert '[topics."support".shadow]' in done.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--topic", "nope"], "--topic nope is not in the config (support)"),
        (["--topic", TOPIC, "--from", "0:10"], "--from/--to must be times here"),
        (["--topic", TOPIC, "--from", "2026-01-01T00:00:00Z"], "--from/--to read topics"),
        (["--topic", TOPIC, "--target-error", "1.5"], "must lie strictly between 0 and 1"),
        (["--topic", TOPIC, "--target-error", "x"], "not a number"),
        (["--topic", TOPIC, "--png", "/no/such/dir/x.png"], "no such directory"),
        (["--topic", TOPIC, "--verdicts", "v"], "not allowed with argument"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(
    files: dict[str, Any], args: list[str], says: str
) -> None:
    tmp: Path = files["tmp"]
    done = run(
        "--config", tmp / "live.toml", "--outputs-file", tmp / "outputs.jsonl",
        "--verdicts-file", tmp / "verdicts.jsonl", *args,
    )  # fmt: skip
    assert done.returncode == 2
    assert says in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_audit_verdicts_with_a_zero_rate_in_the_config_are_refused(files: dict[str, Any]) -> None:
    tmp: Path = files["tmp"]
    zero = _written(tmp / "zero.toml", config_text().replace("audit_sample_rate = 0.1", ""))
    done = run(
        "--topic", TOPIC, "--config", zero, "--outputs-file", tmp / "outputs.jsonl",
        "--verdicts-file", tmp / "verdicts.jsonl",
    )  # fmt: skip
    assert done.returncode == 2
    assert "audit_sample_rate for the topic is 0" in done.stderr and done.stderr.count("\n") == 1


def test_the_chart_draws_the_reports_bins_and_the_chosen_threshold(
    files: dict[str, Any],
) -> None:
    from worker.audit import plot

    tmp: Path = files["tmp"]
    done = run(
        "--topic", TOPIC, "--config", tmp / "live.toml", "--outputs-file", tmp / "outputs.jsonl",
        "--verdicts-file", tmp / "verdicts.jsonl", "--target-error", "0.2", "--json",
    )  # fmt: skip
    doc = orjson.loads(done.stdout)
    fig = plot.draw_calibration(tmp / "drawn.png", doc)
    left, right = fig.axes
    lines = {line.get_label(): line for line in left.get_lines()}
    for key in ("before", "after"):
        (line,) = (v for k, v in lines.items() if k.startswith(f"{key}:"))
        bins = [b for b in doc["reliability"][key] if b["confidence"] is not None]
        assert list(line.get_xdata()) == [b["confidence"] for b in bins]
        assert list(line.get_ydata()) == [b["accuracy"] for b in bins]
    star = next(x for x in right.get_lines() if str(x.get_label()).startswith("min_margin"))
    target = doc["target"]
    assert list(star.get_xydata()[0]) == [target["routed_share"], target["error_rate"]]


def test_without_matplotlib_png_is_one_line_and_exit_2(files: dict[str, Any]) -> None:
    tmp: Path = files["tmp"]
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        "from worker.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "calibrate",
            "--topic",
            TOPIC,
            "--config",
            str(tmp / "live.toml"),
            "--outputs-file",
            str(tmp / "outputs.jsonl"),
            "--verdicts-file",
            str(tmp / "verdicts.jsonl"),
            "--png",
            str(tmp / "x.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "logit-router calibrate: matplotlib is not installed; pip install 'logit-router[plot]'\n"
    )
