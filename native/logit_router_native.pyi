# Types of the compiled module (src/lib.rs); maturin ships this file with a py.typed marker.

from typing import Any

__version__: str

class Topic:
    def __init__(
        self,
        temperature: float,
        min_margin: float,
        min_top1: float | None,
        labels: list[bytes] | None,
        *,
        audit_threshold: float,
        shadow: tuple[float, float] | None,
        shadow_min_top1: float | None,
        max_bytes: int,
        max_classes: int,
        min_classes: int,
        max_id_chars: int,
        max_brackets: int,
        output_keys: list[bytes],
        pieces: list[bytes],
        slots: list[str],
    ) -> None: ...

class RecordBatch:
    def __init__(self, max_bytes: int, timestamp_ms: int, *, is_transactional: bool) -> None: ...
    def extend(self, outputs: list[Any], start: int) -> int: ...
    def size(self) -> int: ...
    def record_count(self) -> int: ...
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def _set_producer_state(
        self, producer_id: int, producer_epoch: int, base_sequence: int
    ) -> None: ...
    def _build(self) -> bytes: ...

class RouteJob:
    def __init__(
        self,
        topics: list[Topic],
        raws: list[bytes | None],
        partitions: list[int],
        offsets: list[int],
        timestamps: list[int | None],
        notify_fd: int,
    ) -> None: ...
    def done(self) -> bool: ...
    def results(
        self,
    ) -> list[tuple[bytes, bool, str | None, float, float, float, bool | None] | None]: ...

def route_many(
    topics: list[Topic],
    raws: list[bytes | None],
    partitions: list[int],
    offsets: list[int],
    timestamps: list[int | None],
) -> list[tuple[bytes, bool, str | None, float, float, float, bool | None] | None]: ...
def partition_index(key: bytes, partitions: int) -> int: ...
def partition_slots(
    outputs: list[Any], partitions: dict[str, list[int]]
) -> dict[tuple[str, int], list[Any]] | None: ...
def fsum(values: list[float]) -> float: ...
def format_float(v: float) -> bytes: ...
def batches_crc_ok(buf: bytes) -> bool: ...
def unpack_batches(
    buf: bytes, record_type: type, topic: str, partition: int
) -> list[tuple[int, int, int, bool, bool, list[Any]]] | None: ...
def output_columns(
    outputs: list[Any],
) -> tuple[
    list[tuple[str, str, str | None, str | None, int]], list[str], bytes, bytes, bytes, bytes
]: ...
def outbounds(
    records: list[Any],
    results: list[Any],
    kinds: tuple[type, type, type],
    texts: tuple[str, str, str, str],
) -> list[Any]: ...
