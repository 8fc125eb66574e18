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

aiokafka has no hook for either: ``install`` replaces the two names its fetcher module builds
fetched partitions from, with subclasses that change nothing else.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import aiokafka.consumer.fetcher as _fetcher
from aiokafka.record.memory_records import MemoryRecords

from worker.core import native
from worker.stream.internals import has_parameters, tested_release


class FetchedRecord(NamedTuple):
    """A consumed record: aiokafka's ``ConsumerRecord`` fields, in its order."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    checksum: int | None
    serialized_key_size: int
    serialized_value_size: int
    headers: tuple[tuple[str, bytes], ...]


_new = tuple.__new__  # skips the named tuple's ``__new__``, a Python function


class _CheckedRecords(MemoryRecords):  # type: ignore[misc]  # aiokafka is untyped here
    """Fetched bytes, and whether the compiled module found every batch's checksum right."""

    def __init__(self, buffer: bytes) -> None:
        super().__init__(buffer)
        check = native.batches_crc_ok
        self.verified = check is not None and check(buffer)


class _PartitionRecords(_fetcher.PartitionRecords):  # type: ignore[misc]
    """aiokafka's, without its per-batch check where the whole buffer was verified already,
    and with ``FetchedRecord``s where no deserializer is set (the worker sets none)."""

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
        if getattr(records, "verified", False):
            self._check_crcs = False
        if key_deserializer is None and value_deserializer is None:
            self._consumer_record = _fetched_record


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
    return (
        has_parameters(getattr(parts, "__init__", None), _PARAMETERS)
        and callable(getattr(parts, "_consumer_record", None))
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
    return True
