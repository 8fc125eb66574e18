"""``plot``: the lab's chart data, what is drawn, valid PNGs, and the missing-extra message."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.png import png_size
from worker.audit import plot

LAB = [3.2, 2.8, 0.5]
LAB_TEMPERATURES = [0.5, 0.7, 1.0, 1.3, 1.6, 2.0]
# The lab's printed figures (shared/seed/000_fb6d84e9be218614.txt, cells 1 and 2).
LAB_VALUES = {
    0.7: [0.6306, 0.3561, 0.0133],
    1.0: [0.5755, 0.3858, 0.0387],
    1.5: [0.5178, 0.3966, 0.0856],
}


def run(*args: str | Path, block_matplotlib: bool = False) -> subprocess.CompletedProcess[str]:
    if block_matplotlib:
        # None in sys.modules makes every later `import matplotlib` raise ImportError.
        code = (
            "import sys; sys.modules['matplotlib'] = None; "
            "from worker.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        argv = [sys.executable, "-c", code, *map(str, args)]
    else:
        argv = [sys.executable, "-m", "worker", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_the_series_are_the_labs_values() -> None:
    temps = sorted(LAB_VALUES)
    rows = plot.temperature_series(LAB, temps)
    assert [[round(p, 4) for p in row] for row in rows] == [LAB_VALUES[t] for t in temps]
    at_one = rows[temps.index(1.0)]
    assert round(at_one[0] - at_one[1], 4) == 0.1897  # the lab's top-1 margin
    for row in plot.temperature_series(LAB, LAB_TEMPERATURES):
        assert abs(sum(row) - 1.0) < 1e-15


def test_the_chart_draws_the_series_like_the_lab(tmp_path: Path) -> None:
    rows = plot.temperature_series(LAB, LAB_TEMPERATURES)
    names = plot.class_names(3)
    assert names == ["class_1", "class_2", "class_3"]
    out = tmp_path / "chart.png"
    fig = plot.draw_temperature_chart(out, LAB_TEMPERATURES, rows, names)
    (ax,) = fig.axes
    assert ax.get_title() == "Softmax probability vs temperature"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Temperature", "Probability")
    assert ax.get_ylim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == names
    for k, line in enumerate(ax.get_lines()):
        assert line.get_marker() == "o"
        assert list(line.get_xdata()) == LAB_TEMPERATURES
        assert list(line.get_ydata()) == [row[k] for row in rows]
    assert png_size(out) == (640, 480)  # the lab's default 6.4 x 4.8 in at 100 dpi


def test_margin_histogram_counts() -> None:
    rng = random.Random(5)
    margins = [rng.random() for _ in range(5000)] + [0.0, 1.0, 1.0]
    h = plot.margin_histogram(margins, bins=20, title="t", thresholds={"min_margin": 0.15})
    assert len(h.edges) == 21 and h.edges[0] == 0.0 and h.edges[-1] == 1.0
    assert sum(h.counts) == len(margins)
    for k in range(19):
        assert h.counts[k] == sum(1 for m in margins if k / 20 <= m < (k + 1) / 20)
    assert h.counts[19] == sum(1 for m in margins if m >= 19 / 20)  # 1.0 lands in the last bin


def test_histograms_draw_to_a_valid_png(tmp_path: Path) -> None:
    hs = [
        plot.margin_histogram([0.1, 0.5, 0.9], 10, f"topic {k}", {"min_margin": 0.2})
        for k in (1, 2)
    ]
    out = tmp_path / "margins.png"
    fig = plot.draw_histograms(out, hs)
    assert [ax.get_title() for ax in fig.axes] == ["topic 1", "topic 2"]
    assert png_size(out) == (700, 580)


def test_the_command_writes_the_chart_and_prints_the_data(tmp_path: Path) -> None:
    out = tmp_path / "chart.png"
    proc = run("plot", "--logits", "3.2,2.8,0.5", "--temperatures", "0.5,0.7,1.0,1.3,1.6,2.0",
               "-o", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert png_size(out) == (640, 480)
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["T", "class_1", "class_2", "class_3"]
    assert lines[2].split() == ["0.7", "0.6306", "0.3561", "0.0133"]
    assert lines[3].split() == ["1", "0.5755", "0.3858", "0.0387"]
    assert lines[-1] == f"wrote {out}"


def test_labels_name_the_legend(tmp_path: Path) -> None:
    proc = run("plot", "--logits", "3.2,2.8,0.5", "--labels", "billing,tech,sales",
               "-o", tmp_path / "c.png")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["T", "billing", "tech", "sales"]


@pytest.mark.parametrize(
    "args",
    [
        ["plot", "--logits", "1,2", "-o", "{tmp}/c.png"],
        ["plot", "margins", "--input", "{tmp}/e.jsonl", "-o", "{tmp}/c.png"],
        ["whatif", "--input", "{tmp}/e.jsonl", "--png", "{tmp}/c.png"],
    ],
)
def test_without_matplotlib_one_line_names_the_extra(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "e.jsonl").write_text('{"id": "a", "logits": [1, 2]}\n')
    proc = run(*(a.format(tmp=tmp_path) for a in args), block_matplotlib=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "matplotlib is not installed; pip install 'logit-router[plot]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["plot", "-o", "{tmp}/c.png"], "--logits is required"),
        (["plot", "--logits", "1", "-o", "{tmp}/c.png"], "at least 2 classes"),
        (["plot", "--logits", "1,nan", "-o", "{tmp}/c.png"], "NaN"),
        (["plot", "--logits", "1,2", "--temperatures", "0,1", "-o", "{tmp}/c.png"], "temperatures"),
        (
            ["plot", "--logits", "1,2", "--labels", "a,b,c", "-o", "{tmp}/c.png"],
            "3 labels for 2 logits",
        ),
        (["plot", "--logits", "1,2", "--labels", "a,a", "-o", "{tmp}/c.png"], "unique"),
        (["plot", "--logits", "1,2", "-o", "{tmp}/nowhere/c.png"], "no such directory"),
        (["plot", "--logits", "1,2", "-o", "{tmp}"], "is a directory"),
        (["plot", "--logits", "1,2", "-o", ""], "no file named (an empty path)"),
        (["plot", "--logits", "1,2"], "--output"),
        (
            ["plot", "--logits", "1,2", "--topic", "t", "-o", "{tmp}/c.png"],
            "--topic does not apply",
        ),
        (["plot", "margins", "--logits", "1,2", "-o", "{tmp}/c.png"], "--logits does not apply"),
        (["plot", "margins", "--bins", "0", "-o", "{tmp}/c.png"], "--bins"),
        (["plot", "bars", "-o", "{tmp}/c.png"], "invalid choice"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    proc = run(*(a.format(tmp=tmp_path) for a in args))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("bins", ["9" * 20, "1001"])
def test_more_bins_than_the_chart_can_show_are_refused(tmp_path: Path, bins: str) -> None:
    """20 digits made numpy refuse the allocation in a traceback; 10^8 took minutes."""
    (tmp_path / "e.jsonl").write_text('{"id": "a", "logits": [1, 2]}\n')
    proc = run(
        "plot", "margins", "--input", tmp_path / "e.jsonl", "--bins", bins, "-o", tmp_path / "c.png"
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"logit-router plot: argument --bins: must be 1 to 1000, got {bins!r}"
    ]
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["plot", "--logits", "3.2,2.8,0.5", "--temperatures", "1e-300,1e308", "-o", "{tmp}/c.png"],
        [
            "whatif",
            "--input",
            "{tmp}/e.jsonl",
            "--temperatures",
            "1,1.6e308",
            "--png",
            "{tmp}/c.png",
        ],
    ],
)
def test_a_temperature_past_the_charts_axis_is_refused(tmp_path: Path, args: list[str]) -> None:
    """matplotlib warned on stderr over an axis reaching 1e308, and raised at 1.6e308."""
    (tmp_path / "e.jsonl").write_text('{"id": "a", "logits": [1, 2]}\n')
    proc = run(*(a.format(tmp=tmp_path) for a in args))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "the chart's temperature axis stops at 1e+300, got temperature " in proc.stderr
    assert not (tmp_path / "c.png").exists()


def test_a_chart_up_to_the_axis_limit_draws_without_a_warning(tmp_path: Path) -> None:
    proc = run(
        "plot",
        "--logits",
        "3.2,2.8,0.5",
        "--temperatures",
        "1e-300,1e300",
        "-o",
        tmp_path / "c.png",
    )
    assert proc.returncode == 0 and proc.stderr == ""
    assert png_size(tmp_path / "c.png") == (640, 480)
