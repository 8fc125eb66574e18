"""What the numbers depend on, printed at the top of every run: versions, the fast path
(aiokafka's compiled record codec, the worker's compiled hot path, uvloop), the machine and
its load."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from worker.core import native
from worker.stream.connections import aiokafka_c_extension


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    """The checkout's commit, with ``+dirty`` when files differ from it: what a run measured."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True,
        )  # fmt: skip
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(broker_source: str) -> dict[str, Any]:
    return {
        "commit": _commit(),
        "python": platform.python_version(),
        "aiokafka": _version("aiokafka"),
        "aiokafka_c_extension": aiokafka_c_extension(),
        # the compiled hot path (worker.core.native); --set processing.native=false turns it off
        "native_hot_path": native.available(),
        "uvloop": _version("uvloop"),  # worker.stream.service.run_loop uses it when installed
        "orjson": _version("orjson"),
        "numpy": _version("numpy"),
        "pydantic": _version("pydantic"),
        "quixstreams": _version("quixstreams"),
        "confluent_kafka": _version("confluent-kafka"),
        "faststream": _version("faststream"),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": sys.platform,
        "broker": broker_source,
    }
