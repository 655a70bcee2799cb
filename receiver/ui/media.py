"""Thumbnails and full images for the console.

A thumbnail (WebP, at most ``console.thumbnail_px`` on its longer side) is made with Pillow on
first request and stored in the image's own destination under ``_thumbs/``: archive keys start
with a four-digit year, so the two never collide, and every replica finds the cached one.
Full images come from the destination: a redirect to a short-lived presigned URL where the
store can presign, otherwise streamed through the receiver.
"""

from __future__ import annotations

import asyncio
import io
import logging

import anyio
from PIL import Image, ImageOps

from ..destinations import Destination
from ..errors import AlreadyExists, StoreError
from ..models import StoredObject

log = logging.getLogger(__name__)
THUMBS = "_thumbs/"
IMMUTABLE = "private, max-age=31536000, immutable"


def thumb_key(obj: StoredObject) -> str:
    stem = obj.key.rsplit(".", 1)[0]
    return f"{THUMBS}{stem}.webp"


def make_thumbnail(data: bytes, px: int) -> bytes:
    """A WebP no larger than ``px`` on either side, upright per its EXIF orientation."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (px, px))  # JPEG: decode at a reduced scale, far less memory
        upright = ImageOps.exif_transpose(img)
        upright.thumbnail((px, px))
        has_alpha = upright.mode in ("RGBA", "LA") or "transparency" in upright.info
        frame = upright.convert("RGBA" if has_alpha else "RGB")
        out = io.BytesIO()
        frame.save(out, "WEBP", quality=80, method=4)
        return out.getvalue()


class Thumbnails:
    """Makes and caches thumbnails; at most two are decoded at once to bound memory."""

    def __init__(self, px: int) -> None:
        self.px = px
        self._limiter = anyio.CapacityLimiter(2)
        self._making: dict[str, asyncio.Future[bytes]] = {}

    async def get(self, dest: Destination, obj: StoredObject) -> bytes:
        key = thumb_key(obj)
        try:
            if await dest.exists(key):
                return await dest.read(key)
        except StoreError as exc:
            log.info("cached thumbnail unreadable, making it again: %s", exc)
        pending = self._making.get(f"{dest.name}:{key}")
        if pending is not None:  # the same thumbnail asked for twice at once: decode once
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._making[f"{dest.name}:{key}"] = future
        try:
            data = await self._make(dest, obj, key)
            future.set_result(data)
            return data
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._making.pop(f"{dest.name}:{key}", None)

    async def _make(self, dest: Destination, obj: StoredObject, key: str) -> bytes:
        source = await dest.read(obj.key)
        data = await anyio.to_thread.run_sync(
            make_thumbnail, source, self.px, limiter=self._limiter
        )
        try:
            await dest.put(key, data, size=len(data), content_type="image/webp")
        except AlreadyExists:
            pass  # another replica made it first: same source, same thumbnail
        except StoreError as exc:
            log.warning("cannot cache thumbnail %s: %s", key, exc)
        return data
