"""Drift without a broker: the PSI and KS statistics against scipy and an independent
computation, the fixed bins, the reference file, the sliding window, the gauge, the config
field (refused at load naming it, left out of config_version, applied by a reload) and the
command's bad arguments."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from scipy import special, stats

from tests.unit.test_metrics import Rec
from worker.cli.main import main
from worker.core import drift, native
from worker.core.changes import compare
from worker.core.errors import ConfigError
from worker.core.records import Router
from worker.core.settings import Settings, load_settings
from worker.devkit import traffic
from worker.observability.drift import EVERY_S, DriftGauges
from worker.observability.metrics import Metrics
from worker.stream.pipeline import Worker
from worker.stream.reload import Reloader


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LOGIT_ROUTER_"):
            monkeypatch.delenv(key)


def scores(n: int, scale: float, seed: int, classes: int = 3) -> dict[str, np.ndarray]:
    """Margins and top-1 probabilities of softmax(scale * z), z standard normal."""
    z = np.random.default_rng(seed).normal(size=(n, classes)) * scale
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    top = np.sort(p, axis=1)
    return {"margin": top[:, -1] - top[:, -2], "top1": top[:, -1]}


def independent_psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI from numpy's histogram and scipy's relative entropy: (a - e) ln(a / e) is
    a ln(a / e) + e ln(e / a), the two relative entropies."""
    e_counts, _ = np.histogram(expected, bins=np.array(drift.EDGES))
    a_counts, _ = np.histogram(actual, bins=np.array(drift.EDGES))
    e = np.maximum(e_counts / e_counts.sum(), 1e-4)
    a = np.maximum(a_counts / a_counts.sum(), 1e-4)
    return float(np.sum(special.rel_entr(a, e) + special.rel_entr(e, a)))


# ---- the statistics -------------------------------------------------------------------------


def test_bins_match_numpys_histogram_on_the_same_edges_values_on_edges_included() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.uniform(size=5_000), np.array(drift.EDGES), [0.0, 1.0, 1.0]])
    want, _ = np.histogram(values, bins=np.array(drift.EDGES))
    assert drift.bin_counts(values).tolist() == want.tolist()
    assert drift.bin_counts([0.05]).tolist()[1] == 1  # a bin is [edge, next edge)
    assert drift.bin_counts([1.0]).tolist()[-1] == 1  # the last one holds 1
    assert drift.EDGES[0] == 0.0 and drift.EDGES[-1] == 1.0 and len(drift.EDGES) == 21


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.5, 4.0])
@pytest.mark.parametrize("measure", ["margin", "top1"])
def test_psi_equals_an_independent_computation(scale: float, measure: str) -> None:
    ref = scores(20_000, 1.0, seed=2)[measure]
    live = scores(3_000, scale, seed=3)[measure]
    ours = drift.psi(drift.bin_counts(ref), drift.bin_counts(live))
    assert ours == pytest.approx(independent_psi(ref, live), rel=1e-12, abs=1e-15)


def test_psi_with_empty_bins_uses_the_stated_floor() -> None:
    expected = np.zeros(drift.BINS, dtype=np.int64)
    expected[0] = 100  # every reference event in the first bin
    actual = np.zeros(drift.BINS, dtype=np.int64)
    actual[-1] = 50  # every live event in the last
    # Two bins differ: (1e-4 - 1) ln(1e-4) + (1 - 1e-4) ln(1 / 1e-4); the 18 others are equal.
    want = 2 * (1 - 1e-4) * math.log(1e4)
    assert drift.psi(expected, actual) == pytest.approx(want, rel=1e-12)
    assert drift.psi(expected, expected) == 0.0


def test_psi_of_the_same_scale_stays_below_the_warning_and_a_shift_passes_the_page() -> None:
    ref = scores(20_000, 1.0, seed=4)
    steady = scores(2_000, 1.0, seed=5)
    shifted = scores(2_000, 3.0, seed=6)
    for m in drift.MEASURES:
        counts = drift.bin_counts(ref[m])
        assert drift.psi(counts, drift.bin_counts(steady[m])) < 0.1, m
        assert drift.psi(counts, drift.bin_counts(shifted[m])) > 0.25, m


@settings(max_examples=200, deadline=None)
@given(
    a=st.lists(st.integers(0, 40).map(lambda i: i / 40), min_size=1, max_size=300),
    b=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=300),
)
def test_ks_equals_scipys_ks_2samp_ties_included(a: list[float], b: list[float]) -> None:
    want = stats.ks_2samp(a, b).statistic
    assert drift.ks_statistic(a, b) == pytest.approx(want, abs=1e-12)
    assert drift.ks_statistic(a, a) == 0.0


