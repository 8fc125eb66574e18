"""What the parent tells a contender's child process: one JSON file, read at start.

The topology is shared by every contender: three input topics, one per vector width, with the
policies below, plus a latency topic of each width per contender. Each contender has its own
consumer group and its own output topics.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TypedDict

import orjson

WIDTHS = (3, 10, 100)
PROFILE_ENV = "BENCH_PROFILE"  # a child run under cProfile writes its stats to this path

# Per width: the routing policy of its input topic (the worker's [topics."…"] table).
POLICIES: dict[int, dict[str, Any]] = {
    3: {"temperature": 0.7, "min_margin": 0.15, "labels": ["billing", "tech", "sales"]},
    10: {"temperature": 1.0, "min_margin": 0.1},
    100: {"temperature": 1.5, "min_margin": 0.05, "min_top1": 0.2},
}


# Added to every input's policy by the contender that measures what a shadow and the audit sample
# cost: one more softmax per event, and a hash of the id per event the live policy routes.
SHADOW_AND_SAMPLE: dict[str, Any] = {
    "shadow": {"temperature": 1.2, "min_margin": 0.1, "min_top1": 0.3},
    "audit_sample_rate": 0.05,
}


class Spec(TypedDict):
    kind: str  # raw | worker | quix | kstreams | faststream
    bootstrap: str
    group: str
    inputs: dict[str, dict[str, Any]]  # input topic -> policy
    # routed, escalated, dead_letter (raw writes only to routed), config_history (worker only)
    outputs: dict[str, str]
    kafka: dict[str, Any]  # overrides of the worker's [kafka] table (raw uses them too)
    processing: dict[str, Any]  # overrides of the worker's [processing] table
    quix_commit_interval: float
    peer: dict[str, Any]  # a peer's own settings (kstreams: stream_threads; faststream: tuned)


def read_spec(path: str) -> Spec:
    spec: Spec = orjson.loads(Path(path).read_bytes())
    return spec


def worker_config(spec: Spec) -> dict[str, Any]:
    """The worker's settings, as the keyword arguments of ``Settings``."""
    return {
        "kafka": {
            "bootstrap_servers": spec["bootstrap"],
            "group_id": spec["group"],
            "client_id": f"bench-{spec['kind']}",
            **spec["kafka"],
        },
        "outputs": spec["outputs"],
        "topics": spec["inputs"],
        "processing": spec["processing"],
        "http": {"enabled": False},
        "log": {"level": "WARNING"},
    }


def report(**fields: Any) -> None:
    """One JSON line on stdout for the parent."""
    sys.stdout.buffer.write(orjson.dumps(fields) + b"\n")
    sys.stdout.flush()


class FirstConsumed:
    """Tells the parent, once, when the first records arrived and how much CPU was used so far,
    so that start-up (imports, joining the group) is not counted against a contender."""

    def __init__(self) -> None:
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        # The clock the parent reads at the end (/proc), so the phase's CPU cannot go negative.
        from bench.measure import cpu_seconds

        report(first_consumed=time.time(), cpu=cpu_seconds(os.getpid()))


def die_with_parent() -> None:
    """SIGTERM this process when the benchmark that started it dies (Linux only)."""
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
