"""Checks that a file is a PNG a viewer will open: the signature, then a well-formed IHDR."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; AssertionError if the file is not a valid PNG."""
    data = path.read_bytes()
    assert data[:8] == SIGNATURE, "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, "the first chunk must be a 13-byte IHDR"
    body = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    assert zlib.crc32(kind + body) == crc, "IHDR checksum mismatch"
    width, height, depth, colour = struct.unpack(">IIBB", body[:10])
    assert width > 0 and height > 0 and depth in (1, 2, 4, 8, 16) and colour in (0, 2, 3, 4, 6)
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82", "no IEND chunk at the end"
    return width, height