def test_ks_on_scores_equals_scipy() -> None:
    ref, live = scores(5_000, 1.0, seed=7), scores(1_500, 2.0, seed=8)
    for m in drift.MEASURES:
        want = stats.ks_2samp(live[m], ref[m]).statistic
        assert drift.ks_statistic(live[m], ref[m]) == pytest.approx(want, abs=1e-12)


# ---- the reference file ---------------------------------------------------------------------


def test_a_reference_reads_back_as_written_with_its_sample_capped() -> None:
    values = scores(1_000, 1.0, seed=9)
    ref = drift.make_reference("t", values, "2026-12-05T12:00:00Z", {"from": None}, sample_size=300)
    back = drift.parse_reference(ref.to_json())
    assert back == ref
    assert back.n == 1_000
    assert sum(back.measures["margin"].counts) == 1_000
    assert back.counts("top1").tolist() == drift.bin_counts(values["top1"]).tolist()
    # The same events sampled for both measures, and all of them below the cap.
    sample = back.measures["margin"].sample
    assert len(sample) == 300 and set(sample) <= set(values["margin"].tolist())
    whole = drift.make_reference("t", values, "x", {})
    assert whole.measures["top1"].sample == tuple(values["top1"].tolist())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="other"), "not a drift reference"),
        (lambda d: d["bins"].update(edges=[0.0, 0.5, 1.0]), "bins are not this worker's"),
        (lambda d: d["margin"]["counts"].__setitem__(0, 10**6), "add up to"),
        (lambda d: d["top1"].update(sample=[]), "top1.sample"),
        (lambda d: d.update(version=2), "version 2"),
    ],
)
def test_a_bad_reference_is_refused_saying_why(change: object, message: str) -> None:
    doc = orjson.loads(drift.make_reference("t", scores(50, 1.0, 1), "x", {}).to_json())
    change(doc)  # type: ignore[operator]
    with pytest.raises(drift.ReferenceError, match=message):
        drift.parse_reference(orjson.dumps(doc))
    with pytest.raises(drift.ReferenceError, match="not JSON"):
        drift.parse_reference(b"{")


# ---- the sliding window ---------------------------------------------------------------------


def total(window: drift.SlidingCounts, now: float) -> int:
    return int(window.counts(now)["margin"].sum())


def test_the_window_forgets_a_sub_window_once_all_of_it_is_older_than_the_window() -> None:
    window = drift.SlidingCounts(60.0, slots=10)  # sub-windows of 6 s
    one = {"margin": [0.5], "top1": [0.9]}
    window.add(1000.0, one)  # sub-window [996, 1002)
    window.add(1030.0, {"margin": [0.1, 0.2], "top1": [0.6, 0.7]})
    assert total(window, 1030.0) == 3
    assert total(window, 1061.9) == 3  # [996, 1002) still overlaps [1001.9, 1061.9]
    assert total(window, 1062.0) == 2  # now wholly before it: dropped
    assert window.counts(1062.0)["top1"].tolist() == drift.bin_counts([0.6, 0.7]).tolist()
    assert total(window, 1091.9) == 2  # 1030 is in [1026, 1032)
    assert total(window, 1092.0) == 0
    # A sub-window's slot comes round again: its old counts are cleared, not added to.
    window.add(1000.0 + 60.0, one)
    assert total(window, 1060.0) == 3


def test_the_window_covers_between_one_window_and_one_sub_window_more() -> None:
    window = drift.SlidingCounts(10.0, slots=10)
    for t in np.arange(0.0, 100.0, 0.25):
        window.add(float(t), {"margin": [0.5], "top1": [0.5]})
    # 4 events a second: between 40 (exactly the window) and 44 (one sub-window more).
    for now in (99.75, 99.9, 99.99):
        assert 40 <= total(window, now) <= 44


# ---- the gauge ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def write_reference(path: Path, scale: float = 1.0, n: int = 5_000) -> drift.Reference:
    ref = drift.make_reference("t", scores(n, scale, seed=11), "2026-12-05T12:00:00Z", {})
    path.write_bytes(ref.to_json())
    return ref


def drift_settings(path: Path, window_s: float = 60.0, min_events: int = 100) -> Settings:
    table = {"reference": str(path), "window_s": window_s, "min_events": min_events}
    return Settings(topics={"t": {"drift": table}, "u": {}})


def psi_gauge(registry: CollectorRegistry, measure: str, topic: str = "t") -> float | None:
    return registry.get_sample_value("logit_router_drift_psi", {"topic": topic, "measure": measure})


