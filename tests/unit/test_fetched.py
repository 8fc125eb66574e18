"""Fetched records unpacked the worker's way (``worker.stream.fetched``): the same records, field
for field, as aiokafka's own unpacking hands out, and a corrupt batch still refused with
aiokafka's ``CorruptRecordException``, whichever byte of it is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import astuple
from typing import Any

import aiokafka
import aiokafka.consumer.fetcher as fetcher
import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core import native
from worker.stream import fetched as unpacking

if native.batches_crc_ok is None:
    if os.environ.get("LOGIT_ROUTER_EXPECT_NATIVE") == "1":
        raise RuntimeError("logit_router_native is not installed (see native/)")
    pytest.skip("the compiled module is not installed", allow_module_level=True)

TP = TopicPartition("in", 0)
READ_COMMITTED = 1


def fetch_bytes(batches: int, per_batch: int) -> bytes:
    """What a fetch returns: record batches back to back, each at its base offset."""
    out = bytearray()
    for n in range(batches):
        b = BatchBuilder(1 << 20, 0, is_transactional=False)
        for i in range(per_batch):
            b.append(
                timestamp=1_764_000_000_000 + i,
                key=f"k{n}.{i}".encode(),
                value=b'{"id":"%d","logits":[1.0,2.5,-3.0]}' % i,
                headers=[("trace", b"t%d" % i)],
            )
        built = bytearray(b._build())
        built[:8] = (n * per_batch).to_bytes(8, "big")  # the base offset, which the CRC skips
        out += built
    return bytes(out)


# aiokafka's own class, even after a consumer made earlier in this process installed ours.
AIOKAFKA_PARTITION_RECORDS = unpacking._PartitionRecords.__mro__[1]


def unpacked(buffer: bytes, *, ours: bool) -> list[Any]:
    memory, partition = (
        (unpacking._CheckedRecords, unpacking._PartitionRecords)
        if ours
        else (MemoryRecords, AIOKAFKA_PARTITION_RECORDS)
    )
    records: Iterator[Any] = partition(TP, memory(buffer), [], 0, None, None, True, READ_COMMITTED)
    return list(records)


def test_the_same_records_as_aiokafka_hands_out() -> None:
    buffer = fetch_bytes(batches=4, per_batch=25)
    ours = unpacked(buffer, ours=True)
    assert len(ours) == 100
    assert ours == [astuple(r) for r in unpacked(buffer, ours=False)]
    assert [r.offset for r in ours] == list(range(100))


def test_an_incomplete_last_batch_is_left_out_as_aiokafka_leaves_it() -> None:
    buffer = fetch_bytes(batches=3, per_batch=10)
    cut = buffer[: len(buffer) - 7]  # a fetch cut at its size limit
    assert native.batches_crc_ok is not None and native.batches_crc_ok(cut)
    assert unpacked(cut, ours=True) == [astuple(r) for r in unpacked(cut, ours=False)]
    assert len(unpacked(cut, ours=True)) == 20


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_corrupt_batch_is_refused_as_before(data: st.DataObject) -> None:
    buffer = bytearray(fetch_bytes(batches=3, per_batch=5))
    size = len(buffer) // 3  # the three batches are the same size
    # Any byte a checksum covers: from a batch's attributes to its end.
    at = data.draw(st.integers(0, 2)) * size + data.draw(st.integers(21, size - 1))
    flip = data.draw(st.integers(1, 255))
    buffer[at] ^= flip
    with pytest.raises(CorruptRecordException):
        unpacked(bytes(buffer), ours=False)
    with pytest.raises(CorruptRecordException):
        unpacked(bytes(buffer), ours=True)


def test_install_makes_the_fetcher_use_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetcher, "MemoryRecords", fetcher.MemoryRecords)
    monkeypatch.setattr(fetcher, "PartitionRecords", fetcher.PartitionRecords)
    assert unpacking.install()
    buffer = bytearray(fetch_bytes(batches=2, per_batch=3))
    assert fetcher.MemoryRecords(bytes(buffer)).verified
    buffer[-1] ^= 1
    records = fetcher.MemoryRecords(bytes(buffer))
    assert not records.verified  # aiokafka checks this one itself
    with pytest.raises(CorruptRecordException):
        list(fetcher.PartitionRecords(TP, records, [], 0, None, None, True, READ_COMMITTED))


def test_another_aiokafka_release_keeps_its_own_unpacking(monkeypatch: pytest.MonkeyPatch) -> None:
    # The subclasses lean on aiokafka's internals: any other release is left alone.
    original = AIOKAFKA_PARTITION_RECORDS
    monkeypatch.setattr(fetcher, "MemoryRecords", MemoryRecords)
    monkeypatch.setattr(fetcher, "PartitionRecords", original)
    monkeypatch.setattr(aiokafka, "__version__", "0.15.0")
    assert not unpacking.install()
    assert fetcher.PartitionRecords is original
    assert fetcher.MemoryRecords is MemoryRecords
    monkeypatch.setattr(aiokafka, "__version__", "0.14.0")
    monkeypatch.setattr(original, "_consumer_record", None)  # an internal renamed or gone
    assert not unpacking.install()
    assert fetcher.PartitionRecords is original
