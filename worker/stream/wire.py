"""How requests go onto the socket and responses come off it, with fewer copies.

Produce requests are written with their record batches as they are, not copied.

aiokafka encodes a request into one ``bytes`` by nested joins (each array, each struct, the
header, the size prefix), so every record batch of a produce request was copied six times
before it reached the socket (what that cost the event loop: docs/performance.md). Here a
produce request is encoded as a list of pieces: the small fields joined, each large record
batch kept as the object it is, and the whole written with the transport's ``writelines``
(one ``writev`` under uvloop). The bytes on the wire are the ones aiokafka writes; every
other request is left to aiokafka.

Responses are received by ``worker.stream.frames.FrameProtocol``, each frame straight into a
buffer of its size, and handed to aiokafka's own decoding (``_handle_frame``) as they come.

aiokafka has no hook for either: ``install`` replaces the connection class its ``create_conn``
builds with a subclass whose ``send`` differs for produce requests only and whose reader takes
whole frames, and the protocol its ``connect`` builds with ``FrameProtocol``.
"""

from __future__ import annotations

import struct
from typing import Any

import aiokafka.conn as _conn
import aiokafka.errors as errors
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.protocol.types import Array, Bytes, Int32, Schema
from aiokafka.util import wait_for

from worker.stream.frames import FrameProtocol
from worker.stream.internals import has_parameters, tested_release

# A record batch at least this large is written from its own buffer; smaller pieces are
# joined, since a copy of a few hundred bytes costs less than one more buffer to write.
OWN_BUFFER_FROM = 4096

_size = struct.Struct(">i").pack
AIOKAFKA_PROTOCOL: Any = _conn.AIOKafkaProtocol  # aiokafka's own: this module installs its own


def pieces(request_struct: Any) -> list[Any]:
    """The request's encoding as pieces whose concatenation is ``request_struct.encode()``."""
    out: list[Any] = []
    small: list[bytes] = []
    schema = request_struct.SCHEMA
    _walk(schema, [getattr(request_struct, name) for name in schema.names], out, small)
    if small:
        out.append(b"".join(small))
    return out


def _walk(typ: Any, value: Any, out: list[Any], small: list[bytes]) -> None:
    # Exact types only: a subclass (a compact array, say) encodes differently, so it is left
    # to its own ``encode``.
    if type(typ) is Schema:
        for field, item in zip(typ.fields, value, strict=True):
            _walk(field, item, out, small)
    elif type(typ) is Array and value is not None:
        small.append(Int32.encode(len(value)))
        for item in value:
            _walk(typ.array_of, item, out, small)
    elif typ is Bytes and value is not None and len(value) >= OWN_BUFFER_FROM:
        small.append(Int32.encode(len(value)))
        out.append(b"".join(small))
        small.clear()
        out.append(value)
    else:
        small.append(typ.encode(value))


class Connection(_conn.AIOKafkaConnection):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's connection, writing produce requests without copying their record batches
    and reading whole frames from a ``FrameProtocol``."""

    @staticmethod
    async def _read(self_ref: Any) -> None:
        # As aiokafka's: only a weak reference is held between frames, so a connection that
        # is dropped can be collected; what ends the loop ends the task, and the task's done
        # callback closes the connection.
        self = self_ref()
        if self is None:
            return
        protocol = self._protocol
        del self
        if not isinstance(protocol, FrameProtocol):
            raise TypeError(f"the connection's protocol is a {type(protocol).__name__}")
        while True:
            for frame in await protocol.frames():
                self = self_ref()
                if self is None:
                    return
                self._handle_frame(frame)
                del self

    def send(self, request: Any, expect_response: bool = True) -> Any:
        if not isinstance(request, ProduceRequest) or self._writer is None:
            return super().send(request, expect_response=expect_response)
        request_struct = request.prepare(self._versions)
        correlation_id = self._next_correlation_id()
        header = request_struct.build_request_header(
            correlation_id=correlation_id, client_id=self._client_id
        ).encode()
        body = pieces(request_struct)
        size = len(header) + sum(map(len, body))
        try:
            self._writer.writelines([_size(size) + header, *body])
        except OSError as err:
            self.close(reason=_conn.CloseReason.CONNECTION_BROKEN)
            raise errors.KafkaConnectionError(
                f"Connection at {self._host}:{self._port} broken: {err}"
            ) from err
        if not expect_response:
            return self._writer.drain()
        fut = self._loop.create_future()
        self._requests.append((correlation_id, request_struct, fut))
        return wait_for(fut, self._request_timeout)


# ``send`` and ``_read`` mirror aiokafka's, whose names are internal: any other release keeps
# its own.
def _fits(module: Any) -> bool:
    """Whether ``module`` (aiokafka's ``conn``) has the internals ``Connection`` uses."""
    cls: Any = getattr(module, "AIOKafkaConnection", None)
    return (
        has_parameters(getattr(cls, "send", None), ["self", "request", "expect_response"])
        and has_parameters(getattr(cls, "_read", None), ["self_ref"])
        and callable(getattr(cls, "_handle_frame", None))
        and (
            getattr(module, "AIOKafkaProtocol", None) is FrameProtocol
            or has_parameters(
                getattr(module, "AIOKafkaProtocol", None), ["closed_fut", "args", "loop", "kw"]
            )
        )
        and callable(getattr(cls, "_next_correlation_id", None))
        and callable(getattr(module, "create_conn", None))
        and hasattr(getattr(module, "CloseReason", None), "CONNECTION_BROKEN")
    )


def install() -> bool:
    """Write requests and read responses this way from now on, when aiokafka is the release
    this was tested with; True when it is."""
    if _conn.AIOKafkaConnection is Connection:
        return True
    if not tested_release() or not _fits(_conn):
        return False
    _conn.AIOKafkaConnection = Connection
    _conn.AIOKafkaProtocol = FrameProtocol
    return True
