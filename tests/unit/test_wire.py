"""Produce requests written the worker's way (``worker.stream.wire``): the bytes a socket
receives are the ones aiokafka's own connection writes, for every produce request version
aiokafka has, and any other aiokafka release keeps its own connection."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiokafka
import aiokafka.conn as conn
import pytest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.produce import ProduceRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.stream import wire
from worker.stream.frames import FrameProtocol

STOCK: type[Any] = wire.Connection.__bases__[0]  # aiokafka's, whether installed or not
VERSIONS = [cls for cls in ProduceRequest._CLASSES if cls.API_VERSION >= 3]
SIZES = [0, 1, wire.OWN_BUFFER_FROM - 1, wire.OWN_BUFFER_FROM, 70_000]

records = st.one_of(st.none(), st.sampled_from(SIZES).map(os.urandom))
partitions = st.lists(st.tuples(st.integers(0, 99), records), max_size=4)
topics = st.lists(st.tuples(st.text(max_size=8), partitions), max_size=3)


def produce(topics: Any, transactional_id: str | None = "tx-1", acks: int = -1) -> ProduceRequest:
    return ProduceRequest(
        transactional_id=transactional_id, required_acks=acks, timeout=30_000, topics=topics
    )


@settings(max_examples=200, deadline=None)
@given(topics=topics, transactional_id=st.one_of(st.none(), st.text(max_size=5)))
def test_the_pieces_are_aiokafkas_encoding(topics: Any, transactional_id: str | None) -> None:
    for cls in VERSIONS:
        request_struct = produce(topics, transactional_id).build(cls)
        pieces = wire.pieces(request_struct)
        assert b"".join(pieces) == request_struct.encode()
        # Each large record batch is a piece of its own, the very object handed over.
        large = [
            r for _, ps in topics for _, r in ps if r is not None and len(r) >= wire.OWN_BUFFER_FROM
        ]
        assert [p for p in pieces if any(p is r for r in large)] == large


async def written(connection: type[Any], request: Any, *, correlation: int) -> bytes:
    """What a connection of this class writes to a real socket for ``request``."""
    received = bytearray()
    finished = asyncio.Event()

    async def collect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read())
        writer.close()
        finished.set()

    server = await asyncio.start_server(collect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    c = connection("127.0.0.1", port, client_id="logit-router-test")
    c._writer = writer
    c._versions = {ProduceRequest.API_KEY: (3, 7), MetadataRequest.API_KEY: (0, 5)}
    c._correlation_id = correlation
    expect_response = getattr(request, "required_acks", -1) != 0
    sent = c.send(request, expect_response=expect_response)
    if not expect_response:
        await sent
    else:
        [(correlation_id, _, future)] = c._requests
        assert correlation_id == correlation + 1
        future.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sent
    writer.close()
    await finished.wait()
    server.close()
    await server.wait_closed()
    return bytes(received)


@pytest.mark.parametrize("acks", [0, 1, -1])
async def test_a_socket_receives_what_aiokafka_would_write(acks: int) -> None:
    routed = [(0, os.urandom(300_000)), (2, b"x" * 100)]
    request = produce([("routed", routed), ("dlq", [(1, os.urandom(9_000))])], acks=acks)
    ours = await written(wire.Connection, request, correlation=41)
    theirs = await written(STOCK, request, correlation=41)
    assert len(ours) > 309_000
    assert ours == theirs


async def test_other_requests_are_aiokafkas_own() -> None:
    request = MetadataRequest(["routed", "dlq"])
    ours = await written(wire.Connection, request, correlation=7)
    assert ours == await written(STOCK, request, correlation=7)


def test_install_makes_aiokafka_connect_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conn, "AIOKafkaConnection", STOCK)
    monkeypatch.setattr(conn, "AIOKafkaProtocol", wire.AIOKAFKA_PROTOCOL)
    assert wire.install()
    assert conn.AIOKafkaConnection is wire.Connection  # what create_conn builds
    assert conn.AIOKafkaProtocol is FrameProtocol  # what its connect builds
    assert wire.install()  # again: already in place


def test_another_aiokafka_release_keeps_its_own_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conn, "AIOKafkaConnection", STOCK)
    monkeypatch.setattr(conn, "AIOKafkaProtocol", wire.AIOKAFKA_PROTOCOL)
    monkeypatch.setattr(aiokafka, "__version__", "0.15.0")
    assert not wire.install()
    assert conn.AIOKafkaConnection is STOCK
    assert conn.AIOKafkaProtocol is wire.AIOKAFKA_PROTOCOL
    monkeypatch.setattr(aiokafka, "__version__", "0.14.0")
    monkeypatch.setattr(STOCK, "_next_correlation_id", None)  # an internal renamed or gone
    assert not wire.install()
    assert conn.AIOKafkaConnection is STOCK
