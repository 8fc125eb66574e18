"""Integration-tier fixtures: the reliability table that the fault tests fill."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.helpers import kill_leftovers

OUT = Path(__file__).parents[2] / "out"


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    yield
    kill_leftovers()


@pytest.fixture(scope="session")
def reliability() -> Iterator[list[dict[str, Any]]]:
    """Rows of figures measured by the fault tests, written to out/reliability.{jsonl,md}."""
    rows: list[dict[str, Any]] = []
    yield rows
    if not rows:
        return
    OUT.mkdir(exist_ok=True)
    with (OUT / "reliability.jsonl").open("ab") as fh:
        for row in rows:
            fh.write(orjson.dumps(row) + b"\n")
    head = "| scenario | guarantee | events | faults | lost | duplicated | order violations |"
    head += " recovery (s) |\n|---|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['scenario']} | {r['guarantee']} | {r['events']} | {r['faults']} | {r['lost']} |"
        f" {r['duplicated']} | {r['order_violations']} | {r['recovery_s']} |\n"
        for r in rows
    )
    (OUT / "reliability.md").write_text(head + body)
