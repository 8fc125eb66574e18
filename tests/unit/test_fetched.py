"""Fetched records unpacked the worker's way (``worker.stream.fetched``): the same records, field
for field, as aiokafka's own unpacking hands out (keys, values and headers of any kind,
transactions committed and aborted, control batches, a fetch offset inside a batch, log-append
time, compressed batches left to aiokafka), the same positions whatever ``getmany`` takes at a
time, and a corrupt batch still refused with aiokafka's ``CorruptRecordException``, whichever
byte of it is wrong.
"""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import astuple
from typing import Any

import aiokafka
import aiokafka.consumer.fetcher as fetcher
import pytest
from aiokafka.codec import gzip_encode
from aiokafka.errors import CorruptRecordException
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core import native
from worker.core.records import FetchedRecord, Router
from worker.core.settings import Settings
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


def unpacked(
    buffer: bytes,
    *,
    ours: bool,
    aborted: list[tuple[int, int]] | None = None,
    fetch_offset: int = 0,
    isolation: int = READ_COMMITTED,
) -> list[Any]:
    return list(partition_records(buffer, ours, aborted or [], fetch_offset, isolation))


def partition_records(
    buffer: bytes, ours: bool, aborted: list[tuple[int, int]], fetch_offset: int, isolation: int
) -> Any:
    memory, partition = (
        (unpacking._CheckedRecords, unpacking._PartitionRecords)
        if ours
        else (MemoryRecords, AIOKAFKA_PARTITION_RECORDS)
    )
    records: Iterator[Any] = partition(
        TP, memory(buffer), aborted, fetch_offset, None, None, True, isolation
    )
    return records


Headers = list[tuple[str, bytes | None]]
Rec = tuple[bytes | None, bytes | None, Headers]


def batch(
    base_offset: int,
    records: Sequence[Rec],
    *,
    producer_id: int = -1,
    transactional: bool = False,
    control: bool = False,
    log_append_time: int | None = None,
    compression: int = 0,
) -> bytes:
    """One record batch as a broker returns it: at its base offset, with the flags asked."""
    b = DefaultRecordBatchBuilder(2, compression, int(transactional), producer_id, 0, 0, 1 << 20)
    for i, (key, value, headers) in enumerate(records):
        b.append(i, 1_764_000_000_000 + 7 * i, key, value, headers)
    built = bytearray(b.build())
    built[:8] = base_offset.to_bytes(8, "big")
    attributes = int.from_bytes(built[21:23], "big")
    if control:
        attributes |= 0x20
    if log_append_time is not None:
        attributes |= 0x08
        built[35:43] = log_append_time.to_bytes(8, "big")
    built[21:23] = attributes.to_bytes(2, "big")
    built[17:21] = calc_crc32c(bytes(built[21:])).to_bytes(4, "big")
    return bytes(built)


def marker(base_offset: int, producer_id: int, *, commit: bool) -> bytes:
    """A transaction's end, as the broker writes it: a control batch of one record."""
    key = (0).to_bytes(2, "big") + int(commit).to_bytes(2, "big")
    record: Rec = (key, b"\x00\x00\x00\x00\x00\x00", [])
    return batch(base_offset, [record], producer_id=producer_id, transactional=True, control=True)


def compiled_path(buffer: bytes) -> bool:
    """Whether the compiled module unpacks ``buffer`` (else aiokafka's generator does)."""
    records = partition_records(buffer, True, [], 0, READ_COMMITTED)
    return getattr(records, "_ready", None) is not None


