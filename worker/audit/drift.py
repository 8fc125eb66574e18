"""``drift snapshot`` and ``drift``: a topic's published margins and top-1 probabilities,
made into a reference or compared with one (``worker.core.drift``).

The values are the ones the worker published: the ``margin`` of each routed or escalated
output and the largest of its ``probabilities``, read back from the output topics of the
config, for the input events of ``--topic`` in the range (``worker.audit.ranges``, the input
topic's offsets, as ``replay`` reads them). An input published more than once (a redelivery
under at-least-once) counts once; dead-lettered events have no scores and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from worker.audit import ranges
from worker.audit.progress import Progress
from worker.audit.replay import read_originals
from worker.core import drift
from worker.core.settings import Settings


@dataclass(frozen=True)
class Published:
    """The scored events of one topic's range, one value per input event, in offset order."""

    topic: str
    values: Mapping[str, np.ndarray]  # measure -> values
    spans: list[ranges.Span]

    @property
    def n(self) -> int:
        return len(self.values[drift.MEASURES[0]])


async def published(
    settings: Settings,
    topic: str,
    start: ranges.Bound | None,
    end: ranges.Bound | None,
    progress: bool | None = None,
) -> Published:
    spans = await ranges.resolve(settings.kafka, topic, start, end)
    bar = Progress("reading", 0, enabled=progress)
    found = await read_originals(settings, topic, spans, bar)
    margins: list[float] = []
    top1s: list[float] = []
    for key in sorted(found.by_offset):
        view = next(
            (v for v in found.by_offset[key] if v.margin is not None and v.probabilities), None
        )
        if view is not None and view.margin is not None and view.probabilities:
            margins.append(float(view.margin))
            top1s.append(float(max(view.probabilities)))
    values = {"margin": np.array(margins), "top1": np.array(top1s)}
    return Published(topic, values, spans)


def window_of(start: ranges.Bound | None, end: ranges.Bound | None) -> dict[str, Any]:
    return {
        "from": None if start is None else start.text,
        "to": None if end is None else end.text,
    }


def snapshot(found: Published, window: Mapping[str, Any]) -> drift.Reference:
    created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    spans = [[s.partition, s.start, s.end] for s in found.spans]
    return drift.make_reference(found.topic, found.values, created, {**window, "spans": spans})


def compare(reference: drift.Reference, found: Published) -> dict[str, Any]:
    """PSI on the fixed bins and KS against the reference's sample, per measure."""
    report: dict[str, Any] = {
        "topic": found.topic,
        "events": found.n,
        "reference": {
            "topic": reference.topic,
            "events": reference.n,
            "created": reference.created,
            "window": dict(reference.window),
        },
    }
    for m in drift.MEASURES:
        values = found.values[m]
        report[m] = {
            "psi": drift.psi(reference.counts(m), drift.bin_counts(values)),
            "ks": drift.ks_statistic(values, reference.measures[m].sample),
        }
    return report


def verdict(value: float) -> str:
    """The customary reading of a PSI (docs/drift.md)."""
    if value >= 0.25:
        return "shifted"
    if value >= 0.1:
        return "moderate"
    return "stable"


def human(report: Mapping[str, Any]) -> str:
    ref = report["reference"]
    lines = [
        f"topic {report['topic']}: {report['events']:,} scored events; reference: "
        f"{ref['events']:,} events of {ref['topic']}, made {ref['created']}\n",
        f"{'measure':<8} {'PSI':>8} {'KS':>8}  reading\n",
    ]
    for m in drift.MEASURES:
        r = report[m]
        lines.append(f"{m:<8} {r['psi']:>8.4f} {r['ks']:>8.4f}  {verdict(r['psi'])}\n")
    lines.append("PSI: below 0.1 stable, 0.1 to 0.25 moderate, above 0.25 shifted\n")
    return "".join(lines)
