"""A consumed record as the router reads it (``records.ConsumedRecord``), for unit tests that
route records without a broker. A plain class, so that a weak reference can watch it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Consumed:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