def same_as_aiokafka(buffer: bytes, **how: Any) -> list[Any]:
    ours = unpacked(buffer, ours=True, **how)
    assert ours == [astuple(r) for r in unpacked(buffer, ours=False, **how)]
    assert all(type(r) is FetchedRecord for r in ours)
    return ours


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
    monkeypatch.setattr(fetcher, "FetchResult", fetcher.FetchResult)
    assert unpacking.install()
    assert fetcher.FetchResult is unpacking._FetchResult
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
    monkeypatch.setattr(fetcher, "FetchResult", unpacking._FetchResult.__mro__[1])
    monkeypatch.setattr(aiokafka, "__version__", "0.15.0")
    assert not unpacking.install()
    assert fetcher.PartitionRecords is original
    assert fetcher.MemoryRecords is MemoryRecords
    monkeypatch.setattr(aiokafka, "__version__", "0.14.0")
    monkeypatch.setattr(original, "_consumer_record", None)  # an internal renamed or gone
    assert not unpacking.install()
    assert fetcher.PartitionRecords is original


def test_keys_values_and_headers_of_every_kind() -> None:
    records: list[Rec] = [
        (None, b"v", []),
        (b"k", None, [("h", None)]),
        (b"", b"", [("", b""), ("caf\u00e9", b"\xff\x00"), ("h", b"x" * 300)]),
        (b"k" * 200, b"v" * 70_000, [("trace", b"t")] * 3),
    ]
    buffer = batch(40, records) + batch(44, records[:1])
    assert compiled_path(buffer)
    ours = same_as_aiokafka(buffer)
    assert [r.offset for r in ours] == [40, 41, 42, 43, 44]
    assert ours[1].key == b"k" and ours[1].value is None and ours[1].serialized_value_size == -1
    assert ours[2].headers == (("", b""), ("caf\u00e9", b"\xff\x00"), ("h", b"x" * 300))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.none() | st.binary(max_size=40),
                st.none() | st.binary(max_size=400),
                st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=8))),
            ),
            min_size=1,
            max_size=8,
        ),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, 40),
)
def test_any_records_unpack_as_aiokafka_unpacks_them(
    batches: list[list[Rec]],
    fetch_offset: int,
) -> None:
    buffer, base = b"", 0
    for records in batches:
        buffer += batch(base, records)
        base += len(records) + 1  # a gap, as compaction leaves
    same_as_aiokafka(buffer)
    same_as_aiokafka(buffer, fetch_offset=fetch_offset)  # records before it are skipped


def test_transactions_aborted_and_committed_under_read_committed() -> None:
    one: list[Rec] = [(b"k", b"v", [])] * 3
    buffer = (
        batch(0, one, producer_id=7, transactional=True)  # aborted below
        + batch(3, one, producer_id=8, transactional=True)  # committed below
        + marker(6, 7, commit=False)
        + marker(7, 8, commit=True)
        + batch(8, one, producer_id=9)  # idempotent, not transactional
        + batch(11, one, producer_id=7, transactional=True)  # a later transaction, kept
    )
    aborted = [(7, 0)]
    assert compiled_path(buffer)
    ours = same_as_aiokafka(buffer, aborted=aborted)
    assert [r.offset for r in ours] == [3, 4, 5, 8, 9, 10, 11, 12, 13]
    # Read uncommitted, only the control batches are left out.
    uncommitted = same_as_aiokafka(buffer, aborted=aborted, isolation=0)
    assert len(uncommitted) == 12


def test_log_append_time_and_compressed_batches() -> None:
    plain = batch(0, [(b"k", b"v", [])] * 2, log_append_time=1_765_000_000_123)
    assert [r.timestamp for r in same_as_aiokafka(plain)] == [1_765_000_000_123] * 2
    assert [r.timestamp_type for r in same_as_aiokafka(plain)] == [1, 1]
    gzip = 1
    compressed = plain + batch(2, [(b"k", b"v" * 100, [])] * 3, compression=gzip)
    assert not compiled_path(compressed)  # aiokafka decompresses it
    assert len(same_as_aiokafka(compressed)) == 5


