"""The HTTP endpoints on a real socket (no broker): what a scraper, a liveness probe and a
readiness probe see, and that broken or silent clients do not stop it from answering."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from worker.core.settings import Settings
from worker.observability.health import HealthServer


class Probe:
    def __init__(self) -> None:
        self.ready = False


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[HealthServer, Probe]]:
    """A server on the test's own event loop (an async fixture would run on another)."""
    registry = CollectorRegistry()
    Counter("logit_router_demo_total", "A counter for the test.", registry=registry).inc(3)
    probe = Probe()
    http = HealthServer(registry, lambda: probe.ready, "127.0.0.1", 0)
    await http.start()
    try:
        yield http, probe
    finally:
        await http.stop()


async def request(port: int, raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer (the server closes the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status_line, headers, body


async def get(port: int, path: str, method: str = "GET") -> tuple[str, dict[str, str], bytes]:
    return await request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def test_metrics_are_the_registry_in_prometheus_text_format() -> None:
    async with serving() as (http, _):
        status, headers, body = await get(http.port, "/metrics")
        assert status == "HTTP/1.1 200 OK"
        assert headers["Content-Type"] == CONTENT_TYPE_LATEST
        assert int(headers["Content-Length"]) == len(body)
        assert b"logit_router_demo_total 3.0" in body


async def test_healthz_answers_and_readyz_follows_readiness() -> None:
    async with serving() as (http, probe):
        assert (await get(http.port, "/healthz"))[0] == "HTTP/1.1 200 OK"
        status, _, body = await get(http.port, "/readyz")
        assert (status, body) == ("HTTP/1.1 503 Service Unavailable", b"not ready\n")
        probe.ready = True
        status, _, body = await get(http.port, "/readyz?verbose=1")
        assert (status, body) == ("HTTP/1.1 200 OK", b"ready\n")
        probe.ready = False
        assert (await get(http.port, "/readyz"))[0] == "HTTP/1.1 503 Service Unavailable"


async def test_head_has_the_get_headers_and_no_body() -> None:
    async with serving() as (http, _):
        _, got, body = await get(http.port, "/metrics")
        status, headers, empty = await get(http.port, "/metrics", method="HEAD")
        assert status == "HTTP/1.1 200 OK"
        assert empty == b""
        assert headers["Content-Length"] == got["Content-Length"] == str(len(body))


async def test_other_paths_and_methods_are_refused() -> None:
    async with serving() as (http, _):
        assert (await get(http.port, "/admin"))[0] == "HTTP/1.1 404 Not Found"
        assert (await get(http.port, "/metrics", method="POST"))[0] == (
            "HTTP/1.1 405 Method Not Allowed"
        )
        assert (await request(http.port, b"\r\n\r\n"))[0] == "HTTP/1.1 405 Method Not Allowed"


async def test_broken_and_silent_clients_do_not_stop_the_answers() -> None:
    async with serving() as (http, _):
        # A client that connects and says nothing, one that sends an over-long request line,
        # and one that hangs up half way: the next probe is still answered.
        _, silent = await asyncio.open_connection("127.0.0.1", http.port)
        reader, long_line = await asyncio.open_connection("127.0.0.1", http.port)
        long_line.write(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")
        await long_line.drain()
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # closed, no answer
        _, rude = await asyncio.open_connection("127.0.0.1", http.port)
        rude.write(b"GET /metr")
        rude.close()
        try:
            assert (await get(http.port, "/healthz"))[0] == "HTTP/1.1 200 OK"
        finally:
            for w in (silent, long_line):
                w.close()


async def test_loopback_by_default_and_the_real_port_when_0_is_asked() -> None:
    http_settings = Settings(topics={"t": {}}).http
    assert (http_settings.host, http_settings.port) == ("127.0.0.1", 9464)
    http = HealthServer(CollectorRegistry(), lambda: True, http_settings.host, 0)
    await http.start()
    try:
        assert http.port != 0
        assert http._server is not None
        addresses = {sock.getsockname()[0] for sock in http._server.sockets}
        assert addresses == {"127.0.0.1"}
        assert (await get(http.port, "/healthz"))[0] == "HTTP/1.1 200 OK"
    finally:
        await http.stop()


async def test_post_reload_answers_with_what_the_reload_said_and_ignores_the_body() -> None:
    answers = [(True, "applied sha256:abc"), (False, "refused: needs a restart: kafka.group_id")]
    calls = 0

    async def reload() -> tuple[bool, str]:
        nonlocal calls
        calls += 1
        return answers[calls - 1]

    http = HealthServer(CollectorRegistry(), lambda: True, "127.0.0.1", 0, reload)
    await http.start()
    try:
        body = b'{"ignored": true}'
        raw = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )
        status, headers, got = await request(http.port, raw)
        assert (status, got) == ("HTTP/1.1 200 OK", b"applied sha256:abc\n")
        assert headers["Content-Type"] == "text/plain"
        status, _, got = await get(http.port, "/-/reload", method="POST")
        assert status == "HTTP/1.1 400 Bad Request"
        assert got == b"refused: needs a restart: kafka.group_id\n"
        # Only POST reloads, and only that path takes a POST.
        assert (await get(http.port, "/-/reload"))[0] == "HTTP/1.1 404 Not Found"
        assert (await get(http.port, "/healthz", method="POST"))[0] == (
            "HTTP/1.1 405 Method Not Allowed"
        )
        assert calls == 2
    finally:
        await http.stop()


async def test_without_a_reload_post_is_refused() -> None:
    async with serving() as (http, _):
        assert (await get(http.port, "/-/reload", method="POST"))[0] == (
            "HTTP/1.1 405 Method Not Allowed"
        )
