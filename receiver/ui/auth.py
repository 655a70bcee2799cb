"""Console sign-in: an API key exchanged for a signed session cookie, and CSRF tokens.

The cookie holds a hash of the key (never the key), a CSRF token and the sign-in time,
signed with ``secret_keys`` by itsdangerous (any key verifies, so rotation keeps sessions).
Each request checks the signature and age, and that the key is still configured: removing a
key from the configuration ends its sessions. Whether a session is read-only is decided from
the configuration at each request, not from the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from ..config import Settings
from ..errors import Forbidden, Unauthorized

COOKIE = "receiver_console"
LOGIN_COOKIE = "receiver_console_login"
SESSION_SALT = "receiver.console.session"
LOGIN_SALT = "receiver.console.login"
LOGIN_SECONDS = 3600  # a sign-in form stays usable this long


@dataclass(frozen=True)
class Session:
    key_hash: str
    csrf: str
    read_only: bool


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _serializer(settings: Settings, salt: str) -> URLSafeTimedSerializer:
    # itsdangerous signs with the last key and verifies with all; ours signs with the first.
    return URLSafeTimedSerializer(list(reversed(settings.secret_keys)), salt=salt)


def match_key(settings: Settings, given: str) -> Session | None:
    """A fresh session when ``given`` is an API key or a read-only console key."""
    full = read_only = False
    for key in settings.api_keys:
        full |= hmac.compare_digest(given.encode(), key.encode())
    for key in settings.console.read_only_keys:
        read_only |= hmac.compare_digest(given.encode(), key.encode())
    if not (full or read_only):
        return None
    return Session(key_hash(given), secrets.token_urlsafe(24), read_only)


def _secure(settings: Settings) -> bool:
    return settings.public_url.startswith("https://")


def set_session(response: Response, settings: Settings, session: Session) -> None:
    value = _serializer(settings, SESSION_SALT).dumps({"k": session.key_hash, "c": session.csrf})
    response.set_cookie(
        COOKIE,
        str(value),
        max_age=settings.console.session_seconds,
        path="/ui",
        httponly=True,
        secure=_secure(settings),
        samesite="lax",
    )


def clear_session(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        COOKIE, path="/ui", httponly=True, secure=_secure(settings), samesite="lax"
    )


def current_session(request: Request, settings: Settings) -> Session | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = _serializer(settings, SESSION_SALT).loads(
            raw, max_age=settings.console.session_seconds
        )
    except BadSignature:  # also SignatureExpired
        return None
    if not isinstance(data, dict):
        return None
    kh, csrf = data.get("k"), data.get("c")
    if not isinstance(kh, str) or not isinstance(csrf, str):
        return None
    full = {key_hash(k) for k in settings.api_keys}
    read_only = {key_hash(k) for k in settings.console.read_only_keys}
    if kh not in full | read_only:
        return None  # the key was removed from the configuration
    return Session(kh, csrf, kh in read_only)


def require_session(request: Request, settings: Settings) -> Session:
    session = current_session(request, settings)
    if session is None:
        raise Unauthorized("sign in to the console first")
    return session


def check_csrf(session: Session, token: object) -> None:
    if not isinstance(token, str) or not hmac.compare_digest(token, session.csrf):
        raise Forbidden("missing or wrong CSRF token; reload the page and try again")


def require_writer(session: Session) -> None:
    if session.read_only:
        raise Forbidden("this key is read-only in the console")


# --- the sign-in form's own CSRF token (double submit: a signed cookie and a form field) ------


def login_token(settings: Settings) -> tuple[str, str]:
    """(token for the form, signed value for the cookie)."""
    token = secrets.token_urlsafe(24)
    return token, str(_serializer(settings, LOGIN_SALT).dumps(token))


def set_login_cookie(response: Response, settings: Settings, signed: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        signed,
        max_age=LOGIN_SECONDS,
        path="/ui",
        httponly=True,
        secure=_secure(settings),
        samesite="lax",
    )


def check_login_token(request: Request, settings: Settings, token: object) -> None:
    raw = request.cookies.get(LOGIN_COOKIE, "")
    try:
        expected = _serializer(settings, LOGIN_SALT).loads(raw, max_age=LOGIN_SECONDS)
    except BadSignature:
        expected = None
    if (
        not isinstance(expected, str)
        or not isinstance(token, str)
        or not hmac.compare_digest(expected, token)
    ):
        raise Forbidden("the sign-in form expired or lacks its CSRF token; reload it")