def test_the_gauge_is_the_psi_of_the_window_recomputed_at_most_every_few_seconds(
    tmp_path: Path,
) -> None:
    ref = write_reference(tmp_path / "ref.json")
    registry, clock = CollectorRegistry(), Clock()
    gauges = DriftGauges(drift_settings(tmp_path / "ref.json"), registry, clock)
    assert psi_gauge(registry, "margin") is not None
    assert math.isnan(psi_gauge(registry, "margin") or 0.0)  # empty window: NaN
    assert psi_gauge(registry, "margin", topic="u") is None  # no reference, no series

    clock.now += EVERY_S
    live = scores(150, 3.0, seed=12)
    gauges.observe("t", live["margin"], live["top1"])
    gauges.observe("u", live["margin"], live["top1"])  # a topic without one: ignored
    for m in drift.MEASURES:
        want = drift.psi(ref.counts(m), drift.bin_counts(live[m]))
        assert psi_gauge(registry, m) == pytest.approx(want, rel=1e-12), m
    shifted = psi_gauge(registry, "margin")

    more = scores(5_000, 1.0, seed=13)
    gauges.observe("t", more["margin"], more["top1"])
    clock.now += EVERY_S / 2
    assert psi_gauge(registry, "margin") == shifted  # not recomputed yet
    clock.now += EVERY_S / 2
    both = np.concatenate([live["margin"], more["margin"]])
    want = drift.psi(ref.counts("margin"), drift.bin_counts(both))
    assert psi_gauge(registry, "margin") == pytest.approx(want, rel=1e-12)
    # A minute later the window is empty again.
    clock.now += 60.0 + 6.0
    assert math.isnan(psi_gauge(registry, "margin") or 0.0)


def test_below_min_events_the_gauge_reads_nan(tmp_path: Path) -> None:
    write_reference(tmp_path / "ref.json")
    registry, clock = CollectorRegistry(), Clock()
    gauges = DriftGauges(drift_settings(tmp_path / "ref.json", min_events=100), registry, clock)
    few = scores(99, 1.0, seed=14)
    gauges.observe("t", few["margin"], few["top1"])
    assert math.isnan(psi_gauge(registry, "top1") or 0.0)
    gauges.observe("t", few["margin"][:1], few["top1"][:1])
    clock.now += EVERY_S
    assert math.isfinite(psi_gauge(registry, "top1") or math.nan)


def test_a_new_reference_keeps_the_window_and_a_new_window_length_empties_it(
    tmp_path: Path,
) -> None:
    write_reference(tmp_path / "a.json", scale=1.0)
    other = write_reference(tmp_path / "b.json", scale=3.0)
    registry, clock = CollectorRegistry(), Clock()
    gauges = DriftGauges(drift_settings(tmp_path / "a.json"), registry, clock)
    live = scores(500, 3.0, seed=15)
    gauges.observe("t", live["margin"], live["top1"])
    gauges.configure(drift_settings(tmp_path / "b.json"))
    want = drift.psi(other.counts("margin"), drift.bin_counts(live["margin"]))
    assert psi_gauge(registry, "margin") == pytest.approx(want, rel=1e-12)
    gauges.configure(drift_settings(tmp_path / "b.json", window_s=30.0))
    assert math.isnan(psi_gauge(registry, "margin") or 0.0)
    gauges.configure(Settings(topics={"t": {}}))
    assert psi_gauge(registry, "margin") is None


# ---- the config -----------------------------------------------------------------------------


def test_a_missing_or_invalid_reference_is_refused_at_load_naming_the_field(
    tmp_path: Path,
) -> None:
    config = tmp_path / "w.toml"
    config.write_text(f'[topics."t".drift]\nreference = "{tmp_path / "none.json"}"\n')
    with pytest.raises(
        ConfigError, match=r"topics\.t\.drift\.reference = .*does not point to a file"
    ):
        load_settings(config)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    config.write_text(f'[topics."t".drift]\nreference = "{bad}"\n')
    with pytest.raises(ConfigError, match=r"topics\.t\.drift\.reference = .*not a drift reference"):
        load_settings(config)
    write_reference(bad)
    config.write_text(f'[topics."t".drift]\nreference = "{bad}"\nwindow_s = 0\n')
    with pytest.raises(ConfigError, match=r"topics\.t\.drift\.window_s = 0"):
        load_settings(config)


