"""Small real images made in code, unique per task, so archived bytes can be checked."""

from __future__ import annotations

import hashlib
import random
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def render_png(seed: str, width: int = 64, height: int = 64, target_bytes: int = 0) -> bytes:
    """An RGB PNG whose pixels derive from ``seed``.

    With ``target_bytes`` the image is grown with incompressible noise rows until it is at
    least that large, which the size-cap and throughput tests need."""
    digest = hashlib.sha256(seed.encode()).digest()
    rng = random.Random(digest)
    if target_bytes > 0:
        # 3 bytes per pixel, stored uncompressed: choose a height that reaches the target.
        width = max(width, 512)
        height = max(height, target_bytes // (width * 3) + 1)
    base = bytes(digest[:3])
    rows = []
    for y in range(height):
        if target_bytes > 0:
            row = rng.randbytes(width * 3)
        else:
            shade = bytes((c + y * 3) % 256 for c in base)
            row = shade * width
        rows.append(b"\x00" + row)
    raw = b"".join(rows)
    level = 0 if target_bytes > 0 else 6
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"tEXt", b"Comment\x00" + seed.encode()[:200])
        + _chunk(b"IDAT", zlib.compress(raw, level))
        + _chunk(b"IEND", b"")
    )
