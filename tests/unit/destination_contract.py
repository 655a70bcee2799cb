"""One contract for every destination; each backend's module subclasses it with a ``store``
fixture (an empty destination)."""

from __future__ import annotations

import asyncio
import io

import pytest

from receiver.destinations import Destination
from receiver.errors import AlreadyExists

pytestmark = pytest.mark.anyio


class DestinationContract:
    async def test_put_then_read(self, store: Destination) -> None:
        uri = await store.put("a/b/0.png", b"\x89PNG-bytes", size=10, content_type="image/png")
        assert uri == store.uri("a/b/0.png")
        assert await store.read("a/b/0.png") == b"\x89PNG-bytes"
        assert await store.exists("a/b/0.png")
        assert not await store.exists("a/b/1.png")

    async def test_file_bodies_are_streamed(self, store: Destination) -> None:
        body = io.BytesIO(b"x" * 300_000)
        await store.put("big.bin", body, size=300_000, content_type="application/octet-stream")
        assert await store.read("big.bin") == b"x" * 300_000

    async def test_create_only(self, store: Destination) -> None:
        await store.put("k.json", b"first", size=5, content_type="application/json")
        with pytest.raises(AlreadyExists):
            await store.put("k.json", b"second", size=6, content_type="application/json")
        assert await store.read("k.json") == b"first"

    async def test_racing_writers_leave_one_complete_object(self, store: Destination) -> None:
        async def write(i: int) -> bool:
            try:
                await store.put("race.png", bytes([i]) * 1000, size=1000, content_type="image/png")
            except AlreadyExists:
                return False
            return True

        wins = await asyncio.gather(*(write(i) for i in range(6)))
        assert sum(wins) == 1  # create-only: every other writer is told it lost
        data = await store.read("race.png")
        assert len(data) == 1000 and len(set(data)) == 1

    async def test_check_reports_writable(self, store: Destination) -> None:
        assert await store.check()
