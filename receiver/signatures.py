"""Every way a request proves where it came from.

- URL tokens: an itsdangerous signature binding task id and provider, checked first on every
  callback; verified with each configured key so keys can rotate.
- Per-task webhook secrets: derived from the keys and the task id, so any replica can check any
  callback without storing secrets.
- Provider schemes: Standard Webhooks, Mynth's older ``X-Mynth-Signature``, BFL's secret echo
  and ``X-BFL-Signature``, fal's ED25519 against a JWKS.
- Public access tokens: short-lived, scoped to one task.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

from .errors import SignatureError, Unauthorized

HOOK_SALT = "receiver.hook.v1"
ACCESS_SALT = "receiver.access.v1"


def _rotation(keys: Sequence[str]) -> list[str]:
    # itsdangerous signs with the *last* key and verifies with all; ours signs with the first.
    return list(reversed(keys))


def _same(a: str, b: str) -> bool:
    """Constant-time comparison of any two strings. ``hmac.compare_digest`` raises TypeError
    on non-ASCII ``str``, and header values are whatever bytes a sender chose."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


_TIMESTAMP = re.compile(r"[0-9]{1,12}")


# --- URL tokens ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _hook_serializer(keys: tuple[str, ...]) -> URLSafeSerializer:
    # Built once per key set: every callback checks a token.
    return URLSafeSerializer(_rotation(keys), salt=HOOK_SALT)


def hook_token(keys: Sequence[str], task_id: str, provider: str) -> str:
    return str(_hook_serializer(tuple(keys)).dumps([task_id, provider]))


def verify_hook_token(keys: Sequence[str], token: str, provider: str) -> str:
    """Return the task id the token was issued for; SignatureError unless it is ours and for
    this provider."""
    return _verified_hook_token(tuple(keys), token, provider)


@functools.lru_cache(maxsize=4096)
def _verified_hook_token(keys: tuple[str, ...], token: str, provider: str) -> str:
    # Remembered once verified (a task's callbacks and retries reuse its token; the answer
    # for the same keys, token and provider never changes). Refusals raise, so a forged
    # token is never remembered.
    try:
        data = _hook_serializer(keys).loads(token)
    except BadSignature:
        raise SignatureError("invalid callback token", cause="token") from None
    if (
        not isinstance(data, list)
        or len(data) != 2
        or not all(isinstance(x, str) for x in data)
        or not _same(data[1], provider)
    ):
        raise SignatureError("callback token is for another provider", cause="token")
    return str(data[0])


# --- per-task webhook secrets --------------------------------------------------------------------


def task_secret_bytes(keys: Sequence[str], task_id: str) -> list[bytes]:
    """32 bytes per key, the first from the signing key."""
    return [
        hmac.new(
            key.encode(), b"receiver.webhook-secret.v1:" + task_id.encode(), hashlib.sha256
        ).digest()
        for key in keys
    ]


def format_secret(raw: bytes, fmt: str) -> str:
    if fmt == "whsec":
        return "whsec_" + base64.b64encode(raw).decode()
    return raw.hex()


def task_secrets(keys: Sequence[str], task_id: str, fmt: str) -> list[str]:
    return [format_secret(raw, fmt) for raw in task_secret_bytes(keys, task_id)]


# --- Standard Webhooks ---------------------------------------------------------------------------


def _whsec_key(secret: str) -> bytes:
    body = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(body, validate=True)
    except ValueError:
        raise SignatureError("webhook secret is not valid base64", cause="config") from None


