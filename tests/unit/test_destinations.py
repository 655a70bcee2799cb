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


def _record_puts(store: S3Store) -> list[dict[str, str]]:
    """Headers of every PutObject / UploadPart request as botocore sends it."""
    sent: list[dict[str, str]] = []

    def keep(request: object, **_: object) -> None:
        headers = request.headers.items()  # type: ignore[attr-defined]
        sent.append({k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in headers})

    store.client.meta.events.register("before-send.s3.PutObject", keep)
    store.client.meta.events.register("before-send.s3.UploadPart", keep)
    return sent


async def test_s3_sends_the_known_sha256_instead_of_hashing_again(
    moto_endpoint: str, s3_bucket: str
) -> None:
    import base64
    import hashlib
    import io

    store = _s3(moto_endpoint, s3_bucket)
    sent = _record_puts(store)
    body = b"\x89PNG\r\n\x1a\n" + bytes(5000)
    digest = hashlib.sha256(body).hexdigest()
    await store.put(
        "known.png", io.BytesIO(body), size=len(body), content_type="image/png", sha256=digest
    )
    await store.put("probe.txt", b"no digest given", size=15, content_type="text/plain")
    assert sent[0]["x-amz-checksum-sha256"] == base64.b64encode(bytes.fromhex(digest)).decode()
    assert sent[1]["x-amz-checksum-sha256"] == base64.b64encode(
        hashlib.sha256(b"no digest given").digest()
    ).decode()
    # The signed checksum header stands for the body: no second SHA-256 pass for SigV4.
    assert {s["x-amz-content-sha256"] for s in sent} == {"UNSIGNED-PAYLOAD"}
    assert await store.read("known.png") == body
    await store.close()


async def test_s3_multipart_parts_carry_their_sha256(moto_endpoint: str, s3_bucket: str) -> None:
    import base64
    import hashlib
    import io

    store = _s3(
        moto_endpoint, s3_bucket, multipart_threshold=5 * 1024 * 1024, part_size=5 * 1024 * 1024
    )
    sent = _record_puts(store)
    body = bytes(range(256)) * (6 * 1024 * 1024 // 256)
    await store.put("parts.png", io.BytesIO(body), size=len(body), content_type="image/png")
    first, second = body[: 5 * 1024 * 1024], body[5 * 1024 * 1024 :]
    assert [s["x-amz-checksum-sha256"] for s in sent] == [
        base64.b64encode(hashlib.sha256(part).digest()).decode() for part in (first, second)
    ]
    assert await store.read("parts.png") == body
    await store.close()


async def test_s3_without_sha256_checksum_signs_the_payload(
    moto_endpoint: str, s3_bucket: str
) -> None:
    store = _s3(moto_endpoint, s3_bucket, sha256_checksum=False)
    sent = _record_puts(store)
    await store.put("plain.txt", b"signed body", size=11, content_type="text/plain")
    assert "x-amz-checksum-sha256" not in sent[0]
    assert sent[0]["x-amz-content-sha256"] != "UNSIGNED-PAYLOAD"  # the body's own SHA-256
    await store.close()