def test_positions_follow_what_each_take_returns() -> None:
    buffer = batch(0, [(b"k", b"v", [])] * 5) + marker(5, 3, commit=True)
    buffer += batch(6, [(b"k", b"v", [])] * 4)
    ours = partition_records(buffer, True, [], 0, READ_COMMITTED)
    theirs = partition_records(buffer, False, [], 0, READ_COMMITTED)
    assert isinstance(ours, unpacking._PartitionRecords)
    taken, exhausted = ours.take(3)
    assert [r.offset for r in taken] == [0, 1, 2] and not exhausted
    assert ours.next_fetch_offset == 3
    assert next(ours).offset == 3  # one at a time, as ``getone`` takes them
    assert ours.next_fetch_offset == 4
    taken, exhausted = ours.take(None)
    assert [r.offset for r in taken] == [4, 6, 7, 8, 9] and exhausted
    list(theirs)
    assert ours.next_fetch_offset == theirs.next_fetch_offset == 10
    assert ours.take(5) == ([], True)


def test_a_partition_consumed_is_freed_without_the_collector() -> None:
    # Nothing may keep a fetch's records alive once they are taken: a cycle would hold every
    # fetched buffer until a full collection, which the worker's tuned collector rarely runs.
    buffer = fetch_bytes(batches=2, per_batch=5)
    gc.disable()
    try:
        records = partition_records(buffer, True, [], 0, READ_COMMITTED)
        assert compiled_path(buffer)
        gone = weakref.ref(records)
        taken, exhausted = records.take(None)
        assert len(taken) == 10 and exhausted
        del records
        assert gone() is None
    finally:
        gc.enable()


EVENT = b'{"id":"a","logits":[2.0,1.0]}'


def with_header_names(base_offset: int, *names: bytes, compression: int = 0) -> bytes:
    """A record per name, whose first header's name is that name's bytes, whatever they are:
    a librdkafka or Go producer takes a header name as bytes, and the broker keeps them."""
    placeholders = [chr(ord("A") + i) * len(name) for i, name in enumerate(names)]
    plain = batch(base_offset, [(b"k", EVENT, [(p, b"v"), ("trace", b"t")]) for p in placeholders])
    records = plain[61:]
    for placeholder, name in zip(placeholders, names, strict=True):
        records = records.replace(placeholder.encode(), name)
    if compression:
        records = gzip_encode(records)
    built = bytearray(plain[:61]) + records
    built[8:12] = (49 + len(records)).to_bytes(4, "big")
    attributes = int.from_bytes(built[21:23], "big") | compression
    built[21:23] = attributes.to_bytes(2, "big")
    built[17:21] = calc_crc32c(bytes(built[21:])).to_bytes(4, "big")
    return bytes(built)


@pytest.mark.parametrize("compression", [0, 1], ids=["plain", "gzip"])
def test_a_header_name_that_is_not_utf8_is_read_as_javas_client_reads_it(
    compression: int,
) -> None:
    good = with_header_names(0, b"ok", b"ok", compression=compression)
    bad = with_header_names(2, b"ok", b"\xff\xfe", b"ok", compression=compression)
    with pytest.raises(UnicodeDecodeError):  # what aiokafka alone does: getmany raised it
        unpacked(good + bad, ours=False)
    got = unpacked(good + bad, ours=True)
    assert [r.offset for r in got] == [0, 1, 2, 3, 4]  # each once, in order, none skipped
    assert [r.headers[0][0] for r in got] == ["ok", "ok", "ok", "\ufffd\ufffd", "ok"]
    assert all(r.headers[1] == ("trace", b"t") and r.value == EVENT for r in got)
    # ... and routed, and written back out, with that name as read.
    outputs = Router(Settings(topics={"in": {}})).process(got)
    assert "dead_letter" not in [o.kind for o in outputs]
    assert [o.headers[0][0] for o in outputs] == [r.headers[0][0] for r in got]
    assert native.RecordBatch is not None  # the compiled module is installed (see the top)
    record_batch = native.RecordBatch(1 << 20, 0, is_transactional=False)
    assert record_batch.extend(outputs, 0) == len(outputs)
