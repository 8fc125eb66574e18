"""How Kafka responses come off the socket: each frame received straight into a buffer, not
through asyncio's stream reader.

A Kafka response is a frame: a 4-byte big-endian size, then that many bytes. aiokafka reads
them through an ``asyncio.StreamReader``: the transport hands over each read as new ``bytes``,
the reader appends them to a buffer that grows by reallocation, and ``readexactly`` copies the
frame out again and moves what follows it to the front. A fetch response of a few MiB was copied
three to four times before aiokafka decoded it (what that cost the event loop:
docs/performance.md).

``FrameProtocol`` is a buffered protocol instead: the transport reads into the buffer it hands
out. Sizes and small frames are read into one scratch buffer; the rest of a frame of
``OWN_BUFFER_FROM`` bytes or more is read into a buffer of the connection's that is kept for the
next one (a new buffer per frame cost its allocation and first touch every time). Each frame
is then copied out once, into the ``bytes`` aiokafka decodes without copying it again. Frames
wait in arrival order for ``frames()``.

It keeps what aiokafka's connection expects of its protocol and reader: the writer's flow
control (``_drain_helper``, as asyncio's ``FlowControlMixin``, which cannot be a base here:
uvloop hands a ``Protocol`` its reads as ``bytes`` even when it is also a buffered one), the
reader's end-of-file and error for ``connected()``, and the connection's closed future.
``worker.stream.wire`` puts it in place of aiokafka's.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

# Bytes read at a time while no large frame is in progress. Small, since the part of a large
# frame read with its size is copied into the frame's buffer; large enough for the small
# responses (produce, commit, heartbeat) that come several at a time.
SCRATCH = 16_384
# A frame at least this large is read into a buffer of its own; a smaller one is copied out of
# the scratch buffer, as one more buffer would cost more than the copy.
OWN_BUFFER_FROM = 4_096
# The large-frame buffer is kept for the next frame up to this size; a larger frame (fetches
# are bounded by ``kafka.max_partition_fetch_bytes`` per partition) gets one of its own.
KEEP_UP_TO = 8 * 1024 * 1024
_SIZE = 4


class FrameError(EOFError):
    """The connection ended within a frame, or sent a size no frame can have."""


class FrameProtocol(asyncio.BufferedProtocol):
    """Receives Kafka's size-prefixed frames; ``frames()`` hands them over in order."""

    def __init__(
        self, closed_fut: asyncio.Future[None], reader: asyncio.StreamReader, *, loop: Any
    ) -> None:
        self._loop = loop
        self._paused = False  # writing, by the transport's flow control
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        self._connection_lost = False
        self._closed_fut = closed_fut  # the connection's: done once the transport is gone
        self._reader = reader  # kept only for its end-of-file and error (``connected()``)
        self._scratch = bytearray(SCRATCH)
        self._view = memoryview(self._scratch)
        self._start = 0  # received, not yet taken out of the scratch buffer: [start, end)
        self._end = 0
        self._kept = bytearray()  # for large frames, grown to the largest up to KEEP_UP_TO
        self._frame: memoryview | None = None  # a large frame being received, and how much
        self._filled = 0
        self._ready: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None  # how the connection ended, once it has

    # --- the transport's side --------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._frame is not None:
            return self._frame[self._filled :]
        if self._end == SCRATCH:  # a partial size or small frame at the end: to the front
            held = self._end - self._start
            self._scratch[:held] = self._view[self._start : self._end]
            self._start, self._end = 0, held
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._frame is not None:
            self._filled += nbytes
            if self._filled == len(self._frame):
                self._deliver(bytes(self._frame))
                self._frame = None
            return
        self._end += nbytes
        self._take()

    def _take(self) -> None:
        """Take every whole frame out of the scratch buffer; start receiving a large one."""
        scratch, start, end = self._scratch, self._start, self._end
        while end - start >= _SIZE:
            size = int.from_bytes(scratch[start : start + _SIZE], "big", signed=True)
            if size < 0:
                self._fail(FrameError(f"a frame cannot have {size} bytes"))
                return
            body = start + _SIZE
            if end - body >= size:
                self._deliver(bytes(self._view[body : body + size]))
                start = body + size
                continue
            if size < OWN_BUFFER_FROM:
                break  # the rest of a small frame is still to come
            self._frame, self._filled = self._buffer(size), end - body
            self._frame[: self._filled] = self._view[body:end]
            start = end
            break
        if start == end:
            start = end = 0
        self._start, self._end = start, end

    def _buffer(self, size: int) -> memoryview:
        """Where a large frame of ``size`` bytes is received: the kept buffer, or one of its
        own past ``KEEP_UP_TO``."""
        if size > KEEP_UP_TO:
            return memoryview(bytearray(size))
        if len(self._kept) < size:
            self._kept = bytearray(size)
        return memoryview(self._kept)[:size]

    def _deliver(self, frame: bytes) -> None:
        self._ready.append(frame)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        return False  # the transport closes itself, then ``connection_lost``

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self._reader.feed_eof()
        else:
            self._reader.set_exception(exc)
        within = self._frame is not None or self._end > self._start
        self._frame = None
        self._fail(
            exc
            if exc is not None
            else FrameError("the connection closed within a frame" if within else "end of stream")
        )
        self._connection_lost = True
        for waiter in self._drain_waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the writer's flow control (``StreamWriter.drain``) ---------------------------------

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _drain_helper(self) -> None:
        if self._connection_lost:
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            self._drain_waiters.remove(waiter)

    def _get_close_waiter(self, stream: Any) -> asyncio.Future[None]:
        return self._closed_fut

    # --- the connection's side -------------------------------------------------------------

    async def frames(self) -> list[bytes]:
        """Every frame received and not yet taken, oldest first, once there is one; after the
        last frame, raise how the connection ended (an ``EOFError`` or the transport's
        ``OSError``, as aiokafka's reader would)."""
        while not self._ready:
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        taken = list(self._ready)
        self._ready.clear()
        return taken
