"""``python -m bench.read_cost [FRAME_BYTES ...]``: the CPU the event loop spends receiving
Kafka response frames over loopback, through asyncio's ``StreamReader`` (aiokafka's way:
``readexactly`` the size, then the frame) and through ``worker.stream.frames.FrameProtocol``
(the worker's), side by side in one run, on uvloop, no broker.

A child process writes frames of FRAME_BYTES (default 100,000, 400,000 and 2,000,000), each
followed by three 60-byte frames, as a fetch response is followed by produce and commit
responses; the reader decodes each frame as aiokafka does (``io.BytesIO`` and a read of the
rest). The two readers take turns, ``REPEATS`` times each; the figure is the reader process's
CPU per large frame, the median of its turns.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import statistics
import struct
import sys
import time

import uvloop

from worker.stream.frames import FrameProtocol

MIB_PER_TURN = 600  # of large frames, per turn
REPEATS = 3
SMALL = struct.pack(">i", 60) + b"s" * 60


def _serve(listener: socket.socket, size: int, count: int) -> None:
    conn, _ = listener.accept()
    chunk = struct.pack(">i", size) + os.urandom(size) + SMALL * 3
    for _ in range(count):
        conn.sendall(chunk)
    conn.close()


def _decode(frame: bytes) -> int:
    data = io.BytesIO(frame)
    data.read(8)  # a response header
    return len(data.read())


async def _stream_reader(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**16)
    got = 0
    try:
        while True:
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            got += _decode(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        writer.close()
        return got


async def _frame_protocol(port: int) -> int:
    loop = asyncio.get_running_loop()
    protocol = FrameProtocol(loop.create_future(), asyncio.StreamReader(loop=loop), loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, "127.0.0.1", port)
    got = 0
    try:
        while True:
            for frame in await protocol.frames():
                got += _decode(frame)
    except EOFError:
        transport.close()
        return got


READERS = {"stream reader": _stream_reader, "frame protocol": _frame_protocol}


def _turn(reader: str, size: int, count: int) -> float:
    """CPU seconds of this process receiving ``count`` large frames with ``reader``."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the writer
        try:
            _serve(listener, size, count)
        finally:
            os._exit(0)
    listener.close()
    started = time.process_time()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        got = runner.run(READERS[reader](port))
    cpu = time.process_time() - started
    os.waitpid(pid, 0)
    expected = count * (size - 8 + 3 * 52)
    if got != expected:
        raise RuntimeError(f"{reader}: {got} bytes decoded, {expected} sent")
    return cpu


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or [100_000, 400_000, 2_000_000]
    print(f"{'frame bytes':>12} {'stream reader':>15} {'frame protocol':>15} {'ratio':>6}")
    for size in sizes:
        count = max(1, MIB_PER_TURN * 2**20 // size)
        per_frame: dict[str, list[float]] = {name: [] for name in READERS}
        for _ in range(REPEATS):
            for name in READERS:
                per_frame[name].append(_turn(name, size, count) / count * 1e6)
        stream, frames = (statistics.median(per_frame[name]) for name in READERS)
        print(f"{size:>12,} {stream:>12.0f} us {frames:>12.0f} us {frames / stream:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
