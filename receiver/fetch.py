"""The safe fetcher: downloads a provider's result URL without trusting it.

A result URL comes from a third party, so it is treated like user input: http(s) only; the
host is resolved here and every address checked (loopback, private, link-local, metadata and
other non-global ranges refused unless ``fetch.allowed_networks`` admits them); the connection
goes to the checked address, so DNS cannot change its answer in between; each redirect is
checked the same way. The body is streamed to a spooled temporary file with its sha256 and
size computed on the way and a hard cap, and must start like an image.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any

import httpx

from .config import FetchSettings
from .errors import FetchError, FetchExpired, FetchRefused

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SPOOL_BYTES = 512 * 1024  # per download in memory; larger bodies go to a temporary file
SNIFF_BYTES = 32
EXPIRED_STATUSES = {403, 404, 410}
TRANSIENT_STATUSES = {408, 425, 429}


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

    def close(self) -> None:
        self.file.close()


def _dimensions(file: IO[bytes]) -> tuple[int | None, int | None]:
    from PIL import Image  # header only: Image.open does not decode pixels

    try:
        with Image.open(file) as img:
            width, height = img.size
            return int(width), int(height)
    except Exception:  # a format Pillow cannot read (AVIF without its plugin): no dimensions
        return None, None
    finally:
        file.seek(0)


class Fetcher:
    def __init__(
        self,
        settings: FetchSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in settings.allowed_networks]
        self.resolver = resolver or system_resolver
        self.client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.read_timeout,
                pool=settings.connect_timeout,
            ),
            headers={"user-agent": "receiver", "accept": "image/*"},
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def _blocked(self, ip: IPAddress) -> bool:
        if any(ip in net for net in self.allowed):
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return self._blocked(ip.ipv4_mapped)
        return not ip.is_global or ip.is_multicast

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
            if self._blocked(ip):
                raise FetchRefused(
                    f"{redact_url(str(url))} resolves to address {ip}, which is not public "
                    "(loopback, private, link-local or reserved); refused"
                )
        return candidates[0]

    async def fetch(self, url: str) -> Fetched:
        """Download ``url``; FetchExpired, FetchRefused (permanent) or FetchError (retry)."""
        try:
            async with asyncio.timeout(self.settings.total_timeout):
                return await self._fetch(url)
        except TimeoutError:
            raise FetchError(
                f"{redact_url(url)}: not finished within {self.settings.total_timeout:g}s"
            ) from None

    async def _fetch(self, url: str) -> Fetched:
        current = url
        for _ in range(self.settings.max_redirects + 1):
            try:
                target = httpx.URL(current)
            except Exception as exc:
                raise FetchRefused(f"not a valid URL: {exc}") from exc
            if target.scheme not in ("http", "https") or not target.host:
                raise FetchRefused(f"only http(s) URLs are fetched, not {redact_url(current)}")
            address = await self._address(target)
            extensions: dict[str, Any] = {}
            if target.scheme == "https":
                extensions["sni_hostname"] = target.host
            direct = target.copy_with(host=address)
            headers = {"host": target.netloc.decode("ascii")}
            request = self.client.build_request(
                "GET", direct, headers=headers, extensions=extensions
            )
            try:
                response = await self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                raise FetchError(f"{redact_url(current)}: {type(exc).__name__}: {exc}") from exc
            try:
                if response.is_redirect and "location" in response.headers:
                    current = str(target.join(response.headers["location"]))
                    continue
                self._check_status(response, current)
                return await self._read(response, current)
            except httpx.TransportError as exc:
                raise FetchError(f"{redact_url(current)}: {type(exc).__name__}: {exc}") from exc
            finally:
                await response.aclose()
        raise FetchRefused(f"{redact_url(url)}: more than {self.settings.max_redirects} redirects")

    def _check_status(self, response: httpx.Response, url: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        shown = redact_url(url)
        if status in EXPIRED_STATUSES:
            raise FetchExpired(f"{shown}: HTTP {status}; the result URL has expired or is gone")
        if status >= 500 or status in TRANSIENT_STATUSES:
            raise FetchError(f"{shown}: HTTP {status}")
        raise FetchRefused(f"{shown}: HTTP {status}")

    async def _read(self, response: httpx.Response, url: str) -> Fetched:
        cap = self.settings.max_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise FetchRefused(
                f"{redact_url(url)}: {declared} bytes is over the fetch.max_bytes cap of {cap}"
            )
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        try:
            digest = hashlib.sha256()
            size = 0
            head = b""
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise FetchRefused(
                        f"{redact_url(url)}: larger than the fetch.max_bytes cap of {cap} bytes"
                    )
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                    if len(head) >= SNIFF_BYTES and sniff_image(head) is None:
                        raise self._not_image(url, response)
                digest.update(chunk)
                spool.write(chunk)
            return self._finish(spool, head, size, digest.hexdigest(), url, response)
        except BaseException:
            spool.close()
            raise

    def _not_image(self, url: str, response: httpx.Response | None) -> FetchRefused:
        declared = response.headers.get("content-type", "?") if response is not None else "?"
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
        response: httpx.Response | None,
    ) -> Fetched:
        kind = sniff_image(head)
        if kind is None:
            raise self._not_image(url, response)
        spool.seek(0)
        width, height = _dimensions(spool)
        return Fetched(
            file=spool,
            size=size,
            sha256=sha256,
            content_type=kind[0],
            ext=kind[1],
            width=width,
            height=height,
            source_url=redact_url(url),
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
