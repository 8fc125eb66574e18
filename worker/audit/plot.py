"""Charts: the lab's probability-against-temperature chart, margin histograms, and the
escalation rate against temperature from ``whatif``.

The data of each chart is a pure function, tested on its numbers; drawing is separate and
imports matplotlib only when called. matplotlib is the optional extra ``plot``: without it,
``require_matplotlib`` raises ``MissingExtra`` and the CLI says how to install it. Drawing
goes through matplotlib's Agg canvas (``FigureCanvasAgg``) on a ``Figure`` of its own, so no
display, no global pyplot state and no backend switch is involved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from worker.audit.whatif import Cell, Suggestion
from worker.core.routing import softmax

INSTALL_HINT = "pip install 'logit-router[plot]'"
TITLE = "Softmax probability vs temperature"  # the lab's title


class MissingExtra(RuntimeError):
    """matplotlib is not installed."""


def temperature_series(logits: Sequence[float], temperatures: Sequence[float]) -> list[list[float]]:
    """``rows[i][k]``: probability of class k at ``temperatures[i]``, by the worker's softmax.

    The lab computes ``[softmax(logits, t) for t in temps]``; this is the same table.
    """
    return [softmax(logits, t) for t in temperatures]


def class_names(n: int, labels: Sequence[str] | None = None) -> list[str]:
    """The lab's legend, ``class_1`` ... ``class_n``, unless labels are given."""
    return list(labels) if labels is not None else [f"class_{k + 1}" for k in range(n)]


@dataclass(frozen=True)
class Histogram:
    title: str
    edges: list[float]  # bins + 1 edges over [0, 1]
    counts: list[int]
    thresholds: Mapping[str, float]  # vertical lines, e.g. {"min_margin": 0.15}


def margin_histogram(
    margins: Sequence[float], bins: int = 50, title: str = "", thresholds: Mapping[str, float] = {}
) -> Histogram:
    """Counts of margins in ``bins`` equal bins over [0, 1] (the last bin includes 1)."""
    counts, edges = np.histogram(np.asarray(margins, dtype=np.float64), bins=bins, range=(0.0, 1.0))
    return Histogram(title, edges.tolist(), counts.tolist(), dict(thresholds))


def series_table(
    temperatures: Sequence[float], rows: Sequence[Sequence[float]], names: Sequence[str]
) -> str:
    """The chart's numbers as text, four decimals like the lab prints them."""
    width = max(9, *(len(n) + 1 for n in names))
    lines = ["T".rjust(6) + "".join(n.rjust(width) for n in names)]
    for t, row in zip(temperatures, rows, strict=True):
        lines.append(f"{t:6g}" + "".join(f"{p:{width}.4f}" for p in row))
    return "\n".join(lines) + "\n"


# --- drawing (matplotlib, imported lazily) ------------------------------------------------


def require_matplotlib() -> ModuleType:
    try:
        import matplotlib
        from matplotlib.backends import backend_agg  # noqa: F401 - the canvas used below
    except ImportError:
        raise MissingExtra(f"matplotlib is not installed; {INSTALL_HINT}") from None
    return matplotlib


def _figure(width: float, height: float) -> Any:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def draw_temperature_chart(
    path: Path,
    temperatures: Sequence[float],
    rows: Sequence[Sequence[float]],
    names: Sequence[str],
) -> Any:
    """The lab's chart: one line with markers per class, ylim 0..1, grid, legend.

    Returns the matplotlib ``Figure``, so that a test can read back what was drawn."""
    fig = _figure(6.4, 4.8)
    ax = fig.add_subplot()
    for k, name in enumerate(names):
        ax.plot(temperatures, [row[k] for row in rows], marker="o", label=name)
    ax.set_title(TITLE)
    ax.set_xlabel("Temperature")
    ax.set_ylabel("Probability")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    return fig


def draw_histograms(path: Path, histograms: Sequence[Histogram]) -> Any:
    """One panel per topic: margin counts, with the thresholds as dashed lines."""
    fig = _figure(7.0, 2.6 * max(1, len(histograms)) + 0.6)
    axes = fig.subplots(max(1, len(histograms)), 1, squeeze=False)[:, 0]
    for ax, h in zip(axes, histograms, strict=False):
        widths = np.diff(h.edges)
        ax.bar(h.edges[:-1], h.counts, width=widths, align="edge", alpha=0.8, label="events")
        for name, value in h.thresholds.items():
            ax.axvline(value, color="tab:red", linestyle="--", label=f"{name} {value:g}")
        ax.set_title(h.title)
        ax.set_xlim(0, 1)
        ax.set_xlabel("Margin (top-1 minus top-2 probability)")
        ax.set_ylabel("Events")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    return fig