def test_drift_is_not_part_of_the_config_version_and_a_reload_applies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths, short enough to be shown whole
    write_reference(tmp_path / "a.json")
    write_reference(tmp_path / "b.json", scale=2.0)
    plain = Settings(topics={"t": {}, "u": {}})
    watched = drift_settings(Path("a.json"))
    assert watched.config_version == plain.config_version
    change = compare(watched, drift_settings(Path("b.json")))
    assert change.result == "applied"
    assert change.routing == ["topics.\"t\".drift.reference 'a.json' -> 'b.json'"]
    assert compare(plain, watched).result == "applied"


@pytest.mark.parametrize("compiled", [False, True])
def test_a_batch_from_either_routing_path_feeds_the_gauge_its_published_scores(
    compiled: bool, tmp_path: Path
) -> None:
    if compiled and not native.available():
        assert os.environ.get("LOGIT_ROUTER_EXPECT_NATIVE") != "1", "the extension is missing"
        return  # Python only: the other case covers this machine's path
    ref = write_reference(tmp_path / "ref.json")
    table = {"reference": str(tmp_path / "ref.json"), "min_events": 1}
    s = Settings(
        topics={"t": {"temperature": 0.7, "drift": table}}, processing={"native": compiled}
    )
    assert native.in_use(s) == compiled
    registry = CollectorRegistry()
    metrics = Metrics(s, registry)
    batch = [
        Rec("t", 0, i, 0, e.value) for i, e in enumerate(traffic.synthetic(400, seed=3, classes=3))
    ]
    outbound = Router(s).process(batch)
    metrics.record_outputs(outbound)
    published = [orjson.loads(o.value) for o in outbound if o.scores is not None and o.value]
    for m, field in (("margin", "margin"), ("top1", "top1")):
        values = [doc[field] for doc in published]
        want = drift.psi(ref.counts(m), drift.bin_counts(values))
        assert psi_gauge(registry, m) == pytest.approx(want, rel=1e-12), m


async def test_a_reload_applies_another_reference_live_and_refuses_a_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_reference(tmp_path / "a.json", scale=1.0)
    other = write_reference(tmp_path / "b.json", scale=3.0)
    (tmp_path / "bad.json").write_text("[]")
    config = tmp_path / "w.toml"
    text = '[http]\nenabled = false\n[topics."t".drift]\nreference = "{}"\nmin_events = 1\n'
    config.write_text(text.format("a.json"))
    s = load_settings(config)
    worker = Worker(s, Metrics(s, CollectorRegistry()))
    registry = worker.metrics.registry
    live = scores(300, 3.0, seed=16)
    worker.metrics.drift.observe("t", live["margin"], live["top1"])
    before = psi_gauge(registry, "margin")
    reloader = Reloader(config, worker)

    config.write_text(text.format("b.json"))
    outcome = await reloader.reload("test")
    assert outcome.result == "applied"
    assert outcome.version == s.config_version  # the routing config is the same
    assert "topics.\"t\".drift.reference 'a.json' -> 'b.json'" in outcome.detail
    # The window was kept; the next PSI is against the new reference.
    clock_free = drift.psi(other.counts("margin"), drift.bin_counts(live["margin"]))
    monkeypatch.setattr("worker.observability.drift.EVERY_S", 0.0)
    assert psi_gauge(registry, "margin") == pytest.approx(clock_free, rel=1e-12)
    assert psi_gauge(registry, "margin") != before

    config.write_text(text.format("bad.json"))
    outcome = await reloader.reload("test")
    assert outcome.result == "refused"
    assert "topics.t.drift.reference = 'bad.json': not a drift reference" in outcome.detail
    assert worker.settings.topics["t"].drift is not None
    assert worker.settings.topics["t"].drift.reference == Path("b.json")


# ---- the command's arguments ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["drift", "--topic", "t"], "needs --reference FILE"),
        (["drift", "snapshot", "--topic", "t"], "needs -o FILE"),
        (["drift", "snapshot", "--topic", "t", "-o", "x.json", "--json"], "neither --reference"),
        (["drift", "--topic", "t", "--reference", "ref.json", "-o", "x.json"], "needs --reference"),
        (["drift", "--reference", "ref.json"], "the following arguments are required: --topic"),
        (["drift", "--topic", "t", "--reference", "nowhere.json"], "no such file"),
        (["drift", "--topic", "t", "--reference", "bad.json"], "not a drift reference"),
        (["drift", "--topic", "t", "--reference", "ref.json", "--from", "yesterday"], "--from"),
        (["drift", "snapshot", "--topic", "t", "-o", "no/dir/ref.json"], "no such directory"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    write_reference(tmp_path / "ref.json")
    (tmp_path / "bad.json").write_text("{}")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
