"""``python -m bench.read_cost``: both readers receive and decode every byte the writer sends,
large frames and the small ones between them, and the table names both with their ratio."""

from __future__ import annotations

import pytest

from bench import read_cost


@pytest.mark.parametrize("reader", sorted(read_cost.READERS))
def test_each_reader_decodes_every_frame(reader: str) -> None:
    # ``_turn`` raises unless every byte sent was decoded.
    assert read_cost._turn(reader, 300_000, 20) > 0


def test_the_table_has_both_readers_and_their_ratio(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(read_cost, "MIB_PER_TURN", 2)
    monkeypatch.setattr(read_cost, "REPEATS", 1)
    assert read_cost.main(["500000"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["frame", "bytes", "stream", "reader", "frame", "protocol", "ratio"]
    size, stream, _, frames, _, ratio = row.split()
    assert size == "500,000"
    assert float(ratio) == pytest.approx(float(frames) / float(stream), abs=0.01)
