"""The destination contract on a local folder, on Bunny's HTTP API (an in-process fake behind
httpx.MockTransport) and on receiver.testing's in-memory store. S3 runs it against moto's
HTTP server in tests/integration/test_destinations_s3.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from receiver.config import BunnySettings, FilesystemSettings
from receiver.destinations import Destination, build_destination
from receiver.destinations.bunny import BunnyStore
from receiver.errors import StoreError
from receiver.testing import MemoryDestination

from .destination_contract import DestinationContract

pytestmark = pytest.mark.anyio


class TestFilesystem(DestinationContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Destination]:
        yield build_destination(
            "local", FilesystemSettings(type="filesystem", path=str(tmp_path), prefix="p/")
        )


class TestMemory(DestinationContract):
    """The fake the unit tests archive into must keep the contract the real stores keep."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[Destination]:
        yield MemoryDestination("memory")


class FakeBunny:
    """Bunny Storage's PUT/GET/DELETE with the AccessKey check, in memory."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.files: dict[str, bytes] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("accesskey") != self.password:
            return httpx.Response(401)
        path = request.url.path
        if request.method == "PUT":
            self.files[path] = request.content
            return httpx.Response(201)
        if request.method == "DELETE":
            return httpx.Response(200 if self.files.pop(path, None) is not None else 404)
        if path not in self.files:
            return httpx.Response(404)
        return httpx.Response(200, content=self.files[path])


class TestBunny(DestinationContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[Destination]:
        conf = BunnySettings(type="bunny", zone="zone", password="pw", prefix="x")
        store = BunnyStore("bunny", conf, transport=httpx.MockTransport(FakeBunny("pw")))
        yield store
        await store.close()

    async def test_racing_writers_leave_one_complete_object(self, store: Destination) -> None:
        pytest.skip("Bunny has no conditional PUT; racers write the same task's bytes")


async def test_filesystem_refuses_keys_leaving_the_folder(tmp_path: Path) -> None:
    store = build_destination("l", FilesystemSettings(type="filesystem", path=str(tmp_path)))
    with pytest.raises(StoreError):
        await store.put("../escape.png", b"x", size=1, content_type="image/png")
    assert not (tmp_path.parent / "escape.png").exists()


async def test_bunny_wrong_password_is_permanent() -> None:
    conf = BunnySettings(type="bunny", zone="zone", password="bad")
    store = BunnyStore("b", conf, transport=httpx.MockTransport(FakeBunny("pw")))
    with pytest.raises(StoreError) as info:
        await store.put("a.png", b"x", size=1, content_type="image/png")
    assert info.value.permanent
    await store.close()

