"""A result-URL origin for the archive benchmarks: ``python -m bench.origin --port N``.

``GET /s{size}/n{count}/`` is an HTML listing (what rclone's http backend reads) of
``img_00000.png`` … ; each image is exactly ``size`` bytes: a PNG signature, an IHDR, a text
chunk with the image's number (so every file has its own sha256) and one IDAT chunk of random
bytes shared by all images of that size. Bodies come from memory, so the origin costs little
CPU beside the contenders; HEAD gives Content-Length and Last-Modified.
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = re.compile(r"^/s(\d+)/n(\d+)/(?:img_(\d{5})\.png)?$")
SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"
_lock = threading.Lock()
_bodies: dict[int, tuple[bytes, bytes]] = {}


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _head(index: int) -> bytes:
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 1024, 1024, 8, 2, 0, 0, 0))
    text = chunk(b"tEXt", b"bench\x00" + f"{index:08d}".encode())
    return SIGNATURE + ihdr + text


HEAD_BYTES = len(_head(0))
TAIL = chunk(b"IEND", b"")


def parts(size: int, index: int) -> tuple[bytes, bytes, bytes]:
    """(per-image head, shared IDAT chunk, IEND) adding up to ``size`` bytes."""
    with _lock:
        found = _bodies.get(size)
        if found is None:
            payload = os.urandom(size - HEAD_BYTES - 12 - len(TAIL))
            found = (chunk(b"IDAT", payload), TAIL)
            _bodies[size] = found
    return _head(index), found[0], found[1]


def image_bytes(size: int, index: int) -> bytes:
    return b"".join(parts(size, index))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bench-origin"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _route(self, body: bool) -> None:
        match = PATH.match(self.path.split("?", 1)[0])
        if match is None:
            self.send_error(404)
            return
        size, count = int(match.group(1)), int(match.group(2))
        if match.group(3) is None:
            links = "".join(
                f'<a href="img_{i:05d}.png">img_{i:05d}.png</a>\n' for i in range(count)
            )
            page = f"<html><body>\n{links}</body></html>\n".encode()
            self._headers(len(page), "text/html; charset=utf-8")
            if body:
                self.wfile.write(page)
            return
        index = int(match.group(3))
        if index >= count or size < HEAD_BYTES + 64:
            self.send_error(404)
            return
        pieces = parts(size, index)
        self._headers(size, "image/png")
        if body:
            for piece in pieces:
                self.wfile.write(piece)

    def _headers(self, length: int, content_type: str) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(length))
        self.send_header("last-modified", LAST_MODIFIED)
        self.end_headers()

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    Server(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
