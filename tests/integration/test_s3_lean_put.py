"""The lean PUT path against a scripted S3 endpoint on loopback: every error answer becomes the
same StoreError / AlreadyExists as through boto3's put_object (same message, same permanence,
same number of attempts), a redirect hands the PUT to boto3, and refreshable credentials from
the standard chain are read again as they expire."""

from __future__ import annotations

import io
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from receiver.config import S3Settings
from receiver.destinations.s3 import S3Store
from receiver.errors import AlreadyExists, StoreError

pytestmark = pytest.mark.anyio


def _error(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>req-1</RequestId></Error>"
    ).encode()


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Scripted:
    """An HTTP server that answers each request with the next scripted answer (the last one
    repeats) and records what it was sent."""

    def __init__(self) -> None:
        self.script: list[Answer] = [Answer(200)]
        self.seen: list[Seen] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                owner.seen.append(
                    Seen(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
                answer = owner.script[min(len(owner.seen), len(owner.script)) - 1]
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if answer.body:
                    self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.body)

            do_PUT = do_HEAD = do_GET = do_POST = _answer

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def _server() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.close()


@pytest.fixture
def s3(_server: Scripted) -> Scripted:
    """The module's scripted server, with a fresh script (200 to everything) and record."""
    _server.script, _server.seen = [Answer(200)], []
    return _server


@pytest.fixture(autouse=True)
def _no_botocore_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's own retries (the comparison path) wait without backoff's testing mode."""
    monkeypatch.setattr(
        "botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0.0
    )


def _store(endpoint: str, lean: bool = True, **kw: Any) -> S3Store:
    settings: dict[str, Any] = {
        "type": "s3",
        "bucket": "scripted",
        "prefix": "archive/",
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "addressing_style": "path",
        "lean_put": lean,
    }
    settings.update(kw)
    store = S3Store("s3", S3Settings(**settings))
    assert (store._lean is not None) == lean
    return store


async def _outcome(store: S3Store, body: bytes | io.BytesIO) -> tuple[str, bool | None, str]:
    """(exception class, permanent, message) of one image PUT, or ("ok", None, uri)."""
    size = len(body) if isinstance(body, bytes) else len(body.getvalue())
    try:
        uri = await store.put("a b/ü+~.png", body, size=size, content_type="image/png")
    except StoreError as exc:
        return type(exc).__name__, exc.permanent, str(exc)
    return "ok", None, uri


ERRORS = [
    ("412-precondition", [Answer(412, _error("PreconditionFailed", "At least one failed"))]),
    ("412-empty-body", [Answer(412)]),
    ("403-access-denied", [Answer(403, _error("AccessDenied", "Access Denied"))]),
    ("404-no-such-bucket", [Answer(404, _error("NoSuchBucket", "The bucket does not exist"))]),
    (
        "400-bad-digest",
        [Answer(400, _error("BadDigest", "The SHA256 you specified did not match"))],
    ),
    ("400-not-xml", [Answer(400, b"<html>nope</html>")]),
    ("409-conflict", [Answer(409, _error("ConditionalRequestConflict", "Try again"))]),
    ("503-then-ok", [Answer(503, _error("SlowDown", "Reduce your request rate")), Answer(200)]),
    ("500-empty-then-ok", [Answer(500), Answer(200)]),
    ("503-always", [Answer(503, _error("ServiceUnavailable", "Please retry"))]),
    ("429-always", [Answer(429)]),
    ("400-request-timeout-then-ok", [Answer(400, _error("RequestTimeout", "Idle")), Answer(200)]),
]


@pytest.mark.parametrize(("name", "script"), ERRORS, ids=[e[0] for e in ERRORS])
@pytest.mark.parametrize("as_file", [False, True], ids=["bytes", "file"])
async def test_lean_errors_are_translated_as_boto3s(
    s3: Scripted, name: str, script: list[Answer], as_file: bool
) -> None:
    body = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
    outcomes, attempts = [], []
    for lean in (True, False):
        s3.script, s3.seen = script, []
        store = _store(s3.endpoint, lean)
        outcomes.append(await _outcome(store, io.BytesIO(body) if as_file else body))
        attempts.append([(r.method, r.body == body) for r in s3.seen])
        lean_sent = [r for r in s3.seen if "receiver-lean-put" in r.headers["user-agent"]]
        assert len(lean_sent) == (len(s3.seen) if lean else 0)
        await store.close()
    assert outcomes[0] == outcomes[1], name
    assert attempts[0] == attempts[1], name  # same retries, each with the whole body
    kind, permanent, message = outcomes[0]
    expected = {
        "412-precondition": ("AlreadyExists", False, 1),
        "412-empty-body": ("AlreadyExists", False, 1),
        "403-access-denied": ("StoreError", True, 1),
        "404-no-such-bucket": ("StoreError", True, 1),
        "400-bad-digest": ("StoreError", True, 1),
        "400-not-xml": ("StoreError", True, 1),
        "409-conflict": ("StoreError", False, 1),
        "503-then-ok": ("ok", None, 2),
        "500-empty-then-ok": ("ok", None, 2),
        "503-always": ("StoreError", False, 4),  # the client's 3 retries
        "429-always": ("StoreError", False, 4),
        "400-request-timeout-then-ok": ("ok", None, 2),
    }[name]
    assert (kind, permanent, len(attempts[0])) == expected
    assert all(whole for _, whole in attempts[0])
    if name == "403-access-denied":
        assert message.endswith("AccessDenied: Access Denied")


async def test_lean_412_is_already_exists_and_the_first_object_stays(s3: Scripted) -> None:
    s3.script = [Answer(200), Answer(412, _error("PreconditionFailed", "exists"))]
    store = _store(s3.endpoint)
    await store.put("k.json", b"first", size=5, content_type="application/json")
    with pytest.raises(AlreadyExists):
        await store.put("k.json", b"second", size=6, content_type="application/json")
    assert [r.headers["if-none-match"] for r in s3.seen] == ["*", "*"]
    await store.close()


async def test_lean_connection_refused_is_transient_like_boto3s() -> None:
    outcomes = []
    for lean in (True, False):
        store = _store("http://127.0.0.1:9", lean)
        outcomes.append(await _outcome(store, b"x"))
        await store.close()
    assert outcomes[0] == outcomes[1]
    kind, permanent, message = outcomes[0]
    assert (kind, permanent) == ("StoreError", False) and "Could not connect" in message


async def test_a_redirect_hands_the_put_to_boto3_for_good(s3: Scripted) -> None:
    """A bucket in another region: boto3's region redirector deals with it, and later PUTs of
    the store go through boto3 (which remembers the region) instead of redirecting each."""
    moved = _error("PermanentRedirect", "The bucket is in this region: eu-west-1")
    s3.script = [
        Answer(301, moved, {"x-amz-bucket-region": "eu-west-1"}),
        Answer(200),
    ]
    store = _store(s3.endpoint)
    body = io.BytesIO(b"moved image")
    assert await store.put("m.png", body, size=11, content_type="image/png")
    agents = [r.headers["user-agent"] for r in s3.seen]
    assert "receiver-lean-put" in agents[0] and "Boto3" in agents[1]
    assert s3.seen[1].body == b"moved image"  # rewound for boto3
    assert store._lean is None
    await store.put("n.png", b"next", size=4, content_type="image/png")
    assert "Boto3" in s3.seen[-1].headers["user-agent"]
    await store.close()


CREDENTIAL_PROCESS = """\
import datetime, json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
print(json.dumps({
    "Version": 1,
    "AccessKeyId": f"ASIAKEY{n}",
    "SecretAccessKey": f"secret-{n}",
    "SessionToken": f"token-{n}",
    "Expiration": expires.isoformat(),
}))
"""


async def test_refreshable_credentials_from_the_chain_are_read_again(
    s3: Scripted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The standard chain (here a profile's credential_process) gives credentials that expire
    within botocore's refresh window: each PUT is signed with freshly read ones."""
    script = tmp_path / "creds.py"
    script.write_text(CREDENTIAL_PROCESS)
    counter = tmp_path / "count"
    config = tmp_path / "config"
    config.write_text(
        f"[default]\ncredential_process = {sys.executable} {script} {counter}\nregion = us-east-1\n"
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = _store(s3.endpoint, access_key_id=None, secret_access_key=None)
    for i in range(3):
        await store.put(f"c{i}.json", b"{}", size=2, content_type="application/json")
    keys = [json.dumps(r.headers["authorization"]).split("Credential=")[1][:8] for r in s3.seen]
    tokens = [r.headers["x-amz-security-token"] for r in s3.seen]
    assert len(set(keys)) == 3 and len(set(tokens)) == 3, (keys, tokens)
    assert all("receiver-lean-put" in r.headers["user-agent"] for r in s3.seen)
    await store.close()
