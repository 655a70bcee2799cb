"""S3 and S3-compatible stores through boto3, in a bounded pool of threads.

Create-only writes use ``If-None-Match: *`` on PutObject and on CompleteMultipartUpload
(boto3's managed transfer cannot send it); a store that refuses conditions can be switched to
head-then-put with ``conditional_writes = false``. On non-AWS endpoints the CRC32 checksums
boto3 sends by default are turned off unless asked for, since many stores reject them.

With ``sha256_checksum`` (the default) every body goes out with the SHA-256 the fetcher
already computed as ``x-amz-checksum-sha256``: the store checks the bytes it received against
it, and the client signs the (signed) header instead of hashing each body a second time for
SigV4 (``payload_signing_enabled = false``; over plain HTTP that hash was unavoidable).

Single-part PUTs take the lean path of :mod:`.s3put` (``lean_put``, on by default): the same
request, signed by botocore's SigV4 with the client's credentials and sent on the client's own
connection pool, without boto3's per-call machinery, which cost more CPU than the rest of a
small PUT. Multipart uploads, HEAD, GET, DELETE and presigning stay on boto3, as does any PUT
the lean path cannot prove identical (see :meth:`.s3put.LeanPut.build`); the check's probe is
written through the lean path, so it proves it.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import hashlib
import io
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .. import backoff
from ..config import S3Settings
from ..errors import AlreadyExists, StoreError
from .base import Destination
from .s3put import LeanPut, Redirected, headers_for

log = logging.getLogger(__name__)

T = TypeVar("T")
PERMANENT_CODES = {
    "AccessDenied",
    "NoSuchBucket",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "InvalidBucketName",
    "NotImplemented",
    "InvalidStorageClass",
}
EXISTS_CODES = {"PreconditionFailed", "412"}
# Bodies up to this size are hashed on the event loop (microseconds) rather than in a thread
# (a hand-off costs more than hashing a sidecar).
INLINE_HASH = 64 * 1024


def _sha256(body: IO[bytes] | bytes) -> str:
    """Hex SHA-256 of bytes, or of a file from its current position (which is kept)."""
    if isinstance(body, bytes):
        return hashlib.sha256(body).hexdigest()
    start = body.tell()
    digest = hashlib.sha256()
    for chunk in iter(functools.partial(body.read, 1024 * 1024), b""):
        digest.update(chunk)
    body.seek(start)
    return digest.hexdigest()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _translate(exc: ClientError | BotoCoreError, what: str) -> StoreError:
    """botocore's error as ours: a present key is AlreadyExists, a refusal is permanent."""
    if isinstance(exc, BotoCoreError):
        return StoreError(f"{what}: {exc}")
    code = _code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in EXISTS_CODES or status == 412:
        return AlreadyExists(f"{what}: already exists")
    message = exc.response.get("Error", {}).get("Message") or code
    permanent = code in PERMANENT_CODES or (
        isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429)
    )
    return StoreError(f"{what}: {code or status}: {message}", permanent=permanent)


