"""The compiled record batch (``native.RecordBatch``) writes the bytes aiokafka's own builder
writes for the same records, splits a run of records into batches where aiokafka's would, and
carries the producer state and the transactional flag the producer sets.
"""

from __future__ import annotations

import os

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core import native
from worker.core.records import Outbound

if native.RecordBatch is None:
    if os.environ.get("LOGIT_ROUTER_EXPECT_NATIVE") == "1":
        raise RuntimeError("logit_router_native is not installed (see native/)")
    pytest.skip("the compiled module is not installed", allow_module_level=True)
RecordBatch = native.RecordBatch

STAMP = 1_764_000_000_123

optional_bytes = st.none() | st.binary(max_size=400)
header = st.tuples(st.text(max_size=12), optional_bytes)
output = st.builds(
    lambda key, value, headers: Outbound(
        "t", key, value, headers, "routed", None, "in", 0, 0, 0, None
    ),
    optional_bytes,
    optional_bytes,
    st.lists(header, max_size=3),
)


def aiokafka_batches(
    outputs: list[Outbound], cap: int, transactional: bool, state: tuple[int, int, int]
) -> list[bytes]:
    """What aiokafka's builder gives, record by record, a new batch whenever one is full."""
    built, i = [], 0
    while i < len(outputs):
        b = BatchBuilder(cap, 0, is_transactional=transactional)
        while i < len(outputs):
            o = outputs[i]
            if b.append(timestamp=STAMP, key=o.key, value=o.value, headers=o.headers) is None:
                break
            i += 1
        b._set_producer_state(*state)
        built.append(bytes(b._build()))
    return built


def compiled_batches(
    outputs: list[Outbound], cap: int, transactional: bool, state: tuple[int, int, int]
) -> list[bytes]:
    built, i = [], 0
    while i < len(outputs):
        b = RecordBatch(cap, STAMP, is_transactional=transactional)
        end = b.extend(outputs, i)
        assert b.record_count() == end - i > 0
        b._set_producer_state(*state)
        built.append(b._build())
        assert b.closed() and b.size() == len(built[-1])
        i = end
    return built


@settings(max_examples=300, deadline=None)
@given(
    outputs=st.lists(output, min_size=1, max_size=40),
    cap=st.sampled_from([100, 1024, 4096, 1 << 20]),
    transactional=st.booleans(),
    state=st.tuples(
        st.integers(-1, 2**63 - 1), st.integers(-1, 2**15 - 1), st.integers(0, 2**31 - 1)
    ),
)
def test_the_same_bytes_and_the_same_splits_as_aiokafka(
    outputs: list[Outbound], cap: int, transactional: bool, state: tuple[int, int, int]
) -> None:
    ours = compiled_batches(outputs, cap, transactional, state)
    assert ours == aiokafka_batches(outputs, cap, transactional, state)


def test_a_batch_reads_back_as_the_records_put_in() -> None:
    outputs = [
        Outbound("t", f"k{i}".encode(), b"v" * i, [("h", b"x"), ("n", b"")], "routed", None,
                 "in", 0, i, 0, None)
        for i in range(50)
    ]  # fmt: skip
    b = RecordBatch(1 << 20, STAMP, is_transactional=True)
    assert b.extend(outputs, 10) == 50
    b._set_producer_state(42, 3, 7)
    batch = DefaultRecordBatch(bytearray(b._build()))
    batch.validate_crc()
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (42, 3, 7)
    assert batch.is_transactional
    got = [(r.key, r.value, list(r.headers), r.timestamp) for r in batch]
    assert got == [(o.key, o.value, o.headers, STAMP) for o in outputs[10:]]


def test_a_full_batch_says_where_it_stopped_and_takes_no_more() -> None:
    outputs = [Outbound("t", None, b"x" * 300, [], "routed", None, "in", 0, i, 0, None)
               for i in range(10)]  # fmt: skip
    b = RecordBatch(1000, STAMP, is_transactional=False)
    stop = b.extend(outputs, 0)
    assert 0 < stop < 10 and b.size() <= 1000 and b.closed()
    with pytest.raises(RuntimeError):
        b.extend(outputs, stop)
    # The first record goes in whatever its size: the topic's limits are checked before.
    alone = RecordBatch(100, STAMP, is_transactional=False)
    assert alone.extend(outputs, 0) == 1 and alone.size() > 100


def test_a_value_that_is_not_bytes_is_refused_and_nothing_of_the_call_goes_in() -> None:
    good = Outbound("t", None, b"ok", [], "routed", None, "in", 0, 0, 0, None)
    bad = Outbound("t", None, "text", [], "routed", None, "in", 0, 1, 0, None)  # type: ignore[arg-type]
    b = RecordBatch(1000, STAMP, is_transactional=False)
    assert b.extend([good], 0) == 1
    size = b.size()
    with pytest.raises(TypeError, match="value must be bytes"):
        b.extend([good, good, bad], 0)
    assert (b.record_count(), b.size()) == (1, size)
