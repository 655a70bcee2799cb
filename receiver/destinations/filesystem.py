"""A local folder: the embedded default. Create-only by writing a temporary file and
hard-linking it into place (``link`` fails when the name exists), so a reader never sees a
half-written image and a second writer never replaces a complete one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

import anyio

from ..config import FilesystemSettings
from ..errors import AlreadyExists, StoreError
from .base import Destination


class FilesystemStore(Destination):
    type = "filesystem"

    def __init__(self, name: str, settings: FilesystemSettings) -> None:
        super().__init__(name)
        self.root = Path(settings.path).expanduser().resolve()
        self.prefix = settings.prefix.strip("/")
        self._limiter = anyio.CapacityLimiter(16)

    def _path(self, key: str) -> Path:
        rel = f"{self.prefix}/{key}" if self.prefix else key
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root):
            raise StoreError(f"key {key!r} leaves the destination folder", permanent=True)
        return path

    def uri(self, key: str) -> str:
        return str(self._path(key))

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
        path = self._path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as out:
                    if isinstance(body, bytes):
                        out.write(body)
                    else:
                        shutil.copyfileobj(body, out, 1024 * 1024)
                    out.flush()
                    os.fsync(out.fileno())
                os.link(tmp, path)
            finally:
                os.unlink(tmp)

        try:
            await anyio.to_thread.run_sync(write, limiter=self._limiter)
        except FileExistsError:
            raise AlreadyExists(f"{path} already exists") from None
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return str(path)

    async def exists(self, key: str) -> bool:
        return await anyio.to_thread.run_sync(self._path(key).exists, limiter=self._limiter)

    async def read(self, key: str) -> bytes:
        try:
            return await anyio.to_thread.run_sync(self._path(key).read_bytes, limiter=self._limiter)
        except OSError as exc:
            raise StoreError(f"cannot read {key}: {exc.strerror or exc}") from exc

    async def check(self) -> str:
        probe = f".receiver-check/{os.getpid()}-{os.urandom(4).hex()}"
        await self.put(probe, b"ok", size=2, content_type="text/plain")
        await anyio.to_thread.run_sync(self._path(probe).unlink)
        return f"writable folder {self.root}"
