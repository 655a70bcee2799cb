"""A single-part PutObject without botocore's per-call machinery, for :mod:`.s3`.

Each archived image is three PUTs (image, XMP, JSON), and boto3 spends about 1.3 ms of CPU on a
small one: the event system, parameter serialization, the handler chain, user-agent building,
checksum resolution, the retry handler. Almost none of it varies between two PUTs of one store,
so this module does the work once and keeps, per request, only what must be per request; every
part that decides what goes on the wire is still botocore's own, taken from the store's client:

- the endpoint: the client's own endpoint-ruleset resolution for the bucket (path, virtual or
  auto addressing, custom ``endpoint_url`` or AWS regional endpoints), resolved once; the key
  is percent-encoded and joined exactly as botocore's serializer does;
- the signature: ``botocore.auth.S3SigV4Auth`` with the client's credentials (the standard
  chain, refreshable ones refreshed as botocore does) frozen per request, and the client's
  config (``payload_signing_enabled`` decides UNSIGNED-PAYLOAD or the body's hash);
- the connection: the client's own HTTP session (urllib3 pool, TLS verification, proxies,
  timeouts), from the store's threads, so PUTs share connections with every other call;
- error parsing and retries: botocore's rest-xml parser, and its standard retry policy for
  which errors to retry, how often and how long to wait (the caller waits, through
  :mod:`receiver.backoff`, so tests do not).

:meth:`LeanPut.build` returns None wherever equivalence is not certain (ARN and S3 Express
buckets, FIPS, dual-stack and accelerate endpoints, anything but plain SigV4 for ``s3``, an
endpoint with extra headers or properties) and the store keeps boto3's ``put_object``. A
redirect (a bucket in another region) raises :class:`Redirected` so the store retries through
boto3, whose region redirector handles it. tests/unit/test_s3put.py holds the request built
here against botocore's own, byte for byte, over a table of configurations and keys.
"""

from __future__ import annotations

import re
from typing import IO, Any

import botocore
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest, AWSResponse, prepare_request_dict
from botocore.endpoint import convert_to_response_dict
from botocore.exceptions import ClientError
from botocore.handlers import validate_bucket_name
from botocore.httpsession import URLLib3Session
from botocore.parsers import create_parser
from botocore.retries.standard import (
    ExponentialBackoff,
    RetryContext,
    RetryEventAdapter,
    RetryPolicy,
    StandardRetryConditions,
    ThrottlingErrorDetector,
)
from botocore.utils import percent_encode

# boto3 parameters of a PutObject and the header each becomes (botocore's serialization).
_HEADERS = {
    "ContentType": "Content-Type",
    "StorageClass": "x-amz-storage-class",
    "IfNoneMatch": "If-None-Match",
    "ChecksumSHA256": "x-amz-checksum-sha256",
}
# Error codes for which boto3's region redirector takes over (S3RegionRedirectorv2).
_REDIRECT_CODES = {
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
}
_REDIRECT_STATUS = {301, 302, 307}
_S3_EXPRESS = re.compile(r"--[a-z0-9-]+--x(a)?-s3$")
USER_AGENT = f"Botocore/{botocore.__version__} receiver-lean-put"


class Redirected(Exception):
    """S3 sent the request elsewhere (a bucket in another region): boto3 handles that."""


def headers_for(params: dict[str, Any]) -> dict[str, str] | None:
    """The request headers boto3 would send for these ``put_object`` parameters, or None when
    one is outside what this path reproduces (non-ASCII metadata, which botocore refuses)."""
    headers: dict[str, str] = {}
    for name, value in params.items():
        if name == "Metadata":
            for key, item in value.items():
                if not (key.isascii() and item.isascii()):
                    return None
                headers[f"x-amz-meta-{key}"] = item
        elif name in _HEADERS:
            headers[_HEADERS[name]] = value
        else:
            return None
    return headers


