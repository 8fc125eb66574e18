"""``replay`` refuses what it must before touching Kafka: one line, exit 2; and an unreachable
broker is one line, exit 1. The config points at 127.0.0.1:9, where no Kafka listens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """
[kafka]
bootstrap_servers = "127.0.0.1:9"
connect_timeout_s = 1
[outputs]
routed = "out.routed"
escalated = "out.escalated"
dead_letter = "out.dlq"
[topics."in.a"]
[topics."in.b"]
"""


def run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp / "c.toml"
    config.write_text(CONFIG)
    argv = [a.format(cfg=config, tmp=tmp) for a in args]
    return subprocess.run(
        [sys.executable, "-m", "worker", "replay", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "--topic"),
        (["--topic", "in.a", "--config", "{tmp}/none.toml"], "no such file"),
        (["--topic", "in.c", "--config", "{cfg}"], "in.c has no policy in the config"),
        (["--topic", "in.a", "--config", "{cfg}", "--from", "yesterday"], "not an ISO time"),
        (["--topic", "in.a", "--config", "{cfg}", "--to", "2026-11-26T12:00"], "timezone"),
        (["--topic", "in.a", "--config", "{cfg}", "--from", "2026-11-27T00:00Z",
          "--to", "2026-11-26T00:00Z"], "later than"),
        (["--topic", "in.a", "--config", "{cfg}", "--from", "0:5", "--to", "1:9"], "same ones"),
        (["--topic", "in.a", "--config", "{cfg}", "--from", "0:9", "--to", "0:5"], "is after"),
        (["--topic", "in.a", "--config", "{cfg}", "--to-topic", "out.routed"], "live output"),
        (["--topic", "in.a", "--config", "{cfg}", "--to-topic", "out.dlq"], "live output"),
        (["--topic", "in.a", "--config", "{cfg}", "--to-topic", "in.b"], "input topic"),
        (["--topic", "in.a", "--config", "{cfg}", "--tolerance", "2"], "--tolerance"),
        (["--topic", "in.a", "--config", "{cfg}", "--out", "{tmp}/no/r.jsonl"],
         "argument --out: no such directory"),
        # refused before the replay, not by the rename once it is all done
        (["--topic", "in.a", "--config", "{cfg}", "--out", "{tmp}"],
         "argument --out: is a directory"),
        (["--topic", "in.a", "--config", "{cfg}", "--out", ""], "argument --out: no file named"),
    ],
)  # fmt: skip
def test_bad_arguments_get_one_line_and_exit_2(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    proc = run(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_an_unreachable_broker_is_one_line_and_exit_1(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    proc = run(tmp_path, "--topic", "in.a", "--config", "{cfg}", "--out", str(out))
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        and "cannot reach Kafka at 127.0.0.1:9 within 1s" in proc.stderr
    )
    assert not out.exists() and not (tmp_path / "r.jsonl.partial").exists()
