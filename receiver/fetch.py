"""The safe fetcher: downloads a provider's result URL without trusting it.

A result URL comes from a third party, so it is treated like user input: http(s) only; the
host is resolved here and every address checked (loopback, private, link-local, metadata and
other non-global ranges refused unless ``fetch.allowed_networks`` admits them); the connection
goes to the checked address, so DNS cannot change its answer in between; each redirect is
checked the same way. The body is streamed to a spooled temporary file with its sha256 and
size computed on the way and a hard cap, and must start like an image.

Each request, once its address is checked, runs in a thread (:mod:`receiver.download`): the
body is read, hashed and spooled there, off the event loop, in reads of up to a mebibyte, so a
download costs a handful of large reads rather than a round trip per small socket read.
A body with a declared length is kept in memory while a process-wide budget allows, so it is
neither written to nor read back from a temporary file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import io
import ipaddress
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from . import netguard
from .config import FetchSettings
from .download import Abort, HttpxWire, Reply, SocketWire, Target, Timeouts, Wire
from .errors import FetchError, FetchExpired, FetchRefused

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SPOOL_BYTES = 512 * 1024  # per download in memory; larger bodies go to a temporary file
# Bodies of a declared length are held in memory whole while all of them together stay under
# this; the rest spool as above. Bounds memory whatever the concurrency.
MEMORY_BUDGET_BYTES = 32 * 1024 * 1024
MEMORY_BODY_BYTES = 4 * 1024 * 1024  # larger bodies always spool: a few hold the budget
DOWNLOAD_THREADS = 64
SNIFF_BYTES = 32
EXPIRED_STATUSES = {403, 404, 410}
TRANSIENT_STATUSES = {408, 425, 429}
REDIRECT_STATUSES = {301, 302, 303, 307, 308}


def sniff_image(head: bytes) -> tuple[str, str] | None:
    """(content type, extension) from an image's first bytes, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", "jpg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp", "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif", "gif"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "image/avif", "avif"
    return None


def redact_url(url: str) -> str:
    """The URL without query or fragment: signed result URLs carry credentials there."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        return "<unparseable URL>"
    shown = parsed.copy_with(query=None, fragment=None, username=None, password=None)
    return str(shown)


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class MemoryBudget:
    """Bytes of downloads held in memory at once, shared by every download of the process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.used -= size


@dataclass
class Fetched:
    """A downloaded image, positioned at 0, with what was learned while streaming it."""

    file: IO[bytes]
    size: int
    sha256: str
    content_type: str
    ext: str
    width: int | None
    height: int | None
    source_url: str
    _release: Callable[[], None] | None = field(default=None, repr=False)

    def facts(self) -> dict[str, Any]:
        """What the sidecar records of the download (``sidecar.build``'s keywords)."""
        return {
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
            "width": self.width,
            "height": self.height,
            "source_url": self.source_url,
        }

    def body(self) -> IO[bytes] | bytes:
        """The bytes themselves when held in memory (one write to a socket, no file reads),
        else the file."""
        if isinstance(self.file, io.BytesIO):
            return self.file.getvalue()
        return self.file

    def close(self) -> None:
        self.file.close()
        release, self._release = self._release, None
        if release is not None:
            release()


def _dimensions(file: IO[bytes], head: bytes) -> tuple[int | None, int | None]:
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        # A PNG's first chunk is its header, width and height at fixed places: no need for
        # Pillow's plugin machinery, which cost more per image than the rest of the checks.
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    from PIL import Image  # header only: Image.open does not decode pixels

    try:
        with Image.open(file) as img:
            width, height = img.size
            return int(width), int(height)
    except Exception:  # a format Pillow cannot read (AVIF without its plugin): no dimensions
        return None, None
    finally:
        file.seek(0)


class _Hop:
    """What one request in a thread gives back: a redirect to follow, or the image."""

    def __init__(self, location: str | None = None, fetched: Fetched | None = None) -> None:
        self.location = location
        self.fetched = fetched


