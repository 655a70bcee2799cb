"""The destination adapter family: where archived images and sidecars end up.

Writes are create-only: a key that exists is never replaced, so a second worker racing on the
same task cannot overwrite a complete pair. boto3/httpx/OS errors become
:class:`~receiver.errors.StoreError` (or :class:`~receiver.errors.AlreadyExists`) here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import IO, Any, ClassVar


class Destination(ABC):
    type: ClassVar[str]

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_settings(cls, name: str, settings: Any) -> Destination:
        """The store ``[destinations.<name>]`` configures; each type takes its own settings
        class (``FilesystemSettings``, ``S3Settings``, ``BunnySettings``)."""
        build: Callable[[str, Any], Destination] = cls  # type: ignore[assignment]
        return build(name, settings)

    @abstractmethod
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
        """Store ``body`` (a seekable file at position 0, or bytes) under ``key`` (relative to
        the destination's prefix), only if absent. Return its URI. Raise AlreadyExists when
        the key is present, StoreError otherwise. ``sha256`` (hex), when the caller already
        has it, lets a store that checks integrity skip hashing the body again."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def read(self, key: str) -> bytes:
        """The stored bytes (tests, replay, notifications). NotFound-like: StoreError."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """``s3://bucket/prefix/key``, an absolute path, or the store's URL."""

    async def presign(self, key: str, seconds: int) -> str | None:
        """A time-limited GET URL, where the store can make one."""
        return None

    @abstractmethod
    async def check(self) -> str:
        """Reach the store and prove we may write (``receiver check``); return a short detail."""

    async def close(self) -> None:
        return None
