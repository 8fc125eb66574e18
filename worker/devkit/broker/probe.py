"""Readiness probe: a raw Kafka ApiVersions v0 request.

**Readiness** is a raw Kafka ApiVersions request over a socket, not a TCP
connect: Kafka binds its port long before it serves requests, and opens its
request handlers only once the broker is registered and unfenced. No Kafka
client library is needed (aiokafka may not be importable here).
"""

from __future__ import annotations

import socket
import struct


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def _api_versions_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if the broker answers ApiVersions without error."""
    correlation = 0x4C52  # arbitrary
    client_id = b"logit-router-probe"
    header = struct.pack(">hhih", 18, 0, correlation, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(header)) + header)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            body = _recv_exact(sock, size)
    except (OSError, struct.error):
        return False
    if len(body) < 6:
        return False
    got, error_code = struct.unpack(">ih", body[:6])
    return bool(got == correlation and error_code == 0)
