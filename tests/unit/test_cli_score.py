"""`logit-router score` as a user runs it: a real subprocess, JSON on stdout."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [
        ("1.0", [0.5755, 0.3858, 0.0387]),
        ("0.7", [0.6306, 0.3561, 0.0133]),
        ("1.5", [0.5178, 0.3966, 0.0856]),
    ],
)
def test_lab_figures_through_the_command(temperature: str, expected: list[float]) -> None:
    proc = run("score", "--logits", "3.2,2.8,0.5", "--temperature", temperature)
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(proc.stdout)
    assert [round(p, 4) for p in doc["probabilities"]] == expected
    if temperature == "1.0":
        assert round(doc["margin"], 4) == 0.1897
    assert set(doc) >= {
        "probabilities",
        "top1",
        "top2",
        "margin",
        "entropy",
        "class_index",
        "label",
        "decision",
        "reason",
    }


def test_escalation_and_labels() -> None:
    proc = run(
        "score", "--logits", "3.2,2.8,0.5", "--min-margin", "0.2", "--labels", "billing,tech,sales"
    )
    doc = orjson.loads(proc.stdout)
    assert (doc["decision"], doc["reason"], doc["label"]) == ("escalated", "low_margin", "billing")
    proc = run("score", "--logits", "3.2,2.8,0.5", "--min-margin", "0.1", "--min-top1", "0.6")
    doc = orjson.loads(proc.stdout)
    assert (doc["decision"], doc["reason"]) == ("escalated", "low_top1")


def test_masked_class_on_the_command_line() -> None:
    doc = orjson.loads(run("score", "--logits=-inf,1,1").stdout)
    assert doc["probabilities"] == [0.0, 0.5, 0.5]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["score", "--logits", "3.2,nan"], "NaN"),
        (["score", "--logits", "3.2,inf"], "+inf"),
        (["score", "--logits", "3.2,abc"], "not a number"),
        (["score", "--logits", "3.2"], "at least 2 classes"),
        (["score", "--logits", "3,2", "--temperature", "0"], "temperature"),
        (["score", "--logits", "3,2", "--temperature", "x"], "temperature"),
        (["score", "--logits", "3,2", "--temperature", "nan"], "must be finite and > 0"),
        (["score", "--logits", "3,2", "--temperature=-inf"], "must be finite and > 0"),
        (["score", "--logits", "3,2", "--min-margin", "1.5"], "min-margin"),
        (["score", "--logits", "3,2", "--min-top1", "nan"], "--min-top1: must lie in [0, 1]"),
        (["score", "--logits", "3,2", "--labels", "a"], "labels"),
        (["score", "--logits", "3,2", "--labels", "a,a"], "labels must be unique"),
        (["score", "--logits", "3,2", "--labels", "a,"], "a label must not be empty"),
        (["score"], "--logits"),
        (["frobnicate"], "invalid choice"),
        ([], "command"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(args: list[str], needle: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_console_script_and_module_are_the_same_program() -> None:
    import shutil
    from pathlib import Path

    script = shutil.which("logit-router", path=str(Path(sys.executable).parent))
    assert script is not None
    a = subprocess.run([script, "score", "--logits", "1,2"], capture_output=True, text=True)
    assert a.returncode == 0
    assert a.stdout == run("score", "--logits", "1,2").stdout


def test_it_starts_without_the_kafka_client_or_pydantic() -> None:
    """A one-off command stays quick to start: the audit sample's hash (aiokafka's murmur2) and
    the settings model are loaded only by what uses them."""
    code = (
        "import sys; from worker.cli.main import main; "
        "code = main(['score', '--logits', '3.2,2.8,0.5']); "
        "print(sorted(m for m in ('aiokafka', 'pydantic') if m in sys.modules), file=sys.stderr); "
        "sys.exit(code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "[]"
