"""How fetched records are unpacked: checksums verified by the compiled module, and each record
a plain tuple.

aiokafka checks each batch's CRC-32C as it unpacks it (``check_crcs``), in its C extension
with a lookup table, a byte at a time, and builds each record as a ``ConsumerRecord``
dataclass, whose ``__init__`` runs in Python. The compiled module computes the same checksum
with the CPU's CRC instruction, once per fetched buffer as aiokafka wraps it
(``MemoryRecords``); a partition's records skip aiokafka's own check only when every batch of
that buffer matched. A mismatch, or a batch in an older format, leaves the check to aiokafka,
so a corrupt batch raises aiokafka's ``CorruptRecordException`` from ``getmany`` as before.
Each record is then a ``FetchedRecord``: the fields of a ``ConsumerRecord``, in its order,
as a named tuple made in C.

Where a partition's buffer was verified and holds only uncompressed v2 batches, the compiled
module also unpacks it whole (``unpack_batches``): per batch the offsets and flags aiokafka's
fetcher decides on, and its records as ``FetchedRecord``s, made in C. The batches then go through
aiokafka's own rules here (control batches, aborted transactions under ``read_committed``,
records before the fetch offset), and ``getmany`` takes its records as list slices, where
aiokafka runs a generator and a Python call per record. Any other buffer is unpacked by aiokafka.

aiokafka has no hook for any of this: ``install`` replaces the three names its fetcher module
builds fetched partitions from, with subclasses that change nothing else.
"""

from __future__ import annotations

from typing import Any

import aiokafka.consumer.fetcher as _fetcher
from aiokafka.record import default_records as _default_records
from aiokafka.record.control_record import ABORT_MARKER, ControlRecord
from aiokafka.record.memory_records import MemoryRecords

from worker.core import native
from worker.core.records import FetchedRecord
from worker.stream.internals import has_parameters, tested_release

_new = tuple.__new__  # skips the named tuple's ``__new__``, a Python function


class _CheckedRecords(MemoryRecords):  # type: ignore[misc]  # aiokafka is untyped here
    """Fetched bytes, and whether the compiled module found every batch's checksum right."""

    def __init__(self, buffer: bytes) -> None:
        super().__init__(buffer)
        check = native.batches_crc_ok
        self.verified = check is not None and check(buffer)
        self.buffer = buffer


