"""Range bounds as a user types them: ISO times with a timezone, or partition:offset pairs."""

from __future__ import annotations

import pytest

from worker.audit.ranges import Bound, RangeError, check_order, parse_bound


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2026-11-26T12:00:00Z", 1_795_694_400_000),
        ("2026-11-26T14:00:00+02:00", 1_795_694_400_000),
        ("2026-11-26T12:00:00.123Z", 1_795_694_400_123),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_times_become_epoch_milliseconds(text: str, want: int) -> None:
    bound = parse_bound(text)
    assert bound.timestamp_ms == want and bound.offsets == ()


def test_partition_offsets() -> None:
    assert parse_bound("0:120").offsets == ((0, 120),)
    bound = parse_bound("2:7, 0:120")
    assert bound.offsets == ((0, 120), (2, 7)) and bound.partitions == {0, 2}
    assert bound.timestamp_ms is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("2026-11-26T12:00:00", "timezone"),
        ("2026-11-26", "timezone"),
        ("yesterday", "not an ISO time or partition:offset"),
        ("0:1,0:2", "partition 0 is named twice"),
        ("-1:5", "not an ISO time"),
        ("1969-12-31T23:59:59Z", "before 1970"),
    ],
)
def test_bad_bounds_are_refused(text: str, needle: str) -> None:
    with pytest.raises(RangeError, match=needle):
        parse_bound(text)


@pytest.mark.parametrize(
    ("start", "end", "needle"),
    [
        ("2026-11-27T00:00:00Z", "2026-11-26T00:00:00Z", "later than"),
        ("0:10", "1:20", "name the same ones"),
        ("0:30,1:0", "0:20,1:5", "is after"),
    ],
)
def test_ranges_that_run_backwards_are_refused(start: str, end: str, needle: str) -> None:
    with pytest.raises(RangeError, match=needle):
        check_order(parse_bound(start), parse_bound(end))


def test_valid_orders_pass() -> None:
    check_order(parse_bound("0:10"), parse_bound("0:10"))  # empty, but not backwards
    check_order(parse_bound("2026-11-26T00:00:00Z"), parse_bound("0:5"))
    check_order(None, Bound("x", timestamp_ms=5))
