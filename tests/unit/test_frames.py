"""Responses received the worker's way (``worker.stream.frames``): whatever sizes the socket's
reads come in, every frame is handed over whole, in order, byte for byte, and a connection that
ends within a frame or sends an impossible size ends the reader with an error."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.stream.frames import KEEP_UP_TO, OWN_BUFFER_FROM, SCRATCH, FrameError, FrameProtocol

SIZES = [0, 1, 3, OWN_BUFFER_FROM - 5, OWN_BUFFER_FROM - 4, OWN_BUFFER_FROM, SCRATCH, 200_000]


def framed(bodies: list[bytes]) -> bytes:
    return b"".join(struct.pack(">i", len(b)) + b for b in bodies)


def protocol(loop: asyncio.AbstractEventLoop) -> FrameProtocol:
    return FrameProtocol(loop.create_future(), asyncio.StreamReader(loop=loop), loop=loop)


def receive(p: FrameProtocol, data: bytes, reads: list[int]) -> None:
    """Feed ``data`` as a transport would: each read at most the buffer offered, and at most
    the next of ``reads`` (cycled)."""
    at, i = 0, 0
    while at < len(data):
        buffer = p.get_buffer(-1)
        n = min(len(buffer), reads[i % len(reads)], len(data) - at)
        assert n > 0
        buffer[:n] = data[at : at + n]
        p.buffer_updated(n)
        at += n
        i += 1


bodies = st.lists(
    st.one_of(st.sampled_from(SIZES), st.integers(0, 70_000)).map(os.urandom), max_size=12
)


@settings(max_examples=150, deadline=None)
@given(bodies=bodies, reads=st.lists(st.integers(1, 300_000), min_size=1, max_size=6))
def test_every_frame_whole_and_in_order_whatever_the_reads(
    bodies: list[bytes], reads: list[int]
) -> None:
    async def run() -> list[bytes]:
        p = protocol(asyncio.get_running_loop())
        receive(p, framed(bodies), reads)
        p.connection_lost(None)
        got: list[bytes] = []
        with pytest.raises(EOFError, match="end of stream"):
            while True:
                got += await p.frames()
        return got

    assert asyncio.run(run()) == bodies


def test_a_reader_waiting_is_woken_by_the_frame() -> None:
    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        p = protocol(loop)
        waiting = asyncio.create_task(p.frames())
        await asyncio.sleep(0)
        assert not waiting.done()
        receive(p, framed([b"abc"]), [2])
        return await asyncio.wait_for(waiting, 1)

    assert asyncio.run(run()) == [b"abc"]


@pytest.mark.parametrize("cut", [2, 4 + 10, 4 + OWN_BUFFER_FROM + 1])
def test_a_connection_ending_within_a_frame_is_an_error(cut: int) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        p = protocol(loop)
        closed = p._get_close_waiter(None)
        receive(p, framed([b"x" * 5, os.urandom(OWN_BUFFER_FROM * 2)])[: 9 + cut], [7_000])
        p.connection_lost(None)
        assert closed.done()
        assert await p.frames() == [b"x" * 5]
        with pytest.raises(FrameError, match="within a frame"):
            await p.frames()

    asyncio.run(run())


def test_a_transport_error_is_raised_after_the_frames_before_it() -> None:
    async def run() -> None:
        p = protocol(asyncio.get_running_loop())
        receive(p, framed([b"ok"]), [100])
        p.connection_lost(ConnectionResetError("reset by peer"))
        assert await p.frames() == [b"ok"]
        with pytest.raises(ConnectionResetError, match="reset by peer"):
            await p.frames()
        assert p._reader.exception() is not None  # what aiokafka's ``connected()`` reads

    asyncio.run(run())


def test_a_negative_size_is_refused() -> None:
    async def run() -> None:
        p = protocol(asyncio.get_running_loop())
        receive(p, struct.pack(">i", -7) + b"rest", [100])
        with pytest.raises(FrameError, match="-7 bytes"):
            await p.frames()

    asyncio.run(run())


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_frames_over_a_real_socket(loop_factory: type[asyncio.AbstractEventLoop]) -> None:
    """A server writes frames in odd pieces; the client, on asyncio's loop and on uvloop,
    receives them through the transport's buffered reads."""
    sent = [os.urandom(n) for n in (0, 10, OWN_BUFFER_FROM, 3 * SCRATCH + 7, 5, 1_000_000, 1)]

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = framed(sent)
        for at in range(0, len(data), 50_001):
            writer.write(data[at : at + 50_001])
            await writer.drain()
        writer.close()

    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        closed = loop.create_future()
        p = FrameProtocol(closed, asyncio.StreamReader(loop=loop), loop=loop)
        transport, _ = await loop.create_connection(lambda: p, "127.0.0.1", port)
        got: list[bytes] = []
        with pytest.raises(EOFError):
            while True:
                got += await p.frames()
        await closed
        transport.close()
        server.close()
        await server.wait_closed()
        return got

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(run()) == sent


def test_a_writer_waits_while_the_transport_is_paused() -> None:
    """``StreamWriter.drain`` waits through the protocol, as with asyncio's own."""

    async def run() -> None:
        p = protocol(asyncio.get_running_loop())
        await p._drain_helper()  # not paused: at once
        p.pause_writing()
        draining = asyncio.create_task(p._drain_helper())
        await asyncio.sleep(0.01)
        assert not draining.done()
        p.resume_writing()
        await asyncio.wait_for(draining, 1)
        p.pause_writing()
        draining = asyncio.create_task(p._drain_helper())
        await asyncio.sleep(0)
        p.connection_lost(ConnectionResetError("gone"))
        with pytest.raises(ConnectionResetError, match="gone"):
            await draining
        with pytest.raises(ConnectionResetError):
            await p._drain_helper()

    asyncio.run(run())


def test_a_large_frame_buffer_is_kept_up_to_its_bound() -> None:
    """The buffer large frames are received into is kept for the next one (frames handed
    over are copies, so a later frame never changes an earlier one), except past
    ``KEEP_UP_TO``."""

    async def run() -> None:
        p = protocol(asyncio.get_running_loop())
        first, second = os.urandom(50_000), os.urandom(30_000)
        receive(p, framed([first]), [1000])
        kept = p._kept
        receive(p, framed([second]), [1000])
        assert p._kept is kept
        huge = os.urandom(KEEP_UP_TO + 1)
        receive(p, framed([huge]), [SCRATCH, 1 << 20])
        assert p._kept is kept and len(kept) == 50_000
        assert await p.frames() == [first, second, huge]

    asyncio.run(run())