class _PartitionRecords(_fetcher.PartitionRecords):  # type: ignore[misc]
    """aiokafka's, without its per-batch check where the whole buffer was verified already,
    and with ``FetchedRecord``s where no deserializer is set (the worker sets none); unpacked
    by the compiled module where it can (``_ready``), else by aiokafka's generator."""

    def __init__(
        self,
        tp: Any,
        records: Any,
        aborted: Any,
        fetch_offset: int,
        key_deserializer: Any,
        value_deserializer: Any,
        *args: Any,
    ) -> None:
        super().__init__(
            tp, records, aborted, fetch_offset, key_deserializer, value_deserializer, *args
        )
        self._ready: list[FetchedRecord] | None = None  # None: aiokafka's generator unpacks
        self._taken = 0
        self._final_offset = fetch_offset
        plain = key_deserializer is None and value_deserializer is None
        if plain:
            self._consumer_record = _fetched_record
        if not getattr(records, "verified", False):
            return
        self._check_crcs = False
        unpack = native.unpack_batches
        if plain and unpack is not None:
            batches = unpack(records.buffer, FetchedRecord, *tp)
            if batches is not None:
                self._ready = self._kept(batches)
            if self._ready is not None:
                self._records = None  # the fetched bytes, now unpacked: not kept until consumed
                # aiokafka's generator, never started here, holds this object: a cycle that
                # only the collector would free, with every record of the fetch in it.
                self._records_iterator = None

    def _unpack_leniently(self) -> bool:
        """What is left of the buffer, unpacked by the compiled module, which reads a header
        name that is not UTF-8 as Java's client does (U+FFFD for each bad sequence); its
        compressed batches are decompressed first. False where it cannot (no compiled module,
        a deserializer, an older format): aiokafka's error stands."""
        buffer = getattr(self._records, "buffer", None)
        unpack = native.unpack_batches
        if buffer is None or unpack is None or self._consumer_record is not _fetched_record:
            return False
        handed_out = self.next_fetch_offset  # the records before it, the generator gave
        plain = _decompressed(buffer)
        batches = None if plain is None else unpack(plain, FetchedRecord, *self._tp)
        ready = None if batches is None else self._kept(batches)
        if ready is None:
            return False
        if ready and ready[0].offset < handed_out:  # it failed inside a batch
            ready = [r for r in ready if r.offset >= handed_out]
        self._ready, self._taken = ready, 0
        self._records = self._records_iterator = None
        return True

    def _kept(self, batches: list[Any]) -> list[FetchedRecord] | None:
        """The records aiokafka's ``_unpack_records`` would hand out, in order, the fetch offset
        after them all in ``_final_offset``; ``None`` (aiokafka's generator then unpacks) where
        a control batch is not one it reads, for aiokafka to raise what it raises."""
        read_committed = self._isolation_level == _fetcher.READ_COMMITTED
        markers = [
            read_committed and control and _aborts(records) for *_, control, _, records in batches
        ]
        if None in markers:
            return None
        kept: list[FetchedRecord] = []
        next_offset = self.next_fetch_offset
        for (base_offset, batch_end, producer_id, control, transactional, records), abort in zip(
            batches, markers, strict=True
        ):
            if read_committed:  # a v2 batch always has a producer id (-1 for none)
                self._consume_aborted_up_to(base_offset)
                if abort:
                    self._aborted_producers.discard(producer_id)
                if transactional and producer_id in self._aborted_producers:
                    next_offset = batch_end
                    continue
            if control:
                next_offset = batch_end
                continue
            if records and records[0].offset < next_offset:
                records = [r for r in records if r.offset >= next_offset]
            kept += records
            next_offset = batch_end
        self._final_offset = next_offset
        return kept

    def take(self, max_records: int | None) -> tuple[list[FetchedRecord], bool]:
        """Up to ``max_records`` records from the unpacked ones (all of them for ``None``),
        and whether none is left; ``next_fetch_offset`` follows the last one taken."""
        ready = self._ready
        assert ready is not None  # noqa: S101 - only called on the compiled path
        start = self._taken
        end = len(ready) if max_records is None else min(len(ready), start + max(max_records, 1))
        self._taken = end
        if end < len(ready):
            self.next_fetch_offset = ready[end - 1].offset + 1
            return ready[start:end], False
        self.next_fetch_offset = self._final_offset
        self._ready = []  # the records go with the caller
        self._taken = 0
        return ready[start:] if start else ready, True

    def __next__(self) -> Any:
        if self._ready is None:
            try:
                return super().__next__()
            except UnicodeDecodeError:
                # A header name that is not UTF-8, which aiokafka reads strictly: raised from
                # ``getmany``, it would stop the worker at this record after every restart.
                if not self._unpack_leniently():
                    raise
        taken, _ = self.take(1)
        if not taken:
            raise StopIteration
        return taken[0]


class _FetchResult(_fetcher.FetchResult):  # type: ignore[misc]
    """aiokafka's, taking a partition's records as list slices where they were unpacked by
    the compiled module (``_PartitionRecords.take``)."""

    _partition_records: Any  # set by aiokafka's ``__init__``

    def getall(self, max_records: int | None = None) -> list[Any]:
        records = self._partition_records
        if type(records) is not _PartitionRecords or records._ready is None:
            return super().getall(max_records)  # type: ignore[no-any-return]
        if not self.check_assignment(self._topic_partition) or not self.has_more():
            return []
        taken, exhausted = records.take(max_records)
        self._update_position()
        if exhausted:
            self._partition_records = None
        return taken


_BATCH_HEAD = 61  # a v2 batch's fields before its records
_CODEC = 0x07  # the compression bits of its attributes


