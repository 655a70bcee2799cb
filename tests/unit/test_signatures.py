"""Every scheme in receiver/signatures.py: Standard Webhooks (known answer, rotation,
tolerance, cross-checked with the reference library), Mynth's older ``X-Mynth-Signature``,
both BFL forms, fal's ED25519 against a JWKS, our URL tokens, per-task secrets and access
tokens. Each refusal must be a SignatureError (or Unauthorized) with the right cause."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from itsdangerous import TimestampSigner
from standardwebhooks import Webhook

from receiver.errors import SignatureError, Unauthorized
from receiver.signatures import (
    JwksCache,
    access_token,
    bfl_sign,
    fal_sign,
    format_secret,
    hook_token,
    jwk_public_key,
    mynth_sign,
    public_jwk,
    standard_sign,
    task_secrets,
    verify_access_token,
    verify_bfl,
    verify_fal,
    verify_hook_token,
    verify_mynth_legacy,
    verify_standard,
)

KEYS = ["first-key-0123456789abcdef", "older-key-0123456789abcdef"]

# --- Standard Webhooks ----------------------------------------------------------------------

KAT_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
KAT_TS = 1614265330
KAT_BODY = b'{"test": 2432232314}'
KAT_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KAT_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def new_whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def std_headers(sig: str, msg_id: str = KAT_ID, ts: int = KAT_TS) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def test_standard_known_answer() -> None:
    assert standard_sign(KAT_SECRET, KAT_ID, KAT_TS, KAT_BODY) == KAT_SIG
    got = verify_standard(std_headers(KAT_SIG), KAT_BODY, [KAT_SECRET], now=KAT_TS + 10)
    assert got == KAT_ID


def test_standard_matches_the_reference_library() -> None:
    secret, msg_id, ts = new_whsec(), "msg_x", int(time.time())
    body = b'{"a": [1, 2, "\\u00e9"]}'
    reference = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    assert standard_sign(secret, msg_id, ts, body) == reference
    Webhook(secret).verify(body, std_headers(standard_sign(secret, msg_id, ts, body), msg_id, ts))


def test_standard_rotation_any_offered_signature_and_any_secret() -> None:
    old, new = new_whsec(), new_whsec()
    other = standard_sign(new_whsec(), KAT_ID, KAT_TS, KAT_BODY)
    ours = standard_sign(old, KAT_ID, KAT_TS, KAT_BODY)
    header = f"{other} v2,ignored {ours}"
    assert verify_standard(std_headers(header), KAT_BODY, [new, old], now=KAT_TS) == KAT_ID
    with pytest.raises(SignatureError) as caught:
        verify_standard(std_headers(other), KAT_BODY, [new, old], now=KAT_TS)
    assert caught.value.cause == "signature"


@pytest.mark.parametrize("skew", [301, -301, 3600])
def test_standard_timestamp_tolerance_both_ways(skew: int) -> None:
    verify_standard(std_headers(KAT_SIG), KAT_BODY, [KAT_SECRET], now=KAT_TS + 300)
    verify_standard(std_headers(KAT_SIG), KAT_BODY, [KAT_SECRET], now=KAT_TS - 300)
    with pytest.raises(SignatureError) as caught:
        verify_standard(std_headers(KAT_SIG), KAT_BODY, [KAT_SECRET], now=KAT_TS + skew)
    assert caught.value.cause == "stale"


def test_standard_tolerance_is_configurable() -> None:
    with pytest.raises(SignatureError):
        verify_standard(std_headers(KAT_SIG), KAT_BODY, [KAT_SECRET], tolerance=5, now=KAT_TS + 6)
    verify_standard(std_headers(KAT_SIG), KAT_BODY, [KAT_SECRET], tolerance=5, now=KAT_TS + 5)


def test_standard_changed_byte_or_id_fails() -> None:
    with pytest.raises(SignatureError):
        verify_standard(std_headers(KAT_SIG), b'{"test": 2432232315}', [KAT_SECRET], now=KAT_TS)
    with pytest.raises(SignatureError):
        verify_standard(
            std_headers(KAT_SIG, msg_id=KAT_ID + "x"), KAT_BODY, [KAT_SECRET], now=KAT_TS
        )


@pytest.mark.parametrize(
    ("headers", "cause"),
    [
        ({"webhook-timestamp": str(KAT_TS), "webhook-signature": KAT_SIG}, "missing_header"),
        ({"webhook-id": KAT_ID, "webhook-timestamp": str(KAT_TS)}, "missing_header"),
        ({"webhook-id": KAT_ID, "webhook-signature": KAT_SIG}, "missing_header"),
        (std_headers(KAT_SIG) | {"webhook-timestamp": "yesterday"}, "malformed"),
        (std_headers("v2,abc"), "malformed"),
        (std_headers("v1,"), "malformed"),
    ],
)
def test_standard_missing_or_malformed_headers(headers: dict[str, str], cause: str) -> None:
    with pytest.raises(SignatureError) as caught:
        verify_standard(headers, KAT_BODY, [KAT_SECRET], now=KAT_TS)
    assert caught.value.cause == cause


def test_standard_secret_that_is_not_base64_is_a_config_error() -> None:
    with pytest.raises(SignatureError) as caught:
        standard_sign("whsec_***not base64***", KAT_ID, KAT_TS, KAT_BODY)
    assert caught.value.cause == "config"


# --- Mynth, older scheme ------------------------------------------------------------------------


def test_mynth_sign_is_hmac_of_timestamp_dot_body() -> None:
    body, ts = b'{"event":"task.image.generate.completed"}', 1700000000
    expected = hmac.new(b"wbs_secret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert mynth_sign("wbs_secret", ts, body) == f"t={ts},v1={expected}"


def test_mynth_valid_and_rotation() -> None:
    body, now = b'{"x":1}', int(time.time())
    good = mynth_sign("wbs_new", now, body)
    headers = {"x-mynth-signature": good, "x-mynth-delivery": "dlv_1"}
    assert verify_mynth_legacy(headers, body, ["wbs_old", "wbs_new"], now=now) == "dlv_1"
    # Several v1 entries (sender rotating): any match passes; uppercase hex is accepted.
    stale_sig = mynth_sign("wbs_gone", now, body).split("v1=")[1]
    digest = good.split("v1=")[1].upper()
    several = {"x-mynth-signature": f"t={now},v1={stale_sig},v1={digest}"}
    assert verify_mynth_legacy(several, body, ["wbs_new"], now=now) is None


@pytest.mark.parametrize("skew", [301, -301])
def test_mynth_tolerance(skew: int) -> None:
    body, ts = b"{}", 1700000000
    headers = {"x-mynth-signature": mynth_sign("s", ts, body)}
    with pytest.raises(SignatureError) as caught:
        verify_mynth_legacy(headers, body, ["s"], now=ts + skew)
    assert caught.value.cause == "stale"


@pytest.mark.parametrize(
    ("header", "cause"),
    [
        (None, "missing_header"),
        ("", "missing_header"),
        ("v1=abcd", "malformed"),
        ("t=1700000000", "malformed"),
        ("t=1700000000,v1", "malformed"),
        ("t=soon,v1=abcd", "malformed"),
    ],
)
def test_mynth_missing_or_malformed(header: str | None, cause: str) -> None:
    headers = {} if header is None else {"x-mynth-signature": header}
    with pytest.raises(SignatureError) as caught:
        verify_mynth_legacy(headers, b"{}", ["s"], now=1700000000)
    assert caught.value.cause == cause


def test_mynth_wrong_secret_or_changed_byte() -> None:
    body, ts = b'{"a":1}', 1700000000
    headers = {"x-mynth-signature": mynth_sign("s", ts, body)}
    for secrets, data in ((["other"], body), (["s"], b'{"a":2}')):
        with pytest.raises(SignatureError) as caught:
            verify_mynth_legacy(headers, data, secrets, now=ts)
        assert caught.value.cause == "signature"


# --- Black Forest Labs --------------------------------------------------------------------------


def test_bfl_hmac_form() -> None:
    body = b'{"id":"t1","status":"Ready"}'
    expected = hmac.new(b"sek", body, hashlib.sha256).hexdigest()
    assert bfl_sign("sek", body) == f"sha256={expected}"
    verify_bfl({"x-bfl-signature": bfl_sign("sek", body)}, body, ["old", "sek"])
    verify_bfl({"x-bfl-signature": f"SHA256={expected.upper()}"}, body, ["sek"])


def test_bfl_echoed_secret_form() -> None:
    verify_bfl({"x-webhook-secret": "sek"}, b"{}", ["old", "sek"])
    with pytest.raises(SignatureError) as caught:
        verify_bfl({"x-webhook-secret": "sel"}, b"{}", ["sek"])
    assert caught.value.cause == "signature"


def test_bfl_either_proof_holding_is_enough_when_both_are_present() -> None:
    body = b"{}"
    verify_bfl({"x-bfl-signature": bfl_sign("bad", body), "x-webhook-secret": "sek"}, body, ["sek"])
    verify_bfl({"x-bfl-signature": bfl_sign("sek", body), "x-webhook-secret": "bad"}, body, ["sek"])
    with pytest.raises(SignatureError):
        verify_bfl(
            {"x-bfl-signature": bfl_sign("bad", body), "x-webhook-secret": "bad"}, body, ["sek"]
        )


@pytest.mark.parametrize(
    ("headers", "cause"),
    [
        ({}, "missing_header"),
        ({"x-bfl-signature": "md5=abcd"}, "malformed"),
        ({"x-bfl-signature": "sha256="}, "malformed"),
        ({"x-bfl-signature": "abcd"}, "malformed"),
        ({"x-webhook-secret": ""}, "malformed"),
        ({"x-bfl-signature": bfl_sign("other", b"{}")}, "signature"),
        ({"x-bfl-signature": bfl_sign("sek", b"{ }")}, "signature"),
    ],
)
def test_bfl_refusals(headers: dict[str, str], cause: str) -> None:
    with pytest.raises(SignatureError) as caught:
        verify_bfl(headers, b"{}", ["sek"])
    assert caught.value.cause == cause


# --- fal: ED25519 against a JWKS ---------------------------------------------------------------


class Jwks:
    """A key set behind a counting fetch function."""

    def __init__(self, *keys: Ed25519PrivateKey, extra: list[Any] | None = None) -> None:
        self.keys = list(keys)
        self.extra = extra or []
        self.fetches = 0

    async def fetch(self) -> Any:
        self.fetches += 1
        return {"keys": [*self.extra, *(public_jwk(k.public_key()) for k in self.keys)]}


def fal_headers(
    key: Ed25519PrivateKey, body: bytes, ts: int, request_id: str = "req-1", user: str = "u-1"
) -> dict[str, str]:
    return {
        "x-fal-webhook-request-id": request_id,
        "x-fal-webhook-user-id": user,
        "x-fal-webhook-timestamp": str(ts),
        "x-fal-webhook-signature": fal_sign(key, request_id, user, ts, body),
    }


FAL_BODY = b'{"request_id":"req-1","status":"OK","payload":{"images":[]}}'


def test_fal_sign_covers_the_documented_message() -> None:
    key, ts = Ed25519PrivateKey.generate(), 1700000000
    signature = bytes.fromhex(fal_sign(key, "req-1", "u-1", ts, FAL_BODY))
    message = f"req-1\nu-1\n{ts}\n{hashlib.sha256(FAL_BODY).hexdigest()}".encode()
    key.public_key().verify(signature, message)  # raises if the message differs


def test_jwk_round_trip_and_refusal_of_other_key_types() -> None:
    key = Ed25519PrivateKey.generate()
    jwk = public_jwk(key.public_key(), kid="a")
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and "=" not in jwk["x"]
    restored = jwk_public_key(jwk)
    restored.verify(key.sign(b"m"), b"m")
    with pytest.raises(ValueError):
        jwk_public_key({"kty": "RSA", "n": "x", "e": "AQAB"})


@pytest.mark.anyio
async def test_fal_valid_signature_passes_with_any_key_of_the_set() -> None:
    key, now = Ed25519PrivateKey.generate(), int(time.time())
    rsa_like = {"kty": "RSA", "n": "abc", "e": "AQAB"}  # skipped, not fatal
    jwks = Jwks(Ed25519PrivateKey.generate(), key, extra=[rsa_like])
    cache = JwksCache(jwks.fetch)
    assert await verify_fal(fal_headers(key, FAL_BODY, now), FAL_BODY, cache) == "req-1"
    assert await verify_fal(fal_headers(key, FAL_BODY, now), FAL_BODY, cache) == "req-1"
    assert jwks.fetches == 1  # cached


@pytest.mark.anyio
@pytest.mark.parametrize("index", [0, 20, len(FAL_BODY) - 1])
async def test_fal_changed_body_byte_fails(index: int) -> None:
    key, now = Ed25519PrivateKey.generate(), int(time.time())
    changed = bytearray(FAL_BODY)
    changed[index] ^= 0x01
    with pytest.raises(SignatureError) as caught:
        await verify_fal(
            fal_headers(key, FAL_BODY, now), bytes(changed), JwksCache(Jwks(key).fetch)
        )
    assert caught.value.cause == "signature"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-fal-webhook-request-id", "req-2"),
        ("x-fal-webhook-user-id", "u-2"),
        ("x-fal-webhook-signature", None),  # one byte of the signature flipped
    ],
)
async def test_fal_changed_header_fails(header: str, value: str | None) -> None:
    key, now = Ed25519PrivateKey.generate(), int(time.time())
    headers = fal_headers(key, FAL_BODY, now)
    if value is None:
        sig = bytearray.fromhex(headers[header])
        sig[5] ^= 0x80
        value = sig.hex()
    headers[header] = value
    with pytest.raises(SignatureError) as caught:
        await verify_fal(headers, FAL_BODY, JwksCache(Jwks(key).fetch))
    assert caught.value.cause == "signature"


@pytest.mark.anyio
async def test_fal_changed_timestamp_fails_even_within_tolerance() -> None:
    key, now = Ed25519PrivateKey.generate(), int(time.time())
    headers = fal_headers(key, FAL_BODY, now)
    headers["x-fal-webhook-timestamp"] = str(now - 1)
    with pytest.raises(SignatureError) as caught:
        await verify_fal(headers, FAL_BODY, JwksCache(Jwks(key).fetch))
    assert caught.value.cause == "signature"


@pytest.mark.anyio
async def test_fal_wrong_key_fails_after_one_refresh() -> None:
    key, other, now = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), int(time.time())
    jwks = Jwks(other)
    with pytest.raises(SignatureError) as caught:
        await verify_fal(fal_headers(key, FAL_BODY, now), FAL_BODY, JwksCache(jwks.fetch))
    assert caught.value.cause == "signature"
    assert jwks.fetches == 2  # the cached set, then one refresh for rotation


@pytest.mark.anyio
async def test_fal_rotated_key_is_found_by_the_refresh() -> None:
    old, new, now = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), int(time.time())
    jwks = Jwks(old)
    cache = JwksCache(jwks.fetch)
    await verify_fal(fal_headers(old, FAL_BODY, now), FAL_BODY, cache)
    jwks.keys = [new]
    await verify_fal(fal_headers(new, FAL_BODY, now), FAL_BODY, cache)
    assert jwks.fetches == 2


@pytest.mark.anyio
async def test_fal_cache_expires_after_ttl() -> None:
    key, now = Ed25519PrivateKey.generate(), int(time.time())
    jwks = Jwks(key)
    cache = JwksCache(jwks.fetch, ttl=0.0)
    await verify_fal(fal_headers(key, FAL_BODY, now), FAL_BODY, cache)
    time.sleep(0.01)
    await verify_fal(fal_headers(key, FAL_BODY, now), FAL_BODY, cache)
    assert jwks.fetches == 2


@pytest.mark.anyio
@pytest.mark.parametrize("skew", [-301, 301, -86400, 86400])
async def test_fal_stale_and_future_timestamps_fail(skew: int) -> None:
    key, now = Ed25519PrivateKey.generate(), int(time.time())
    headers = fal_headers(key, FAL_BODY, now + skew)  # validly signed, but out of tolerance
    with pytest.raises(SignatureError) as caught:
        await verify_fal(headers, FAL_BODY, JwksCache(Jwks(key).fetch), now=now)
    assert caught.value.cause == "stale"
    # Inside the tolerance the same signature passes.
    await verify_fal(headers, FAL_BODY, JwksCache(Jwks(key).fetch), now=now + skew)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "missing",
    [
        "x-fal-webhook-request-id",
        "x-fal-webhook-user-id",
        "x-fal-webhook-timestamp",
        "x-fal-webhook-signature",
    ],
)
async def test_fal_missing_header_fails(missing: str) -> None:
    key, now = Ed25519PrivateKey.generate(), int(time.time())
    headers = {k: v for k, v in fal_headers(key, FAL_BODY, now).items() if k != missing}
    with pytest.raises(SignatureError) as caught:
        await verify_fal(headers, FAL_BODY, JwksCache(Jwks(key).fetch))
    assert caught.value.cause == "missing_header"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("header", "value", "cause"),
    [
        ("x-fal-webhook-signature", "not-hex!", "malformed"),
        ("x-fal-webhook-signature", "abcd", "signature"),  # hex, but no valid signature
        ("x-fal-webhook-timestamp", "12:00", "malformed"),
        ("x-fal-webhook-timestamp", "", "missing_header"),
    ],
)
async def test_fal_malformed_header_fails(header: str, value: str, cause: str) -> None:
    key, now = Ed25519PrivateKey.generate(), int(time.time())
    headers = fal_headers(key, FAL_BODY, now) | {header: value}
    with pytest.raises(SignatureError) as caught:
        await verify_fal(headers, FAL_BODY, JwksCache(Jwks(key).fetch))
    assert caught.value.cause == cause


# --- URL tokens, per-task secrets, access tokens --------------------------------------------


def test_hook_token_binds_task_and_provider_and_rotates() -> None:
    token = hook_token(KEYS, "tsk_1", "fal")
    assert verify_hook_token(KEYS, token, "fal") == "tsk_1"
    assert verify_hook_token([KEYS[1], KEYS[0]], token, "fal") == "tsk_1"  # order-independent
    assert verify_hook_token(KEYS[1:], hook_token(KEYS[1:], "tsk_1", "fal"), "fal") == "tsk_1"
    with pytest.raises(SignatureError):
        verify_hook_token(KEYS, token, "bfl")
    with pytest.raises(SignatureError):
        verify_hook_token(["another-key-0123456789abcdef"], token, "fal")
    flipped = token[:-10] + ("A" if token[-10] != "A" else "B") + token[-9:]
    with pytest.raises(SignatureError):
        verify_hook_token(KEYS, flipped, "fal")


def test_task_secrets_per_key_and_format() -> None:
    whsec = task_secrets(KEYS, "tsk_1", "whsec")
    hexed = task_secrets(KEYS, "tsk_1", "hex")
    assert len(whsec) == len(hexed) == 2 and whsec[0] != whsec[1]
    assert all(s.startswith("whsec_") for s in whsec)
    assert base64.b64decode(whsec[0].removeprefix("whsec_")) == bytes.fromhex(hexed[0])
    assert task_secrets(KEYS, "tsk_2", "hex")[0] != hexed[0]
    assert task_secrets(KEYS[:1], "tsk_1", "hex") == hexed[:1]  # stable across key additions
    assert format_secret(b"\x00\xff", "hex") == "00ff"


def test_access_token_scope_and_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    token = access_token(KEYS, "tsk_1")
    verify_access_token(KEYS, token, "tsk_1", max_age=60)
    with pytest.raises(Unauthorized):
        verify_access_token(KEYS, token, "tsk_2", max_age=60)
    with pytest.raises(Unauthorized):
        verify_access_token(["another-key-0123456789abcdef"], token, "tsk_1", max_age=60)
    # A token issued 61 s ago (itsdangerous stamps it with get_timestamp), instead of sleeping.
    issued = int(time.time()) - 61
    with monkeypatch.context() as m:
        m.setattr(TimestampSigner, "get_timestamp", lambda self: issued)
        old = access_token(KEYS, "tsk_1")
    with pytest.raises(Unauthorized, match="expired"):
        verify_access_token(KEYS, old, "tsk_1", max_age=60)