class LeanPut:
    """PutObject for one bucket of one client; safe to share between threads."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        endpoint: str,
        region: str,
        signing_name: str,
        http: URLLib3Session,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.endpoint = endpoint
        self.region = region
        self.signing_name = signing_name
        self.http = http
        self.config = client.meta.config
        self.operation = client.meta.service_model.operation_model("PutObject")
        self._parser = create_parser(client.meta.service_model.metadata["protocol"])
        # The policy botocore's standard retry mode builds (retries.standard), minus the
        # client-wide retry quota.
        self._retry = RetryPolicy(
            retry_checker=StandardRetryConditions(max_attempts=self.max_attempts),
            retry_backoff=ExponentialBackoff(
                service_name="s3", throttling_detector=ThrottlingErrorDetector(RetryEventAdapter())
            ),
        )

    @property
    def max_attempts(self) -> int:
        """The client's own total attempts (its resolved ``retries`` config)."""
        return int((self.config.retries or {}).get("total_max_attempts", 3))

    @classmethod
    def build(cls, client: Any, bucket: str) -> LeanPut | None:
        """The lean path for ``bucket``, or None where it might differ from boto3's."""
        config = client.meta.config
        s3 = config.s3 or {}
        if (
            bucket.startswith("arn:")
            or _S3_EXPRESS.search(bucket)
            or config.use_fips_endpoint
            or config.use_dualstack_endpoint
            or s3.get("use_accelerate_endpoint")
            or s3.get("use_dualstack_endpoint")
            or config.signature_version not in (None, "s3v4", "v4")
            or (config.retries or {}).get("mode") != "standard"
            # Explicit, as the store sets it: otherwise botocore decides from request context
            # the lean path does not build.
            or s3.get("payload_signing_enabled") is None
        ):
            return None
        http = getattr(getattr(client, "_endpoint", None), "http_session", None)
        if not isinstance(http, URLLib3Session) or not hasattr(client, "_get_credentials"):
            return None
        try:
            validate_bucket_name({"Bucket": bucket})
            operation = client.meta.service_model.operation_model("PutObject")
            resolved = []
            for probe in ("probe", "other/probe key"):  # the endpoint must not depend on it
                context: dict[str, Any] = {
                    "client_region": client.meta.region_name,
                    "client_config": config,
                    "has_streaming_input": operation.has_streaming_input,
                    "auth_type": operation.resolved_auth_type,
                    "unsigned_payload": operation.unsigned_payload,
                    "auth_options": client.meta.service_model.metadata.get("auth"),
                }
                url, headers, properties = client._resolve_endpoint_ruleset(
                    operation, {"Bucket": bucket, "Key": probe}, context
                )
                resolved.append((url, headers, properties, context))
        except Exception:  # any doubt: boto3's put_object
            return None
        url, headers, properties, context = resolved[0]
        signing = context.get("signing", {})
        if (
            any(r[:3] != resolved[0][:3] or r[3] != context for r in resolved)
            or headers
            or set(properties) - {"authSchemes"}
            or context.get("auth_type") not in ("v4", "s3v4")
            or set(signing) - {"region", "signing_name", "disableDoubleEncoding"}
            or signing.get("signing_name") != "s3"
            or not signing.get("disableDoubleEncoding")
            or not signing.get("region")
            or "?" in url
            or "#" in url
        ):
            return None
        return cls(client, bucket, url, signing["region"], signing["signing_name"], http)

    def url(self, key: str) -> str:
        """The object's URL as botocore's serializer builds it (the greedy ``{Key+}`` label)."""
        request = {"url_path": "/" + percent_encode(key, safe="/~"), "query_string": ""}
        prepare_request_dict(request, self.endpoint)
        return str(request["url"])

    def prepare(
        self, key: str, body: IO[bytes] | bytes, headers: dict[str, str]
    ) -> AWSPreparedRequest:
        """The signed request, ready for the HTTP session."""
        request = AWSRequest(
            method="PUT",
            url=self.url(key),
            # Expect: 100-continue as boto3 sends it: a refusal (403, 412) comes back before
            # the body is sent, and the client's connection class waits for the go-ahead.
            headers={**headers, "User-Agent": USER_AGENT, "Expect": "100-continue"},
            data=body,
        )
        request.context["client_config"] = self.config
        credentials = self.client._get_credentials()
        frozen = None if credentials is None else credentials.get_frozen_credentials()
        S3SigV4Auth(frozen, self.signing_name, self.region).add_auth(request)
        return request.prepare()

    def send(self, key: str, body: IO[bytes] | bytes, headers: dict[str, str]) -> None:
        """One attempt. Raises botocore's ClientError for an error answer (parsed as botocore
        parses it), botocore's connection errors as they are, or :class:`Redirected`."""
        response = self.http.send(self.prepare(key, body, headers))
        if response.status_code < 300:
            return
        parsed = self._parser.parse(
            convert_to_response_dict(response, self.operation), self.operation.output_shape
        )
        code = parsed.get("Error", {}).get("Code")
        if response.status_code in _REDIRECT_STATUS or code in _REDIRECT_CODES:
            raise Redirected(code or str(response.status_code))
        error = ClientError(parsed, "PutObject")
        error.http_response = response  # type: ignore[attr-defined]
        raise error

    def retry_delay(self, attempt: int, error: Exception) -> float | None:
        """Seconds to wait before another attempt, as botocore's standard retry mode decides
        after ``attempt`` failed with ``error``; None: no more attempts."""
        if isinstance(error, ClientError):
            http: AWSResponse | None = getattr(error, "http_response", None)
            context = RetryContext(
                attempt,
                operation_model=self.operation,
                parsed_response=error.response,
                http_response=http,
            )
        else:
            context = RetryContext(attempt, operation_model=self.operation, caught_exception=error)
        if not self._retry.should_retry(context):
            return None
        return float(self._retry.compute_retry_delay(context))