def standard_sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(_whsec_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def check_timestamp(raw: str | None, tolerance: int, now: float | None = None) -> int:
    if raw is None or raw == "":
        raise SignatureError("missing timestamp header", cause="missing_header")
    if not _TIMESTAMP.fullmatch(raw):  # int() would take 400 digits, "1_0" and other scripts
        raise SignatureError("malformed timestamp", cause="malformed")
    ts = int(raw)
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance:
        raise SignatureError("timestamp outside tolerance", cause="stale")
    return ts


def verify_standard(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> str:
    """Verify Standard Webhooks headers; return the ``webhook-id`` (the delivery key)."""
    msg_id = headers.get("webhook-id")
    sig_header = headers.get("webhook-signature")
    if not msg_id or not sig_header:
        raise SignatureError("missing webhook-id or webhook-signature", cause="missing_header")
    ts = check_timestamp(headers.get("webhook-timestamp"), tolerance, now)
    offered = []
    for entry in sig_header.split():
        version, _, value = entry.partition(",")
        if version == "v1" and value:
            offered.append(value)
    if not offered:
        raise SignatureError("no v1 signature in webhook-signature", cause="malformed")
    for secret in secrets:
        expected = standard_sign(secret, msg_id, ts, body).removeprefix("v1,")
        if any(_same(expected, value) for value in offered):
            return msg_id
    raise SignatureError("signature does not match", cause="signature")


# --- Mynth's older scheme ------------------------------------------------------------------------


def mynth_sign(secret: str, timestamp: int, body: bytes) -> str:
    """``X-Mynth-Signature`` value: ``t=<unix>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_mynth_legacy(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> str | None:
    """Verify ``X-Mynth-Signature`` (several ``v1`` during rotation); return the delivery id."""
    header = headers.get("x-mynth-signature")
    if not header:
        raise SignatureError("missing X-Mynth-Signature", cause="missing_header")
    stamp: str | None = None
    offered: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not value:
            raise SignatureError("malformed X-Mynth-Signature", cause="malformed")
        if key == "t":
            stamp = value
        elif key == "v1":
            offered.append(value.lower())
    if stamp is None or not offered:
        raise SignatureError("X-Mynth-Signature lacks t= or v1=", cause="malformed")
    ts = check_timestamp(stamp, tolerance, now)
    for secret in secrets:
        expected = mynth_sign(secret, ts, body).rsplit("v1=", 1)[1]
        if any(_same(expected, value) for value in offered):
            return headers.get("x-mynth-delivery")
    raise SignatureError("signature does not match", cause="signature")


# --- Black Forest Labs --------------------------------------------------------------------------


def bfl_sign(secret: str, body: bytes) -> str:
    """``X-BFL-Signature`` value: ``sha256=<hex HMAC-SHA256(secret, raw body)>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_bfl(headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> None:
    """Either documented proof: an HMAC of the body in ``X-BFL-Signature``, or the secret itself
    echoed in ``X-Webhook-Secret`` (BFL's SDK checks only this one). When both arrive, one that
    holds is enough; every comparison is constant-time. Neither carries a timestamp, so replay
    protection is the delivery de-duplication."""
    signature = headers.get("x-bfl-signature")
    echoed = headers.get("x-webhook-secret")
    if signature is None and echoed is None:
        raise SignatureError("missing X-BFL-Signature or X-Webhook-Secret", cause="missing_header")
    failure = SignatureError("signature does not match", cause="signature")
    if signature is not None:
        scheme, sep, value = signature.strip().partition("=")
        if scheme.lower() != "sha256" or not sep or not value:
            failure = SignatureError("malformed X-BFL-Signature", cause="malformed")
        else:
            for secret in secrets:
                if _same(bfl_sign(secret, body), f"sha256={value.lower()}"):
                    return
    if echoed is not None:
        if not echoed:
            failure = SignatureError("empty X-Webhook-Secret", cause="malformed")
        else:
            for secret in secrets:
                if _same(secret, echoed):
                    return
            if signature is None:
                failure = SignatureError("webhook secret does not match", cause="signature")
    raise failure


# --- fal: ED25519 against a JWKS ------------------------------------------------------------------


def _fal_message(headers: Mapping[str, str], body: bytes) -> tuple[bytes, str]:
    request_id = headers.get("x-fal-webhook-request-id")
    user_id = headers.get("x-fal-webhook-user-id")
    stamp = headers.get("x-fal-webhook-timestamp")
    signature = headers.get("x-fal-webhook-signature")
    if not request_id or not user_id or not stamp or not signature:
        raise SignatureError("missing X-Fal-Webhook-* headers", cause="missing_header")
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{stamp}\n{digest}".encode(), signature


def fal_sign(private_key: Any, request_id: str, user_id: str, timestamp: int, body: bytes) -> str:
    """Hex ED25519 signature as fal sends it (the simulator signs with this)."""
    message = f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}"
    return str(private_key.sign(message.encode()).hex())


def jwk_public_key(jwk: Mapping[str, Any]) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "x" not in jwk:
        raise ValueError("not an Ed25519 OKP key")
    raw = base64.urlsafe_b64decode(str(jwk["x"]) + "=" * (-len(str(jwk["x"])) % 4))
    return Ed25519PublicKey.from_public_bytes(raw)


def public_jwk(public_key: Any, kid: str = "sim") -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig"}


class JwksCache:
    """fal's published keys, fetched through ``fetch_json`` and kept for ``ttl`` seconds; a
    signature that matches no cached key triggers one refresh (key rotation)."""

    def __init__(self, fetch_json: Callable[[], Awaitable[Any]], *, ttl: float = 3600.0) -> None:
        self._fetch = fetch_json
        self.ttl = ttl
        self._keys: list[Any] = []
        self._at = 0.0

    async def keys(self, *, refresh: bool = False) -> list[Any]:
        if refresh or not self._keys or time.monotonic() - self._at > self.ttl:
            data = await self._fetch()
            found = []
            for jwk in (data or {}).get("keys", []) if isinstance(data, dict) else []:
                try:
                    found.append(jwk_public_key(jwk))
                except (ValueError, TypeError):
                    continue
            self._keys, self._at = found, time.monotonic()
        return self._keys


async def verify_fal(
    headers: Mapping[str, str],
    body: bytes,
    jwks: JwksCache,
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> str:
    """Verify fal's headers; return the request id (the delivery key's base)."""
    from cryptography.exceptions import InvalidSignature

    message, signature = _fal_message(headers, body)
    check_timestamp(headers.get("x-fal-webhook-timestamp"), tolerance, now)
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        raise SignatureError("X-Fal-Webhook-Signature is not hex", cause="malformed") from None
    for refresh in (False, True):
        for key in await jwks.keys(refresh=refresh):
            try:
                key.verify(raw, message)
            except InvalidSignature:
                continue
            return headers.get("x-fal-webhook-request-id") or ""
    raise SignatureError("signature matches no published key", cause="signature")


# --- public access tokens ------------------------------------------------------------------------


def access_token(keys: Sequence[str], task_id: str) -> str:
    return str(URLSafeTimedSerializer(_rotation(keys), salt=ACCESS_SALT).dumps(task_id))


def verify_access_token(keys: Sequence[str], token: str, task_id: str, max_age: int) -> None:
    try:
        data = URLSafeTimedSerializer(_rotation(keys), salt=ACCESS_SALT).loads(
            token, max_age=max_age
        )
    except SignatureExpired:
        raise Unauthorized("access token expired") from None
    except BadSignature:
        raise Unauthorized("invalid access token") from None
    if not isinstance(data, str) or not _same(data, task_id):
        raise Unauthorized("access token is for another task")


# --- public_url self-probe ------------------------------------------------------------------------

PROBE_SALT = b"receiver.probe.v1:"


def probe_answer(keys: Sequence[str], nonce: str) -> str:
    """What ``/healthz?probe=nonce`` answers: proves the server holds ``keys[0]`` (a salt of
    its own, so it can never stand in for a hook token, access token or task secret)."""
    return hmac.new(keys[0].encode(), PROBE_SALT + nonce.encode(), hashlib.sha256).hexdigest()


def probe_matches(keys: Sequence[str], nonce: str, answer: str) -> bool:
    return any(_same(probe_answer([key], nonce), answer) for key in keys)