def _decompressed(buffer: bytes) -> bytes | None:
    """``buffer``'s complete v2 batches, each compressed one rewritten with its records
    uncompressed (its checksum is not redone: it was checked as fetched); ``None`` if a batch
    is in an older format or does not decompress."""
    out: list[bytes] = []
    at = 0
    while len(buffer) - at >= 12:
        end = at + 12 + int.from_bytes(buffer[at + 8 : at + 12], "big", signed=True)
        if end > len(buffer):
            break  # an incomplete batch at the end: the client leaves it too
        if end - at < _BATCH_HEAD or buffer[at + 16] != 2:
            return None
        batch = buffer[at:end]
        attributes = int.from_bytes(batch[21:23], "big")
        if attributes & _CODEC:
            try:  # aiokafka's own reader, in Python, decompresses it (an internal name)
                reader = _default_records._DefaultRecordBatchPy(batch)
                reader._maybe_uncompress()
                records = bytes(reader._buffer)
            except Exception:  # noqa: BLE001 - aiokafka's own error stands
                return None
            head = bytearray(batch[:_BATCH_HEAD])
            head[8:12] = (_BATCH_HEAD - 12 + len(records)).to_bytes(4, "big")
            head[21:23] = (attributes & ~_CODEC).to_bytes(2, "big")
            batch = bytes(head) + records
        out.append(batch)
        at = end
    return b"".join(out)


def _aborts(control: list[FetchedRecord]) -> bool | None:
    """Whether a control batch is an abort marker, as aiokafka's fetcher reads it; ``None``
    where aiokafka would raise (no record, or a key that is not a control record's)."""
    try:
        return bool(ControlRecord.parse(control[0].key) == ABORT_MARKER)
    except Exception:  # noqa: BLE001 - aiokafka reads it again and raises its own error
        return None


def _fetched_record(tp: Any, record: Any) -> FetchedRecord:
    key, value = record.key, record.value
    return _new(
        FetchedRecord,
        (
            tp.topic,
            tp.partition,
            record.offset,
            record.timestamp,
            record.timestamp_type,
            key,
            value,
            record.checksum,
            -1 if key is None else len(key),
            -1 if value is None else len(value),
            tuple(record.headers),
        ),
    )


# Its fetcher's names are internal: any other release keeps aiokafka's own unpacking.
_PARAMETERS = [
    "self", "tp", "records", "aborted_transactions", "fetch_offset", "key_deserializer",
    "value_deserializer", "check_crcs", "isolation_level",
]  # fmt: skip


def _fits(module: Any) -> bool:
    """Whether ``module`` (aiokafka's fetcher) has the internals the subclasses rely on."""
    parts: Any = getattr(module, "PartitionRecords", None)
    result: Any = getattr(module, "FetchResult", None)
    return (
        has_parameters(getattr(parts, "__init__", None), _PARAMETERS)
        and all(
            callable(getattr(parts, name, None))
            for name in ("_consumer_record", "_consume_aborted_up_to")
        )
        and has_parameters(getattr(result, "getall", None), ["self", "max_records"])
        and all(
            callable(getattr(result, name, None))
            for name in ("check_assignment", "has_more", "_update_position")
        )
        and getattr(module, "READ_COMMITTED", None) == 1
        and getattr(module, "MemoryRecords", None) is MemoryRecords
    )


def install() -> bool:
    """Unpack fetched records this way from now on, when the compiled module is installed
    and aiokafka is the release this was tested with; True when it is."""
    if native.batches_crc_ok is None:
        return False
    if _fetcher.PartitionRecords is _PartitionRecords:  # installed by an earlier consumer
        return True
    if not tested_release() or not _fits(_fetcher):
        return False
    _fetcher.MemoryRecords = _CheckedRecords
    _fetcher.PartitionRecords = _PartitionRecords
    _fetcher.FetchResult = _FetchResult  # its fetcher checks results by this name's identity
    return True
