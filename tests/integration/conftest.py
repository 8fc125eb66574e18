"""Integration-tier fixtures: the reliability table that the fault tests fill."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.helpers import kill_leftovers

# Where the tests leave tables of what they measured: a directory of the session's own unless
# this names one (e.g. LOGIT_ROUTER_TEST_OUT=out), so a plain run changes nothing in the tree.
OUT_ENV = "LOGIT_ROUTER_TEST_OUT"


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    yield
    kill_leftovers()


@pytest.fixture(scope="session")
def measured_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory for measured tables: ``$LOGIT_ROUTER_TEST_OUT``, else a temporary one."""
    named = os.environ.get(OUT_ENV)
    if not named:
        return tmp_path_factory.mktemp("out")
    out = Path(named)
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def reliability(measured_out: Path) -> Iterator[list[dict[str, Any]]]:
    """Rows of figures measured by the fault tests, written to reliability.{jsonl,md} in
    ``measured_out``."""
    rows: list[dict[str, Any]] = []
    yield rows
    if not rows:
        return
    with (measured_out / "reliability.jsonl").open("ab") as fh:
        for row in rows:
            fh.write(orjson.dumps(row) + b"\n")
    head = "| scenario | guarantee | events | faults | lost | duplicated | order violations |"
    head += " recovery (s) |\n|---|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['scenario']} | {r['guarantee']} | {r['events']} | {r['faults']} | {r['lost']} |"
        f" {r['duplicated']} | {r['order_violations']} | {r['recovery_s']} |\n"
        for r in rows
    )
    (measured_out / "reliability.md").write_text(head + body)
