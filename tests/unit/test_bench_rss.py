"""The benchmark's RSS growth compares the peaks of the phase's first and last tenths, so a
leak shows and the moment of one poll does not."""

from __future__ import annotations

from bench.measure import RssWindows


def feed(windows: RssWindows, polls: list[tuple[int, float]]) -> RssWindows:
    for done, rss in polls:
        windows.add(done, rss)
    return windows


def test_a_steady_process_whose_polls_swing_shows_no_growth() -> None:
    # One poll at 10 % catches a trough, the last one a crest: two instants would say +40 %.
    polls = [(0, 150.0), (50, 176.0), (100, 125.0), (500, 170.0), (900, 160.0), (1000, 175.0)]
    windows = feed(RssWindows(1000), polls)
    assert (windows.first, windows.last) == (176.0, 175.0)
    assert abs(windows.growth()) < 0.01


def test_a_leak_shows_as_the_late_peak_above_the_early_one() -> None:
    polls = [(i * 50, 100.0 + i * 5) for i in range(21)]  # 5 MiB more every 50 events
    windows = feed(RssWindows(1000), polls)
    assert windows.first == 110.0  # up to the first poll at 10 %: 0, 50, 100
    assert windows.last == 200.0
    assert windows.growth() > 0.8


def test_a_phase_over_in_one_poll_counts_that_poll_for_both() -> None:
    windows = feed(RssWindows(1000), [(1000, 140.0)])
    assert (windows.first, windows.last, windows.growth()) == (140.0, 140.0, 0.0)
