"""What every command's parser does alike, as a user meets it: a bad argument is one line on
stderr naming it, exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A byte that is not UTF-8, as Python hands it over (surrogateescape): the shell's $'\xff'.
NOT_UTF8 = "\udcff"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *map(str, args)],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=120,
    )


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["score", "--logits", "3.2,2.8,0.5", "--labels", f"{NOT_UTF8},b,c"], "--labels"),
        (["score", f"--logits=1,{NOT_UTF8}"], "--logits"),
        (["plot", "--logits", "3.2,2.8,0.5", "--labels", f"{NOT_UTF8},b,c", "-o", "{tmp}/p.png"],
         "--labels"),
        (["replay", "--topic", f"in.{NOT_UTF8}"], "--topic"),
        (["whatif", "--input", f"{{tmp}}/{NOT_UTF8}.jsonl"], "--input"),
        (["config", "show", f"sha256:{NOT_UTF8}"], "version"),
    ],
)  # fmt: skip
def test_an_argument_that_is_not_utf8_is_refused_naming_it(
    tmp_path: Path, args: list[str], named: str
) -> None:
    line = one_line(run(*(a.format(tmp=tmp_path) for a in args)))
    assert f"argument {named}: not valid UTF-8 text" in line
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--config", "a" * 300], "argument --config: file name too long: 'aaa"),
        (["run", "--config", "{tmp}"], "argument --config: is a directory, not a file"),
        (["run", "--config", ""], "argument --config: no file named (an empty path)"),
        (["run", "--config", "{tmp}/none.toml"], "argument --config: no such file"),
        (["whatif", "--input", "{tmp}"], "argument --input: is a directory, not a file"),
        (["drift", "--topic", "t", "--reference", "b" * 300], "--reference: file name too long"),
    ],
)
def test_a_file_to_read_that_cannot_be_is_refused_saying_why(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    line = one_line(run(*(a.format(tmp=tmp_path) for a in args)))
    assert needle in line
    assert len(line) < 200  # a long name is cut, not echoed whole


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["score", "--logits", "3,2", "--temperature", "-inf"],
         "argument --temperature: must be finite and > 0, got '-inf'"),
        (["score", "--logits", "3,2", "--min-margin", "-0.5"], "argument --min-margin: must lie"),
        (["calibrate", "--window", "-1h"], "argument --window: must be > 0, got '-1h'"),
        (["replay", "--topic", "t", "--from", "-1:5"],
         "argument --from: not an ISO time or partition:offset: '-1:5'"),
        (["replay", "--topic", "-t"],
         "argument --topic: expected one argument (a value that starts with - is written "
         "--topic=VALUE)"),
    ],
)  # fmt: skip
def test_a_value_starting_with_a_minus_meets_its_own_rule(args: list[str], needle: str) -> None:
    """argparse took these for unknown options and said only "expected one argument"."""
    assert needle in one_line(run(*args))


@pytest.mark.parametrize("logits", ["-1,2", "-inf,2,1"])
def test_a_first_logit_below_zero_needs_no_equals_sign(logits: str) -> None:
    proc = run("score", "--logits", logits)
    assert proc.returncode == 0, proc.stderr
    assert '"class_index":1' in proc.stdout


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--bogus"], "logit-router: unrecognized arguments: --bogus"),
        (["config", "--bogus"], "logit-router: unrecognized arguments: --bogus"),
        ([], "logit-router: the following arguments are required: command"),
        (["config"], "logit-router config: the following arguments are required: show|history"),
    ],
)
def test_an_unknown_option_is_named_before_a_missing_command(args: list[str], line: str) -> None:
    assert one_line(run(*args)) == line


@pytest.mark.parametrize(
    "args",
    [
        ["score", "--logits", "1,2," + "1" * 100_000],
        ["score", "--logits", "1,2", "--temperature", "9" * 1000],
        ["replay", "--topic", "t", "--from", "0:" + "1" * 5000],
        ["x" * 1000],
    ],
)
def test_a_long_value_is_cut_in_the_message(args: list[str]) -> None:
    line = one_line(run(*args))
    assert len(line) < 300 and "..." in line


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--topic", "a b"],
        ["drift", "--topic", "in/../etc"],
        ["calibrate", "--topic", "..", "--verdicts", "v"],
        ["calibrate", "--topic", "support.intents", "--verdicts", "x" * 250],
        ["whatif", "--topic", ""],
    ],
)  # fmt: skip
def test_a_topic_kafka_would_refuse_is_refused_before_anything_is_read(args: list[str]) -> None:
    line = one_line(run(*args))
    assert "not a Kafka topic name" in line
    assert "argument --topic" in line or "argument --verdicts" in line
