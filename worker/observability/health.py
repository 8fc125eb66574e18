"""One small HTTP server on the worker's event loop: ``/metrics``, ``/healthz``, ``/readyz``,
and ``POST /-/reload`` (Prometheus' convention) when given a reload to call.

It runs on the same asyncio loop as the consumer, so an answer from ``/healthz`` proves the
loop is not blocked. ``/readyz`` answers 200 only when the worker is connected, in its group,
and owns partitions. ``/-/reload`` answers 200 and one line (the config version) when the
config was reloaded or did not change, 400 and one line (the reason) when it was refused; a
request's body is ignored. Plain asyncio streams: no web framework for four paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 8192
MAX_IGNORED_BODY = 65_536  # read and dropped, so that closing does not reset the connection
RELOAD_PATH = "/-/reload"
# Reload the config: (whether it was accepted, one line to answer with).
Reload = Callable[[], Awaitable[tuple[bool, str]]]


NOT_ALLOWED = ("405 Method Not Allowed", "text/plain", b"GET or HEAD only\n")


class HealthServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        host: str,
        port: int,
        reload: Reload | None = None,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.reload = reload
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_REQUEST_LINE
        )
        self.port = self._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
        paths = "/metrics, /healthz, /readyz" + (", /-/reload" if self.reload else "")
        log.info("serving %s on http://%s:%d", paths, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=10)
            length = 0
            while (line := await asyncio.wait_for(reader.readline(), timeout=10)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and value.strip().isdigit():
                    length = int(value)  # the only header needed: a body to skip
            if length:
                await asyncio.wait_for(reader.read(min(length, MAX_IGNORED_BODY)), timeout=10)
            if request.startswith(b"POST "):
                status, ctype, body = await self._post(request)
            else:
                status, ctype, body = self._respond(request)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            if request.startswith(b"HEAD "):
                body = b""  # the same head as GET, without the body (RFC 9110, 9.3.2)
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass  # a slow or broken client is its own problem
        except asyncio.CancelledError:
            # The loop is shutting down (this task is the connection's own, nothing awaits it):
            # ending cancelled, the task makes asyncio's stream callback log a traceback.
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _post(self, request: bytes) -> tuple[str, str, bytes]:
        parts = request.decode("latin-1").split()
        if len(parts) < 2 or self.reload is None or parts[1].split("?", 1)[0] != RELOAD_PATH:
            return NOT_ALLOWED
        accepted, line = await self.reload()
        status = "200 OK" if accepted else "400 Bad Request"
        return status, "text/plain", line.encode() + b"\n"

    def _respond(self, request: bytes) -> tuple[str, str, bytes]:
        parts = request.decode("latin-1").split()
        if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
            return NOT_ALLOWED
        path = parts[1].split("?", 1)[0]
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            if self.ready():
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", b"not ready\n"
        return "404 Not Found", "text/plain", b"not found\n"
