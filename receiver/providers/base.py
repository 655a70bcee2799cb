"""The provider adapter family: one base class, one module per hosted API.

An adapter turns a task into the provider's request, reads the provider's answer (callback,
poll or synchronous response) into one normalized :class:`~receiver.models.Outcome`, and
verifies the provider's callback signature. httpx errors are translated to
:class:`~receiver.errors.ProviderError` here, never leaking to callers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import httpx

from .. import backoff, strictjson, tracing
from ..config import ProviderSettings
from ..errors import BadRequest, NotFound, ProviderError, ReceiverError, ValidationFailed
from ..fetch import Fetcher
from ..models import Outcome, OutcomeStatus, ResultImage, Task

# More results than any documented model returns in one task (fal and Replicate: 4 or 8).
MAX_IMAGES = 16
# Provider bodies nest a few levels; anything deeper is refused before an adapter reads it.
MAX_BODY_DEPTH = 64
MAX_URL_CHARS = 16_384
# Any expiry later than this (year 5138) is not a timestamp we understand.
MAX_TIMESTAMP = 1e11


@dataclass(frozen=True)
class CallbackTarget:
    """Where and how the provider should call us back for one task."""

    url: str
    secret: str  # the per-task webhook secret, already in the provider's format


@dataclass(frozen=True)
class Submission:
    provider_task_id: str | None
    # Synchronous providers return the final outcome with the submission.
    outcome: Outcome | None = None
    # What later polls need, kept in the ledger with the task (BFL: the polling_url).
    state: dict[str, Any] | None = None


@dataclass(frozen=True)
class Callback:
    """A parsed callback body."""

    delivery_key: str  # de-duplication key: the sender's delivery id, else a body digest
    outcome: Outcome
    provider_task_id: str | None = None


class Provider(ABC):
    """Base of every provider adapter. Subclasses set the class attributes and the methods."""

    name: ClassVar[str]
    default_base_url: ClassVar[str]
    default_model: ClassVar[str | None] = None
    # How long a result URL stays fetchable after the task completes.
    url_lifetime: ClassVar[float] = 600.0
    # False for poll-only providers (APIMart): the reconciler polls from submission on.
    delivers_callbacks: ClassVar[bool] = True
    # True when the submit response carries the result (EigenAI).
    synchronous: ClassVar[bool] = False
    # Poll a task that has had no callback for this long (configurable per provider).
    callback_grace: ClassVar[float] = 300.0
    # Formats of the per-task secret: "whsec" (Standard Webhooks) or "hex".
    secret_format: ClassVar[str] = "hex"
    # True when the provider signs per-task callbacks. Where it does not (Vtrix, Mynth's
    # per-request URLs), a callback is only a hint: its outcome is confirmed by reading the task
    # from the provider's API (``confirm_by_read``, on by default there).
    signs_callbacks: ClassVar[bool] = True
    # The provider's own options in ``[providers.<name>]``; None: not declared, so only
    # near misses of the common keys are refused (``api_kye``).
    options: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self,
        settings: ProviderSettings,
        http: httpx.AsyncClient,
        *,
        tolerance_seconds: int = 300,
    ) -> None:
        self.settings = settings
        self.http = http
        self.tolerance_seconds = tolerance_seconds
        self.base_url = (settings.base_url or self.default_base_url).rstrip("/")
        # The safe downloader, for providers that must fetch source images to upload them
        # (EigenAI's multipart editing); the runtime sets it.
        self.fetcher: Fetcher | None = None

    @property
    def confirm_by_read(self) -> bool:
        """Whether a per-task callback's outcome is taken from a read of the task rather than
        from the callback body: the setting, else on where callbacks are unsigned."""
        if not self.can_poll:
            return False
        configured = self.settings.confirm_by_read
        return (not self.signs_callbacks) if configured is None else configured

    @classmethod
    def from_settings(
        cls, settings: ProviderSettings, http: httpx.AsyncClient, *, tolerance_seconds: int = 300
    ) -> Provider:
        """The adapter with its ``[providers.<name>]`` settings, sharing the runtime's client."""
        return cls(settings, http, tolerance_seconds=tolerance_seconds)

    # --- request side ---------------------------------------------------------------------------

    @abstractmethod
    def validate(self, model: str | None, prompt: str, params: Mapping[str, Any]) -> None:
        """Raise ValidationFailed naming the field for anything outside documented limits."""

    @abstractmethod
    async def submit(self, task: Task, callback: CallbackTarget | None) -> Submission:
        """Send the task. Must not repeat a POST that may have reached the provider, except
        after a 429 (honouring Retry-After) or a refused connection."""

    async def poll(self, task: Task) -> Outcome:
        """Ask the provider for the task's current state (also refreshes result URLs)."""
        raise ProviderError(f"{self.name} cannot be polled", maybe_sent=False)

    @property
    def can_poll(self) -> bool:
        return type(self).poll is not Provider.poll

    def reparse(self, raw: bytes, content_type: str | None, task: Task) -> Outcome | None:
        """Read a kept raw answer again (``receiver replay`` of an ``unparsed_response``
        task); None where the provider keeps no raw answers."""
        return None

    # --- callback side --------------------------------------------------------------------------

    async def verify_callback(
        self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]
    ) -> None:
        """Check the provider's own signature with any of the task's ``secrets`` (rotation).

        The URL token has already been checked. The default accepts: for providers whose
        per-request callbacks are unsigned, the token is the only check. Async because some
        schemes fetch keys (fal's JWKS)."""
        return None

    def parse_callback(
        self, headers: Mapping[str, str], body: bytes, parsed: Any = None
    ) -> Callback:
        """The callback in ``body``; ``parsed`` is the body as JSON when
        :meth:`read_callback` has parsed it already (see :func:`callback_json`)."""
        raise BadRequest(f"{self.name} does not send callbacks")

    def read_callback(self, headers: Mapping[str, str], body: bytes) -> Callback:
        """:meth:`parse_callback` behind one defensive layer for every adapter: the body must
        be strict JSON within a depth budget, any crash while reading it is a 400 naming the
        provider, and the outcome is checked field by field (types, ranges, image count)."""
        parsed = None  # parsed once, strictly, and handed to the adapter
        if body.lstrip()[:1] in (b"{", b"["):
            parsed = strictjson.loads(body, max_depth=MAX_BODY_DEPTH, field_error=BadRequest)
        try:
            callback = self.parse_callback(headers, body, parsed)
        except ReceiverError:
            raise
        except Exception as exc:  # a shape the adapter did not expect: the sender's fault
            raise BadRequest(f"{self.name}: callback body not understood ({_why(exc)})") from None
        return _replaced(
            callback,
            delivery_key=_text(callback.delivery_key, 500) or "",
            outcome=check_outcome(callback.outcome, self.name),
            provider_task_id=_task_id(callback.provider_task_id, self.name),
        )

    async def checked_poll(self, task: Task) -> Outcome:
        """:meth:`poll` with the same defensive layer: an answer the adapter cannot read is a
        ProviderError (retried, then given up), never a crash."""
        try:
            outcome = await self.poll(task)
        except ReceiverError:
            raise
        except Exception as exc:
            raise ProviderError(f"{self.name}: answer not understood ({_why(exc)})") from None
        try:
            return check_outcome(outcome, self.name)
        except BadRequest as exc:
            raise ProviderError(exc.message) from None

    async def verify_account_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """Verify an account-level webhook with the configured ``webhook_secret``."""
        raise NotFound(f"{self.name} has no account-level webhooks")

    # --- helpers for subclasses -----------------------------------------------------------------

    def deadline_for(self, outcome: Outcome, received_at: float | None = None) -> float | None:
        """The earliest moment one of the outcome's URLs stops working."""
        start = received_at if received_at is not None else time.time()
        deadlines = [
            img.expires_at if img.expires_at is not None else start + self.url_lifetime
            for img in outcome.images
            if img.url is not None
        ]
        return min(deadlines) if deadlines else None

    @staticmethod
    def require_int(params: Mapping[str, Any], key: str, lo: int, hi: int | None = None) -> None:
        value = params.get(key)
        if value is None:
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < lo
            or (hi is not None and value > hi)
        ):
            bound = f"{lo} to {hi}" if hi is not None else f"at least {lo}"
            raise ValidationFailed(f"params.{key}", f"must be an integer, {bound}")

    @staticmethod
    def reject_unknown(params: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for key in params:
            if key not in allowed:
                raise ValidationFailed(f"params.{key}", "is not a parameter of this provider")

    async def request(
        self, method: str, url: str, *, retry_429: int = 3, **kwargs: Any
    ) -> httpx.Response:
        """One HTTP call with the adapter-boundary error translation.

        A POST is repeated only after 429 (Retry-After honoured) or a refused connection:
        a timeout may mean the provider got it, and a second POST could bill twice."""
        attempt = 0
        while True:
            attempt += 1
            try:
                attrs = self._span_attrs(method, url, attempt)
                with tracing.span(f"provider {method}", attrs, kind="client") as sp:
                    response = await self.http.request(method, url, **kwargs)
                    sp.set("http.response.status_code", response.status_code)
            except httpx.ConnectError as exc:
                if attempt <= retry_429:
                    await backoff.sleep(backoff.delay(attempt, 0.5, 5.0))
                    continue
                raise ProviderError(
                    f"{self.name}: cannot connect: {exc}", maybe_sent=False
                ) from exc
            except httpx.TimeoutException as exc:
                raise ProviderError(f"{self.name}: timed out: {exc}") from exc
            except httpx.HTTPError as exc:
                raise ProviderError(f"{self.name}: {exc}") from exc
            if response.status_code == 429:
                retry_after = _retry_after(response.headers.get("retry-after"))
                if attempt <= retry_429 and retry_after <= 60:
                    await backoff.sleep(retry_after)
                    continue
                raise ProviderError(
                    f"{self.name}: rate limited (429)", retry_after=retry_after, maybe_sent=False
                )
            if response.status_code >= 400:
                raise ProviderError(
                    f"{self.name}: HTTP {response.status_code}: {response.text[:300]}"
                )
            return response

    def _span_attrs(self, method: str, url: str, attempt: int) -> dict[str, Any] | None:
        """What a provider call's span may say: the host, never the path or query."""
        if not tracing.enabled():
            return None
        return {
            "receiver.provider": self.name,
            "http.request.method": method,
            "server.address": urlsplit(url).hostname or "",
            "receiver.attempt": attempt,
        }


def _retry_after(value: str | None) -> float:
    if not value:
        return 1.0
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return 1.0


def callback_json(body: bytes, parsed: Any, provider: str) -> Any:
    """A callback body as JSON: ``parsed`` when :meth:`Provider.read_callback` has parsed it
    already (strictly; it parses only an object or an array, so never to None), else parsed
    here (a direct call of ``parse_callback``, as the adapter tests make)."""
    if parsed is not None:
        return parsed
    try:
        return json.loads(body)
    except ValueError:
        raise BadRequest(f"{provider}: callback body is not JSON") from None


def json_body(response: httpx.Response, provider: str) -> Any:
    """A provider's answer as strict JSON (depth-capped, no NaN or lone surrogates)."""
    try:
        return strictjson.loads(response.content, max_depth=MAX_BODY_DEPTH, field_error=BadRequest)
    except BadRequest as exc:
        raise ProviderError(f"{provider}: response is not usable JSON: {exc.message}") from None


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(value: Any, limit: int) -> str | None:
    """Free text from a provider (error codes, messages, cost) as a clean string: an object
    where a string belongs is kept as its JSON, NUL and lone surrogates are dropped."""
    if value is None:
        return None
    if not isinstance(value, str):
        try:
            value = strictjson.dumps(value, sort_keys=True, default=str)
        except (ValueError, TypeError):
            value = repr(value)
    value = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return str(value)[:limit]


def _task_id(value: Any, provider: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > 500 or strictjson.problem(value):
        raise BadRequest(f"{provider}: the task id in the answer is not a short string")
    return value


def check_outcome(outcome: Any, provider: str, *, max_images: int = MAX_IMAGES) -> Outcome:
    """An adapter's outcome checked field by field before anything is recorded, so a value
    of the wrong type or range can never reach the ledger, a sidecar or a response."""
    if not isinstance(outcome, Outcome) or not isinstance(outcome.status, OutcomeStatus):
        raise BadRequest(f"{provider}: the answer has no status we understand")
    images = outcome.images
    if not isinstance(images, tuple | list):
        raise BadRequest(f"{provider}: the answer's images are not a list")
    if len(images) > max_images:
        raise BadRequest(
            f"{provider}: {len(images)} images in one answer, over the cap of {max_images}"
        )
    checked = []
    for i, img in enumerate(images):
        if not isinstance(img, ResultImage):
            raise BadRequest(f"{provider}: images[{i}] is not an image")
        url = img.url
        if url is not None and (
            not isinstance(url, str)
            or not url
            or len(url) > MAX_URL_CHARS
            or strictjson.problem(url)
        ):
            raise BadRequest(f"{provider}: images[{i}].url is not a usable URL")
        if img.inline is not None and not isinstance(img.inline, bytes):
            raise BadRequest(f"{provider}: images[{i}] inline data is not bytes")
        if url is None and img.inline is None:
            raise BadRequest(f"{provider}: images[{i}] has neither a URL nor data")
        expires = img.expires_at
        if expires is not None and (
            isinstance(expires, bool)
            or not isinstance(expires, int | float)
            or not math.isfinite(expires)
            or not 0 < expires < MAX_TIMESTAMP
        ):
            raise BadRequest(f"{provider}: images[{i}].expires_at is not a usable time")
        checked.append(
            _replaced(
                img,
                expires_at=float(expires) if expires is not None else None,
                content_type=_text(img.content_type, 200),
            )
        )
    seed = outcome.seed
    if (
        isinstance(seed, bool)
        or not isinstance(seed, int)
        or not (strictjson.INT_MIN <= seed <= strictjson.INT_MAX)
    ):
        seed = None
    kept = type(images) is tuple and all(a is b for a, b in zip(checked, images, strict=True))
    return _replaced(
        outcome,
        images=images if kept else tuple(checked),
        provider_task_id=_task_id(outcome.provider_task_id, provider),
        error_code=_text(outcome.error_code, 200),
        error_message=_text(outcome.error_message, 2000),
        cost=_text(outcome.cost, 100),
        seed=seed,
        model=_text(outcome.model, 200),
    )


_D = TypeVar("_D", Callback, Outcome, ResultImage)


def _replaced(value: _D, **checked: Any) -> _D:
    """``value`` with the checked fields that differ replaced; itself when none does (nearly
    always: ``dataclasses.replace`` builds a new frozen instance field by field)."""
    changed = {name: new for name, new in checked.items() if not _same(new, getattr(value, name))}
    return dataclasses.replace(value, **changed) if changed else value


def _same(new: Any, old: Any) -> bool:
    """The same value of the same type (``5 == 5.0`` but a sidecar writes them differently)."""
    return new is old or (type(new) is type(old) and new == old)