class Fetcher:
    def __init__(
        self,
        settings: FetchSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.allowed = netguard.parse_networks(settings.allowed_networks)
        self.resolver = resolver or system_resolver
        self.budget = MemoryBudget(MEMORY_BUDGET_BYTES)
        self._threads = concurrent.futures.ThreadPoolExecutor(
            DOWNLOAD_THREADS, thread_name_prefix="fetch"
        )
        self.timeouts = Timeouts(connect=settings.connect_timeout, read=settings.read_timeout)
        self.wire: Wire = HttpxWire(transport) if transport is not None else SocketWire()

    async def aclose(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.wire.close()

    def _blocked(self, ip: IPAddress) -> str | None:
        return netguard.refusal(ip, self.allowed)

    async def _address(self, url: httpx.URL) -> str:
        """The one checked address to connect to for ``url``."""
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            candidates = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                candidates = await self.resolver(host, port)
            except (OSError, UnicodeError) as exc:
                raise FetchError(f"cannot resolve {host}: {exc}") from exc
        if not candidates:
            raise FetchError(f"cannot resolve {host}: no addresses")
        for candidate in candidates:
            ip = ipaddress.ip_address(candidate.split("%", 1)[0])
            why = self._blocked(ip)
            if why:
                raise FetchRefused(
                    f"{redact_url(str(url))} resolves to address {ip}, which is not public "
                    f"({why}); refused. To fetch from it anyway (tests, a private store), "
                    "add its network to fetch.allowed_networks"
                )
        return candidates[0]

    async def fetch(self, url: str) -> Fetched:
        """Download ``url``; FetchExpired, FetchRefused (permanent) or FetchError (retry)."""
        deadline = time.monotonic() + self.settings.total_timeout
        try:
            async with asyncio.timeout(self.settings.total_timeout):
                return await self._fetch(url, deadline)
        except TimeoutError:
            raise self._too_slow(url) from None

    def _too_slow(self, url: str) -> FetchError:
        return FetchError(
            f"{redact_url(url)}: not finished within {self.settings.total_timeout:g}s"
        )

    async def _fetch(self, url: str, deadline: float) -> Fetched:
        current = url
        for _ in range(self.settings.max_redirects + 1):
            try:
                target = httpx.URL(current)
            except Exception as exc:
                raise FetchRefused(f"not a valid URL: {exc}") from exc
            if target.scheme not in ("http", "https") or not target.host:
                raise FetchRefused(f"only http(s) URLs are fetched, not {redact_url(current)}")
            address = await self._address(target)
            hop_target = Target(target, address, redact_url(current))
            hop = await self._off_loop(hop_target, deadline)
            if hop.fetched is not None:
                return hop.fetched
            assert hop.location is not None
            current = str(target.join(hop.location))
        raise FetchRefused(f"{redact_url(url)}: more than {self.settings.max_redirects} redirects")

    async def _off_loop(self, target: Target, deadline: float) -> _Hop:
        """One request in a download thread. If the caller is cancelled (total timeout,
        shutdown) the thread stops at its next read and whatever it made is closed."""
        stop = Abort()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._threads, self._get, target, deadline, stop)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            future.add_done_callback(_discard)
            raise

    def _get(self, target: Target, deadline: float, stop: Abort) -> _Hop:
        """In a thread: send, then follow no redirect but report it, or read the image."""
        reply = self.wire.open(target, self.timeouts, stop)
        try:
            location = reply.header("location")
            if reply.status in REDIRECT_STATUSES and location:
                reply.drain()
                return _Hop(location=location)
            self._check_status(reply.status, target.shown)
            return _Hop(fetched=self._read(reply, target.shown, deadline, stop))
        finally:
            reply.close()

    def _check_status(self, status: int, shown: str) -> None:
        if 200 <= status < 300:
            return
        if status in EXPIRED_STATUSES:
            raise FetchExpired(f"{shown}: HTTP {status}; the result URL has expired or is gone")
        if status >= 500 or status in TRANSIENT_STATUSES:
            raise FetchError(f"{shown}: HTTP {status}")
        raise FetchRefused(f"{shown}: HTTP {status}")

    def _read(self, reply: Reply, url: str, deadline: float, stop: Abort) -> Fetched:
        cap = self.settings.max_bytes
        declared_text = reply.header("content-length")
        declared = int(declared_text) if declared_text and declared_text.isdigit() else None
        if declared is not None and declared > cap:
            raise FetchRefused(
                f"{redact_url(url)}: {declared} bytes is over the fetch.max_bytes cap of {cap}"
            )
        if declared is not None and declared <= MEMORY_BODY_BYTES and self.budget.take(declared):
            release = functools.partial(self.budget.give, declared)
            try:
                fetched = self._read_whole(reply, url, declared, stop, release)
            except BaseException:
                release()
                raise
            if fetched is not None:
                return fetched
            release()
        return self._read_chunks(reply, url, deadline, stop, cap)

    def _read_whole(
        self, reply: Reply, url: str, size: int, stop: Abort, release: Callable[[], None]
    ) -> Fetched | None:
        """A body of declared length, held in memory: read in one buffer, then checked and
        hashed (the hash releases the GIL). The deadline and cancellation stop it through
        ``stop``, which shuts the socket; the cap was checked against the declared length."""
        data = reply.whole(size)
        if data is None:
            return None
        if stop.is_set():
            raise FetchError(f"{redact_url(url)}: download abandoned")
        head = data[:SNIFF_BYTES]
        if sniff_image(head) is None:
            raise self._not_image(url, reply)
        digest = hashlib.sha256(data).hexdigest()
        return self._finish(io.BytesIO(data), head, size, digest, url, reply, release)

    def _read_chunks(
        self, reply: Reply, url: str, deadline: float, stop: Abort, cap: int
    ) -> Fetched:
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        try:
            digest = hashlib.sha256()
            size = 0
            head = b""
            for chunk in reply.chunks():
                if stop.is_set():
                    raise FetchError(f"{redact_url(url)}: download abandoned")
                if time.monotonic() > deadline:
                    raise self._too_slow(url)
                size += len(chunk)
                if size > cap:
                    raise FetchRefused(
                        f"{redact_url(url)}: larger than the fetch.max_bytes cap of {cap} bytes"
                    )
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                    if len(head) >= SNIFF_BYTES and sniff_image(head) is None:
                        raise self._not_image(url, reply)
                # Both release the GIL for large buffers: other downloads and the loop run on.
                digest.update(chunk)
                spool.write(chunk)
            return self._finish(spool, head, size, digest.hexdigest(), url, reply)
        except BaseException:
            spool.close()
            raise

    def _not_image(self, url: str, reply: Reply | None) -> FetchRefused:
        declared = (reply.header("content-type") or "?") if reply is not None else "?"
        return FetchRefused(
            f"{redact_url(url)}: the body is not an image (declared {declared}); "
            "PNG, JPEG, WebP, GIF and AVIF are accepted"
        )

    def _finish(
        self,
        spool: IO[bytes],
        head: bytes,
        size: int,
        sha256: str,
        url: str,
        reply: Reply | None,
        release: Callable[[], None] | None = None,
    ) -> Fetched:
        kind = sniff_image(head)
        if kind is None:
            raise self._not_image(url, reply)
        spool.seek(0)
        width, height = _dimensions(spool, head)
        return Fetched(
            file=spool,
            size=size,
            sha256=sha256,
            content_type=kind[0],
            ext=kind[1],
            width=width,
            height=height,
            source_url=redact_url(url),
            _release=release,
        )

    async def fetch_bytes(self, data: bytes, source: str) -> Fetched:
        """The same checks for bytes a provider returned inline."""
        cap = self.settings.max_bytes
        if len(data) > cap:
            raise FetchRefused(
                f"{source}: {len(data)} bytes is over the fetch.max_bytes cap of {cap}"
            )
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        try:
            spool.write(data)
            return self._finish(
                spool, data[:SNIFF_BYTES], len(data), hashlib.sha256(data).hexdigest(), source, None
            )
        except BaseException:
            spool.close()
            raise


def _discard(future: asyncio.Future[_Hop]) -> None:
    """Close what a download thread made for a caller that has gone."""
    if future.cancelled() or future.exception() is not None:
        return
    fetched = future.result().fetched
    if fetched is not None:
        fetched.close()
