"""Bunny Storage over its HTTP API: PUT with the zone password, SHA-256 checksum header.

Bunny has no conditional PUT, so create-only is a HEAD-style GET of the listing-free path
followed by the PUT; a racing writer can only write the same bytes (same task, same index).
"""

from __future__ import annotations

import hashlib
import os
from typing import IO

import httpx

from ..config import BunnySettings
from ..errors import AlreadyExists, StoreError
from .base import Destination


class BunnyStore(Destination):
    type = "bunny"

    def __init__(
        self,
        name: str,
        settings: BunnySettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(name)
        self.settings = settings
        self.prefix = settings.prefix.strip("/")
        host = (
            f"{settings.region}.storage.bunnycdn.com" if settings.region else "storage.bunnycdn.com"
        )
        self.base = (settings.endpoint_url or f"https://{host}").rstrip("/")
        self.client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(60.0, connect=10.0),
            headers={"AccessKey": settings.password, "user-agent": "receiver"},
        )

    def _path(self, key: str) -> str:
        rel = f"{self.prefix}/{key}" if self.prefix else key
        return f"{self.settings.zone}/{rel}"

    def _url(self, key: str) -> str:
        return f"{self.base}/{self._path(key)}"

    def uri(self, key: str) -> str:
        if self.settings.cdn_url:
            rel = f"{self.prefix}/{key}" if self.prefix else key
            return f"{self.settings.cdn_url.rstrip('/')}/{rel}"
        return self._url(key)

    async def _send(self, method: str, key: str, **kw: object) -> httpx.Response:
        try:
            response = await self.client.request(method, self._url(key), **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise StoreError(f"bunny {method} {key}: {exc}") from exc
        if response.status_code in (401, 403):
            raise StoreError(f"bunny {method} {key}: access denied", permanent=True)
        if response.status_code >= 500 or response.status_code == 429:
            raise StoreError(f"bunny {method} {key}: HTTP {response.status_code}")
        return response

    async def exists(self, key: str) -> bool:
        response = await self._send("GET", key, headers={"Range": "bytes=0-0"})
        return response.status_code in (200, 206)

    async def put(
        self,
        key: str,
        body: IO[bytes] | bytes,
        *,
        size: int,
        content_type: str,
        metadata: dict[str, str] | None = None,
        sha256: str | None = None,
    ) -> str:
        if await self.exists(key):
            raise AlreadyExists(f"{self.uri(key)} already exists")
        data = body if isinstance(body, bytes) else body.read()
        checksum = (sha256 or hashlib.sha256(data).hexdigest()).upper()
        response = await self._send(
            "PUT",
            key,
            content=data,
            headers={"Checksum": checksum, "Content-Type": "application/octet-stream"},
        )
        if response.status_code not in (200, 201):
            raise StoreError(
                f"bunny PUT {key}: HTTP {response.status_code}",
                permanent=response.status_code < 500,
            )
        return self.uri(key)

    async def read(self, key: str) -> bytes:
        response = await self._send("GET", key)
        if response.status_code != 200:
            raise StoreError(f"bunny GET {key}: HTTP {response.status_code}")
        return response.content

    async def check(self) -> str:
        probe = f".receiver-check/{os.getpid()}-{os.urandom(4).hex()}"
        await self.put(probe, b"ok", size=2, content_type="text/plain")
        await self._send("DELETE", probe)
        return f"bunny zone {self.settings.zone} writable"

    async def close(self) -> None:
        await self.client.aclose()
