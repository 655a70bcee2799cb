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
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

from .errors import SignatureError, Unauthorized

HOOK_SALT = "receiver.hook.v1"
ACCESS_SALT = "receiver.access.v1"


def _rotation(keys: Sequence[str]) -> list[str]:
    # itsdangerous signs with the *last* key and verifies with all; ours signs with the first.
    return list(reversed(keys))


# --- URL tokens ----------------------------------------------------------------------------------


def hook_token(keys: Sequence[str], task_id: str, provider: str) -> str:
    return str(URLSafeSerializer(_rotation(keys), salt=HOOK_SALT).dumps([task_id, provider]))


def verify_hook_token(keys: Sequence[str], token: str, provider: str) -> str:
    """Return the task id the token was issued for; SignatureError unless it is ours and for
    this provider."""
    try:
        data = URLSafeSerializer(_rotation(keys), salt=HOOK_SALT).loads(token)
    except BadSignature:
        raise SignatureError("invalid callback token", cause="token") from None
    if (
        not isinstance(data, list)
        or len(data) != 2
        or not all(isinstance(x, str) for x in data)
        or not hmac.compare_digest(data[1], provider)
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
    try:
        ts = int(raw)
    except ValueError:
        raise SignatureError("malformed timestamp", cause="malformed") from None
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
        if any(hmac.compare_digest(expected, value) for value in offered):
            return msg_id
    raise SignatureError("signature does not match", cause="signature")


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
    if not isinstance(data, str) or not hmac.compare_digest(data, task_id):
        raise Unauthorized("access token is for another task")
