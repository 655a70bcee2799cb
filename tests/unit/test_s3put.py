"""The lean PutObject of receiver/destinations/s3put.py sends exactly what boto3's put_object
sends: the same URL, the same signed headers with the same values and the same signature, the
same body, over a table of configurations and keys. Both requests are captured where they
leave botocore for urllib3 (the client's HTTP session), with the clock frozen, so the
Authorization header itself must match. No server: the session answers."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from receiver.config import S3Settings
from receiver.destinations.s3 import S3Store
from receiver.errors import StoreError

NOW = datetime.datetime(2026, 3, 4, 5, 6, 7)
# Headers that are not signed and differ: botocore's own user agent and retry bookkeeping.
UNSIGNED = {"user-agent", "amz-sdk-invocation-id", "amz-sdk-request"}

KEYS = [
    "a/b/0.png",
    "with space/ä ö.png",
    "plus+sign.png.json",
    "tilde~dir/x.png.xmp",
    "percent%2Fliteral.png",
    "double//slash/./dot/../x.png",
    "sym!$&'()*,;=:@[]?#.png",
    "日本語/画像.png",
    "/leading-slash.png",
]

# (id, settings, environment): each a configuration the store may meet.
CONFIGS: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("seaweedfs-path", {"endpoint_url": "http://127.0.0.1:8333", "addressing_style": "path"}, {}),
    ("ip-endpoint-auto", {"endpoint_url": "http://127.0.0.1:8333"}, {}),
    ("localhost-auto", {"endpoint_url": "http://localhost:9000"}, {}),
    (
        "localhost-virtual",
        {"endpoint_url": "http://localhost:9000", "addressing_style": "virtual"},
        {},
    ),
    (
        "https-virtual",
        {"endpoint_url": "https://s3.example.com", "addressing_style": "virtual"},
        {},
    ),
    ("https-auto", {"endpoint_url": "https://s3.example.com"}, {}),
    (
        "endpoint-with-path",
        {"endpoint_url": "https://gw.example.com/s3/", "addressing_style": "path"},
        {},
    ),
    ("aws-eu-west-1", {"region": "eu-west-1"}, {}),
    ("aws-us-east-1-path", {"region": "us-east-1", "addressing_style": "path"}, {}),
    ("aws-no-region-virtual", {"addressing_style": "virtual"}, {}),
    ("aws-cn", {"region": "cn-north-1"}, {}),
    ("aws-dotted-bucket", {"region": "eu-central-1", "bucket": "my.dotted.bucket"}, {}),
    ("aws-storage-class", {"region": "us-west-2", "storage_class": "STANDARD_IA"}, {}),
    (
        "payload-signed-http",
        {"endpoint_url": "http://127.0.0.1:8333", "sha256_checksum": False},
        {},
    ),
    (
        "payload-signed-aws",
        {"region": "eu-west-1", "sha256_checksum": False, "checksum": "when_required"},
        {},
    ),
    ("head-then-put", {"endpoint_url": "http://127.0.0.1:8333", "conditional_writes": False}, {}),
    (
        "credential-chain-session-token",
        {"region": "eu-west-1", "access_key_id": None, "secret_access_key": None},
        {
            "AWS_ACCESS_KEY_ID": "ASIACHAINKEY",
            "AWS_SECRET_ACCESS_KEY": "chain-secret",
            "AWS_SESSION_TOKEN": "chain-token",
        },
    ),
]

# Configurations where the lean path stands aside and boto3 sends the PUT.
FALLBACKS: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("off", {"region": "eu-west-1", "lean_put": False}, {}),
    ("fips", {"region": "us-east-1"}, {"AWS_USE_FIPS_ENDPOINT": "true"}),
    ("dualstack", {"region": "us-east-1"}, {"AWS_USE_DUALSTACK_ENDPOINT": "true"}),
    (
        "access-point-arn",
        {"region": "us-east-1", "bucket": "arn:aws:s3:us-east-1:123456789012:accesspoint/ap"},
        {},
    ),
    ("s3-express", {"region": "us-east-1", "bucket": "archive--use1-az4--x-s3"}, {}),
    # boto3 adds a CRC32 of its own on AWS when our SHA-256 is off: the lean path does not.
    ("crc32-by-boto3", {"region": "eu-west-1", "sha256_checksum": False}, {}),
]


class _Raw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        return iter([b""])


def _settings(**overrides: Any) -> S3Settings:
    values: dict[str, Any] = {
        "type": "s3",
        "bucket": "archive-bucket",
        "prefix": "flux/",
        "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    }
    values.update(overrides)
    return S3Settings(**values)


@pytest.fixture(autouse=True)
def _clean_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a case sets: no profile, shared files or instance metadata from the machine."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_USE_FIPS_ENDPOINT",
        "AWS_USE_DUALSTACK_ENDPOINT",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: NOW)


def _capture(store: S3Store) -> list[dict[str, Any]]:
    """What the store's client hands to urllib3, for both paths: the lean one sends on the
    client's own session, so one patch sees boto3's requests and the lean ones alike."""
    sent: list[dict[str, Any]] = []

    def send(request: AWSPreparedRequest) -> AWSResponse:
        body = request.body
        if hasattr(body, "tell"):
            start = body.tell()
            data = body.read()
            body.seek(start)
        elif hasattr(body, "read"):  # boto3's aws-chunked wrapper (CRC32 trailer)
            data = body.read()
        else:
            data = bytes(body or b"")
        sent.append(
            {
                "method": request.method,
                "url": request.url,
                "headers": {
                    k.lower(): v.decode() if isinstance(v, bytes) else str(v)
                    for k, v in request.headers.items()
                },
                "body": data,
            }
        )
        # HEAD (head-then-put) finds nothing; the PUT succeeds.
        return AWSResponse(request.url, 404 if request.method == "HEAD" else 200, {}, _Raw())

    http = store.client._endpoint.http_session
    http.send = send
    return sent


def _put(store: S3Store, key: str, body: bytes, as_file: bool, sha256: str | None) -> None:
    payload: io.BytesIO | bytes = io.BytesIO(body) if as_file else body
    asyncio.run(
        store.put(
            key,
            payload,
            size=len(body),
            content_type="image/png",
            metadata={"task-id": "task-1", "sha256": hashlib.sha256(body).hexdigest()},
            sha256=sha256,
        )
    )


def _compared(request: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in request["headers"].items() if k not in UNSIGNED}


@pytest.mark.parametrize(("name", "settings", "env"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_lean_put_sends_what_boto3_sends(
    name: str, settings: dict[str, Any], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    lean = S3Store("s3", _settings(**settings))
    boto = S3Store("s3", _settings(**settings, lean_put=False))
    assert lean._lean is not None and boto._lean is None
    lean_sent, boto_sent = _capture(lean), _capture(boto)
    body = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    for i, key in enumerate(KEYS):
        as_file = i % 2 == 1
        sha256 = hashlib.sha256(body).hexdigest() if i % 3 else None  # known, or computed
        _put(lean, key, body, as_file, sha256)
        _put(boto, key, body, as_file, sha256)
    assert len(lean_sent) == len(boto_sent) >= len(KEYS)
    for ours, theirs in zip(lean_sent, boto_sent, strict=True):
        assert ours["method"] == theirs["method"]
        assert ours["url"] == theirs["url"]
        assert _compared(ours) == _compared(theirs)
        assert ours["body"] == theirs["body"]
    # The lean requests are the lean path's (not boto3's, which adds its retry bookkeeping).
    for ours, theirs in zip(lean_sent, boto_sent, strict=True):
        if ours["method"] == "PUT":
            assert "amz-sdk-invocation-id" not in ours["headers"]
            assert "amz-sdk-invocation-id" in theirs["headers"]
            assert {"authorization", "x-amz-date", "x-amz-content-sha256"} <= set(ours["headers"])


@pytest.mark.parametrize(("name", "settings", "env"), FALLBACKS, ids=[c[0] for c in FALLBACKS])
def test_lean_put_stands_aside_where_it_could_differ(
    name: str, settings: dict[str, Any], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    store = S3Store("s3", _settings(**settings))
    assert store._lean is None
    if name == "s3-express":
        return  # boto3 would first ask for a session, which this fake store cannot answer
    sent = _capture(store)
    _put(store, "a/b/0.png", b"image", False, None)
    # boto3 sent it: its own user agent and retry bookkeeping are there.
    assert "amz-sdk-invocation-id" in sent[-1]["headers"]


def test_non_ascii_metadata_goes_through_boto3_and_fails_as_before() -> None:
    store = S3Store("s3", _settings(endpoint_url="http://127.0.0.1:8333"))
    assert store._lean is not None
    sent = _capture(store)
    with pytest.raises(StoreError) as info:
        asyncio.run(
            store.put("k.json", b"{}", size=2, content_type="application/json", metadata={"t": "é"})
        )
    assert "Non ascii characters" in str(info.value) and not sent


def _answer(status: int, code: str) -> Any:
    from botocore.exceptions import ClientError

    error = ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )
    error.http_response = AWSResponse("http://x/", status, {}, _Raw())  # type: ignore[attr-defined]
    return error


def test_retries_follow_botocores_standard_mode() -> None:
    """Which answers are tried again, how often (the client's total attempts) and how long the
    store waits first (botocore's backoff: 50 ms scale, 1 s for throttling)."""
    from botocore.exceptions import EndpointConnectionError

    store = S3Store("s3", _settings(endpoint_url="http://127.0.0.1:8333"))
    lean = store._lean
    assert lean is not None and lean.max_attempts == 4  # Config(max_attempts=3) retries
    refused = EndpointConnectionError(endpoint_url="http://127.0.0.1:8333")
    for error, retried, scale in [
        (_answer(503, "ServiceUnavailable"), True, 0.05),
        (_answer(500, "InternalError"), True, 0.05),
        (_answer(503, "SlowDown"), True, 1.0),
        (_answer(429, "429"), True, 1.0),
        (_answer(400, "RequestTimeout"), True, 0.05),
        (refused, True, 0.05),
        (_answer(403, "AccessDenied"), False, 0),
        (_answer(412, "PreconditionFailed"), False, 0),
        (_answer(409, "ConditionalRequestConflict"), False, 0),
        (_answer(400, "BadDigest"), False, 0),
    ]:
        for attempt in (1, 2, 3):
            wait = lean.retry_delay(attempt, error)
            if retried:
                assert wait is not None and 0 <= wait <= scale * 2 ** (attempt - 1), error
            else:
                assert wait is None, error
        assert lean.retry_delay(4, error) is None  # the client's attempts are spent


def test_no_credentials_fails_as_boto3_does() -> None:
    """An empty credential chain: the same transient StoreError on both paths, raised before
    anything is sent."""
    messages = []
    for lean in (True, False):
        store = S3Store(
            "s3",
            _settings(
                region="eu-west-1", access_key_id=None, secret_access_key=None, lean_put=lean
            ),
        )
        assert (store._lean is not None) == lean
        sent = _capture(store)
        with pytest.raises(StoreError) as info:
            _put(store, "a.png", b"x", False, None)
        assert not info.value.permanent and not sent
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "Unable to locate credentials" in messages[0]
