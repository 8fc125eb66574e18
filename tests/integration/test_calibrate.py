"""``logit-router calibrate`` on a real broker: a real worker routes synthetic traffic with an
audit sample, reviewers' verdicts (labels drawn from softmax(z / T*)) go to a verdicts topic
with some a user would get wrong, and the command, run as a real process, finds T*, counts
every verdict it could not use, and prints a policy the config loader accepts."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests import verdict_traffic as vt
from tests.integration import helpers
from tests.png import png_size
from worker.core import calibration as cal
from worker.core.settings import load_settings
from worker.devkit import traffic
from worker.stream import admin

pytestmark = pytest.mark.integration

EVENTS = 12_000
TRUE_T = 1.6
RATE = 0.1
LABELS = ["billing", "tech", "sales", "hr"]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


async def send(
    bootstrap: str, topic: str, records: list[tuple[dict[str, Any] | bytes, int]]
) -> None:
    """Verdicts keyed by id (so that one id's verdicts share a partition), stamped as given."""
    producer = traffic._producer(bootstrap)
    await producer.start()
    try:
        futures = []
        for body, stamp in records:
            value = body if isinstance(body, bytes) else orjson.dumps(body)
            key = body["id"].encode() if isinstance(body, dict) else None
            futures.append(await producer.send(topic, value, key=key, timestamp_ms=stamp))
        for f in futures:
            await f
    finally:
        await producer.stop()


async def test_calibrate_finds_the_temperature_and_counts_bad_verdicts(
    bootstrap: str, uid: str, tmp_path: Path
) -> None:
    support, fraud, verdict_topic = f"support-{uid}", f"fraud-{uid}", f"verdicts-{uid}"
    live = {"temperature": 1.0, "min_margin": 0.2, "labels": LABELS, "audit_sample_rate": RATE}
    settings = helpers.make_settings(bootstrap, uid, topics={support: live})
    await helpers.create_all(settings)
    await admin.create_topics(settings.kafka, [verdict_topic], 3)
    rng = np.random.default_rng(23)
    z = vt.logits(rng, EVENTS, len(LABELS))
    truth = vt.labels_at(rng, z, TRUE_T)
    await traffic.produce(bootstrap, support, vt.events(z))
    await traffic.produce(bootstrap, fraud, traffic.synthetic(50, seed=1, malformed_rate=0.0))
    async with helpers.running_worker(settings):
        await helpers.wait_until_committed(settings)
    outputs = await helpers.read_outputs(settings)
    kinds: dict[str, tuple[str, str | None]] = {}
    fraud_id = ""
    for rec in outputs.routed + outputs.escalated:
        doc = orjson.loads(rec.value)
        if doc["source"]["topic"] == support:
            kinds[doc["id"]] = (doc["decision"], doc["reason"])
        else:
            fraud_id = doc["id"]
    reviewed = [i for i in range(EVENTS) if kinds[f"e{i}"][0] == "escalated"]
    routed = [i for i in range(EVENTS) if kinds[f"e{i}"][0] == "routed"]
    sampled = [i for i in reviewed if kinds[f"e{i}"][1] == "audit_sample"]
    assert len(sampled) > 300 and len(reviewed) > 3000

    # The window closes at `cut`: verdicts stamped before it count, those after are late.
    cut = int(time.time() * 1000)
    on_time, late = cut - 60_000, cut + 60_000
    verdicts: list[tuple[dict[str, Any] | bytes, int]] = []
    for i in reviewed:
        label = int(truth[i])
        if i in (reviewed[0], reviewed[1]):  # a first answer, corrected later: the last wins
            verdicts.append(({"id": f"e{i}", "label": (label + 1) % 4}, on_time - 1000))
        verdicts.append(({"id": f"e{i}", "label": LABELS[label] if i % 2 else label}, on_time))
    verdicts += [
        (b"{not json", on_time),
        ({"id": "e0"}, on_time),  # no label
        ({"id": "no-such-event", "label": 1}, on_time),
        ({"id": fraud_id, "label": 0}, on_time),
        ({"id": f"e{routed[0]}", "label": "not-a-class"}, on_time),
        *(({"id": f"e{i}", "label": 0}, on_time) for i in routed[1:6]),
        ({"id": f"e{reviewed[2]}", "label": 0}, late),  # late: does not replace the first
        ({"id": f"e{routed[7]}", "label": 0}, late),
    ]
    await send(bootstrap, verdict_topic, verdicts)
    config = helpers.write_config(settings, tmp_path / "live.toml")
    png = tmp_path / "calibration.png"
    done = helpers.cli(
        "calibrate", "--topic", support, "--verdicts", verdict_topic, "--config", config,
        "--to", iso(cut), "--target-error", "0.2", "--json", "--png", png,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["verdicts"] == {
        "read": len(verdicts),
        "malformed": 2,
        "late": 2,
        "duplicates": 2,
        "unknown_id": 1,
        "other_topic": 1,
        "unknown_label": 1,
        "masked_label": 0,
        "routed_not_sampled": 5,
        "used": len(reviewed),
    }
    assert report["used"] == {
        "uncertain": len(reviewed) - len(sampled),
        "audit_sample": len(sampled),
        "routed": 0,
    }
    assert report["outputs"]["of_topic"] == EVENTS

    # The fit on exactly the verdicts that should stand, weighted by hand: the same T.
    rows = np.array(reviewed)
    w = np.array([1.0 / RATE if kinds[f"e{i}"][1] == "audit_sample" else 1.0 for i in reviewed])
    want = cal.fit_temperature(z[rows], truth[rows], w).temperature
    assert report["fit"]["fitted"] == pytest.approx(want, rel=1e-9)
    assert abs(report["fit"]["fitted"] / TRUE_T - 1) < 0.06  # about 2,000 effective verdicts
    assert report["after"]["nll"] <= report["before"]["nll"]
    assert report["after"]["ece"] < report["before"]["ece"]
    assert report["target"]["upper_bound"] <= 0.2
    assert png_size(png) == (1100, 460)

    # The proposed shadow table goes into the config as it is, and the config loads.
    shadow_block = report["toml"].split("\n\n")[0]
    tried = tmp_path / "shadow.toml"
    tried.write_text(config.read_text() + "\n" + shadow_block + "\n")
    proposed = load_settings(tried).topics[support].shadow
    assert proposed is not None
    assert proposed.temperature == report["fit"]["temperature"]
    assert proposed.min_margin == report["target"]["min_margin"]