class S3Store(Destination):
    type = "s3"

    def __init__(self, name: str, settings: S3Settings) -> None:
        super().__init__(name)
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix.strip("/")
        checksum = settings.checksum
        if checksum == "auto":
            checksum = "when_required" if settings.endpoint_url else "when_supported"
        config = Config(
            region_name=settings.region,
            max_pool_connections=settings.max_threads,
            retries={"mode": "standard", "max_attempts": 3},
            request_checksum_calculation=checksum,
            response_checksum_validation=checksum,
            s3={
                "addressing_style": settings.addressing_style,
                # Only when every body carries our own SHA-256 (see the module docstring).
                "payload_signing_enabled": not settings.sha256_checksum,
            },
            connect_timeout=10,
            read_timeout=60,
            # Our own code builds every request's parameters; botocore's check of them cost
            # about 0.35 ms of CPU per small PUT (a third of an image's three objects' worth).
            parameter_validation=False,
        )
        # One client made up front and shared by the threads (creating clients in threads is
        # not thread-safe).
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            config=config,
        )
        # The store's own threads, as many as its connection pool: storage calls never wait
        # behind other work's threads. A plain executor costs the event loop less per call
        # than anyio's thread hand-off (a sixth of the loop's time while archiving).
        self._threads = ThreadPoolExecutor(settings.max_threads, thread_name_prefix="s3")
        # Single-part PUTs without boto3's per-call machinery (see the module docstring), where
        # the request is boto3's: not when botocore would add a checksum of its own (CRC32 on
        # AWS without sha256_checksum), which the lean path does not compute.
        self._lean: LeanPut | None = None
        if settings.lean_put and (settings.sha256_checksum or checksum == "when_required"):
            self._lean = LeanPut.build(self.client, self.bucket)

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """``fn`` in one of the store's threads, in the caller's context. A cancelled caller
        returns at once; the call finishes in its thread (create-only writes make a late
        one harmless)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, contextvars.copy_context().run, fn)

    async def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return await self._in_thread(fn)
        except (ClientError, BotoCoreError) as exc:
            error = _translate(exc, what)
            raise error from (None if isinstance(error, AlreadyExists) else exc)

    async def _lean_put(
        self, lean: LeanPut, full: str, body: IO[bytes] | bytes, headers: dict[str, str], what: str
    ) -> None:
        """One PutObject through :mod:`.s3put`, retried as the client's standard retry mode
        would (5xx, throttling, connection errors: its attempts, its delays), waiting through
        :mod:`receiver.backoff` (which tests turn off)."""
        start = 0 if isinstance(body, bytes) else body.tell()
        attempt = 1
        while True:
            try:
                await self._in_thread(functools.partial(lean.send, full, body, headers))
                return
            except (ClientError, BotoCoreError) as exc:
                wait = lean.retry_delay(attempt, exc)
                if wait is None:
                    error = _translate(exc, what)
                    raise error from (None if isinstance(error, AlreadyExists) else exc)
            await backoff.sleep(wait)
            attempt += 1
            if not isinstance(body, bytes):
                body.seek(start)

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
        full = self.full_key(key)
        extra: dict[str, Any] = {"ContentType": content_type, "Metadata": metadata or {}}
        if self.settings.storage_class:
            extra["StorageClass"] = self.settings.storage_class
        if self.settings.conditional_writes:
            extra["IfNoneMatch"] = "*"
        elif await self.exists(key):
            raise AlreadyExists(f"{self.uri(key)}: already exists")
        multipart = size > self.settings.multipart_threshold
        if self.settings.sha256_checksum and not multipart:
            if sha256 is None:
                if isinstance(body, bytes) and len(body) <= INLINE_HASH:
                    sha256 = _sha256(body)
                else:
                    sha256 = await self._in_thread(functools.partial(_sha256, body))
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
        if multipart:
            stream: IO[bytes] = io.BytesIO(body) if isinstance(body, bytes) else body
            await self._multipart(full, stream, extra)
            return self.uri(key)
        what = f"put {self.uri(key)}"
        lean = self._lean
        headers = headers_for(extra) if lean is not None else None
        if lean is not None and headers is not None:
            start = 0 if isinstance(body, bytes) else body.tell()
            try:
                await self._lean_put(lean, full, body, headers, what)
                return self.uri(key)
            except Redirected as exc:
                # The bucket lives elsewhere: boto3's redirector finds it, and from now on
                # every PUT goes through boto3 (which remembers the bucket's region).
                log.warning("%s: %s; lean PUTs off for %s", what, exc, self.name)
                self._lean = None
                if not isinstance(body, bytes):
                    body.seek(start)
        # The file itself, not its bytes: botocore streams it, so memory stays bounded by
        # the spool, not by the image size times the jobs in flight.
        await self._call(
            lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=body, **extra),
            what,
        )
        return self.uri(key)

    async def _multipart(self, full: str, stream: IO[bytes], extra: dict[str, Any]) -> None:
        condition = extra.pop("IfNoneMatch", None)
        checksums = self.settings.sha256_checksum
        if checksums:
            extra["ChecksumAlgorithm"] = "SHA256"  # each part then carries its own
        what = f"multipart put s3://{self.bucket}/{full}"
        upload = await self._call(
            lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=full, **extra),
            what,
        )
        upload_id = upload["UploadId"]
        parts = []
        try:
            number = 1
            while True:
                chunk = stream.read(self.settings.part_size)
                if not chunk:
                    break
                part: dict[str, Any] = {"PartNumber": number}
                if checksums:
                    digest = await self._in_thread(functools.partial(_sha256, chunk))
                    part["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(digest)).decode()
                result = await self._call(
                    functools.partial(
                        self.client.upload_part,
                        Bucket=self.bucket,
                        Key=full,
                        UploadId=upload_id,
                        Body=chunk,
                        **part,
                    ),
                    what,
                )
                parts.append({**part, "ETag": result["ETag"]})
                number += 1
            done: dict[str, Any] = {"MultipartUpload": {"Parts": parts}}
            if condition:
                done["IfNoneMatch"] = condition
            await self._call(
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, **done
                ),
                what,
            )
        except BaseException:
            try:
                await self._call(
                    lambda: self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=full, UploadId=upload_id
                    ),
                    what,
                )
            except StoreError:
                pass  # a lifecycle rule cleans up what cannot be aborted now
            raise

    async def exists(self, key: str) -> bool:
        full = self.full_key(key)

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise
            return True

        return await self._call(head, f"head {self.uri(key)}")

    async def read(self, key: str) -> bytes:
        full = self.full_key(key)

        def get() -> bytes:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read())

        return await self._call(get, f"get {self.uri(key)}")

    async def presign(self, key: str, seconds: int) -> str | None:
        full = self.full_key(key)
        url: str = await self._call(
            lambda: self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=seconds
            ),
            f"presign {key}",
        )
        return url

    async def check(self) -> str:
        probe = f".receiver-check/{os.getpid()}-{os.urandom(4).hex()}"
        body = b"receiver check"
        await self.put(probe, body, size=len(body), content_type="text/plain")
        got = await self.read(probe)
        if hashlib.sha256(got).digest() != hashlib.sha256(body).digest():
            raise StoreError("the probe object read back different bytes", permanent=True)
        full = self.full_key(probe)
        await self._call(
            lambda: self.client.delete_object(Bucket=self.bucket, Key=full), "delete probe"
        )
        mode = "create-only writes" if self.settings.conditional_writes else "head-then-put"
        return f"s3://{self.bucket}/{self.prefix} writable ({mode})"

    async def close(self) -> None:
        self._threads.shutdown(wait=False)
        self.client.close()