def draw_rates(
    path: Path,
    cells: Mapping[str, Sequence[Cell]],
    target: float | None = None,
    picks: Mapping[str, Suggestion | None] | None = None,
    current: Mapping[str, Cell] | None = None,
) -> Any:
    """Escalation rate against temperature, one line per threshold, one panel per topic;
    the configured policy and the suggested one as single marked points."""
    topics = list(cells)
    fig = _figure(7.0, 3.2 * max(1, len(topics)) + 0.6)
    axes = fig.subplots(max(1, len(topics)), 1, squeeze=False)[:, 0]
    for ax, topic in zip(axes, topics, strict=False):
        lines: dict[tuple[float, float | None], list[Cell]] = {}
        for c in cells[topic]:
            lines.setdefault((c.min_margin, c.min_top1), []).append(c)
        rates = [c.rate for c in cells[topic]]
        for (m, t1), row in lines.items():
            row = sorted(row, key=lambda c: c.temperature)
            name = f"min_margin {m:g}" + ("" if t1 is None else f", min_top1 {t1:g}")
            ax.plot([c.temperature for c in row], [c.rate for c in row], marker="o", label=name)
        now = (current or {}).get(topic)
        if now is not None:
            rates.append(now.rate)
            ax.plot([now.temperature], [now.rate], marker="D", linestyle="", color="black",
                    label=f"configured T={now.temperature:g}, m={now.min_margin:g}")  # fmt: skip
        if target is not None:
            rates.append(target)
            ax.axhline(target, color="grey", linestyle=":", label=f"target {target:.1%}")
        pick = (picks or {}).get(topic)
        if pick is not None:
            name = f"suggested T={pick.temperature:g}, m={pick.min_margin:g}"
            ax.plot([pick.temperature], [pick.rate], marker="*", markersize=14, linestyle="",
                    color="tab:red", label=name)  # fmt: skip
        ax.set_title(f"Escalation rate vs temperature: {topic}")
        ax.set_xlabel("Temperature")
        ax.set_ylabel("Escalation rate")
        ax.set_ylim(0, min(1.0, max(rates, default=1.0) * 1.25 + 0.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return fig


def draw_calibration(path: Path, doc: Mapping[str, Any]) -> Any:
    """``calibrate``'s chart from its report: the reliability diagram before and after, and
    the risk-coverage curve at the new temperature with the target and the threshold."""
    fig = _figure(11.0, 4.6)
    left, right = fig.subplots(1, 2)
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for key, colour in (("before", "tab:orange"), ("after", "tab:blue")):
        bins = [b for b in doc["reliability"][key] if b["confidence"] is not None]
        t = doc[key]["temperature"]
        left.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                  color=colour, label=f"{key}: T={t:.3g}, ECE {doc[key]['ece']:.3f}")  # fmt: skip
    left.set_title(f"Reliability: {doc['topic']}")
    left.set_xlabel("Top-1 probability (mean of the bin)")
    left.set_ylabel("Accuracy of the bin (weighted)")
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.grid(alpha=0.3)
    left.legend(fontsize="small")
    curve = doc["risk_coverage"]
    right.plot([p["coverage"] for p in curve], [p["risk"] for p in curve], color="tab:blue",
               label=f"T={doc['after']['temperature']:.3g}")  # fmt: skip
    target = doc.get("target")
    if target is not None:
        right.axhline(target["error"], color="grey", linestyle=":",
                      label=f"target error {target['error']:.1%}")  # fmt: skip
        if target["min_margin"] is not None:
            right.plot([target["routed_share"]], [target["error_rate"]], marker="*",
                       markersize=14, linestyle="", color="tab:red",
                       label=f"min_margin {target['min_margin']:g}: "
                       f"upper bound {target['upper_bound']:.2%}")  # fmt: skip
    right.set_title("Risk vs coverage (routed share)")
    right.set_xlabel("Coverage: share of events routed")
    right.set_ylabel("Error rate of the routed events")
    right.set_xlim(0, 1)
    right.set_ylim(0, max([p["risk"] for p in curve] + [0.01]) * 1.1)
    right.grid(alpha=0.3)
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return fig
