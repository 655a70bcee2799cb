"""Replicate: predictions with a ``webhook``, signed with Standard Webhooks.

Replicate signs every webhook with one secret per account (``GET /v1/webhooks/default/secret``
→ ``{"key": "whsec_…"}``), never with a secret chosen per request, and its API has no field
to pass one. So a callback is accepted when its Standard Webhooks signature matches:

1. ``providers.replicate.webhook_secret`` when configured, else the account secret fetched
   once with the API key from ``/v1/webhooks/default/secret`` (cached; fetched again when
   nothing matches, for rotation, at most once a minute so forgeries cannot drive requests
   to Replicate; option ``fetch_webhook_secret = false`` turns fetching off);
2. or any of the per-task secrets (``secret_format = "whsec"``) the core passes in, so a
   sender that does sign per task is accepted too.

With neither a configured nor a fetchable account secret, the task-bound URL token is the only
check (it is checked before us). Outputs are deleted one hour after the prediction, so
each output URL's deadline is ``completed_at`` + 1 h (``url_lifetime`` from receipt when the
prediction carries no timestamps).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ..errors import BadRequest, ProviderError, SignatureError, ValidationFailed
from ..models import Outcome, OutcomeStatus, ResultImage, Task
from ..signatures import verify_standard
from .base import Callback, CallbackTarget, Provider, Submission, callback_json, json_body

_OWNER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION = re.compile(r"^[0-9a-f]{64}$")
_OWNER_NAME_VERSION = re.compile(
    r"^(?P<model>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<version>[0-9a-f]{64})$"
)
_PENDING = {"starting", "processing", "queued"}
_MODERATED = re.compile(r"nsfw|moderat|safety|flagged|content.?policy|sensitive", re.I)
_SEED_LOG = re.compile(r"(?:using )?seed[:=\s]+(\d+)", re.I)
# API outputs are deleted after one hour.
OUTPUT_LIFETIME = 3600.0
# A signature that matches nothing fetches the account secret again (it may have rotated),
# but not more often than this, so forged callbacks cannot make us hammer Replicate's API.
SECRET_REFRESH_SECONDS = 60.0


class ReplicateProvider(Provider):
    name = "replicate"
    default_base_url = "https://api.replicate.com"
    default_model = "black-forest-labs/flux-dev"
    url_lifetime = OUTPUT_LIFETIME
    callback_grace = 300.0
    secret_format = "whsec"
    options = ("fetch_webhook_secret",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._account_secret: str | None = None
        self._fetched_at = 0.0

    # --- request side ---------------------------------------------------------------------------

    def validate(self, model: str | None, prompt: str, params: Mapping[str, Any]) -> None:
        """``model`` is ``owner/name``, ``owner/name:version`` or a version id; ``params`` is
        ``{"input": {...}}`` passed through (the task's prompt becomes ``input.prompt``)."""
        model = model or self.default_model
        if not (
            _OWNER_NAME.match(model or "")
            or _VERSION.match(model or "")
            or _OWNER_NAME_VERSION.match(model or "")
        ):
            raise ValidationFailed(
                "model", "must be owner/name, owner/name:version or a 64-hex version id"
            )
        if not prompt.strip():
            raise ValidationFailed("prompt", "must not be empty")
        self.reject_unknown(params, ("input", "version"))
        inputs = params.get("input", {})
        if not isinstance(inputs, dict):
            raise ValidationFailed("params.input", "must be an object")
        seed = inputs.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValidationFailed("params.input.seed", "must be an integer")
        prompt_in = inputs.get("prompt")
        if prompt_in is not None and prompt_in != prompt:
            raise ValidationFailed("params.input.prompt", "give the prompt once, at the top level")
        version = params.get("version")
        if version is not None and (not isinstance(version, str) or not _VERSION.match(version)):
            raise ValidationFailed("params.version", "must be a 64-hex version id")

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.settings.api_key or ''}"}

    async def submit(self, task: Task, callback: CallbackTarget | None) -> Submission:
        """``POST /v1/models/{owner}/{name}/predictions`` for an official model, else
        ``POST /v1/predictions`` with ``version``; webhook only on completion."""
        model = task.model or self.default_model or ""
        inputs = dict(task.params.get("input") or {})
        inputs["prompt"] = task.prompt
        body: dict[str, Any] = {"input": inputs}
        version = task.params.get("version")
        with_version = _OWNER_NAME_VERSION.match(model)
        if with_version:
            version = with_version["version"]
        elif _VERSION.match(model):
            version = model
        if version:
            url = f"{self.base_url}/v1/predictions"
            body["version"] = version
        else:
            url = f"{self.base_url}/v1/models/{model}/predictions"
        if callback is not None:
            body["webhook"] = callback.url
            body["webhook_events_filter"] = ["completed"]
        response = await self.request("POST", url, json=body, headers=self._headers())
        data = json_body(response, self.name)
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ProviderError("replicate: prediction answer has no id")
        return Submission(provider_task_id=data["id"])

    async def poll(self, task: Task) -> Outcome:
        """``GET /v1/predictions/{id}``."""
        if not task.provider_task_id:
            raise ProviderError("replicate: task has no prediction id", maybe_sent=False)
        response = await self.request(
            "GET",
            f"{self.base_url}/v1/predictions/{task.provider_task_id}",
            headers=self._headers(),
        )
        return parse_prediction(json_body(response, self.name))

    # --- callback side --------------------------------------------------------------------------

    async def _account_secrets(self, *, refresh: bool = False) -> list[str]:
        if self.settings.webhook_secret:
            return [self.settings.webhook_secret]
        if not self.settings.api_key or not self.settings.option("fetch_webhook_secret", True):
            return []
        stale = refresh and time.monotonic() - self._fetched_at >= SECRET_REFRESH_SECONDS
        if self._account_secret is None or stale:
            response = await self.request(
                "GET", f"{self.base_url}/v1/webhooks/default/secret", headers=self._headers()
            )
            data = json_body(response, self.name)
            key = data.get("key") if isinstance(data, dict) else None
            if not isinstance(key, str) or not key.startswith("whsec_"):
                raise ProviderError("replicate: webhook secret answer has no whsec_ key")
            self._account_secret = key
            self._fetched_at = time.monotonic()
        return [self._account_secret]

    async def verify_callback(
        self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]
    ) -> None:
        """Standard Webhooks with the account secret or a per-task secret (see the module)."""
        account = await self._account_secrets()
        if not account and not _signed(headers):
            return  # nothing to check against: the URL token stands alone
        if not account:
            # Signed, but we cannot know Replicate's account secret: a per-task signature is
            # checked; any other is left to the URL token.
            try:
                verify_standard(headers, body, secrets, tolerance=self.tolerance_seconds)
            except SignatureError as exc:
                if exc.cause in ("stale", "malformed", "missing_header"):
                    raise
            return
        await self._verify(headers, body, [*account, *secrets])

    async def verify_account_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """Replicate's default (account) webhook: only the account secret will do."""
        account = await self._account_secrets()
        if not account:
            raise SignatureError(
                "replicate: no webhook_secret configured for account webhooks", cause="config"
            )
        await self._verify(headers, body, account)

    async def _verify(self, headers: Mapping[str, str], body: bytes, secrets: list[str]) -> None:
        try:
            verify_standard(headers, body, secrets, tolerance=self.tolerance_seconds)
        except SignatureError as exc:
            if exc.cause != "signature" or self.settings.webhook_secret:
                raise
            # The account secret may have been rotated since we fetched it.
            before = self._account_secret
            fresh = await self._account_secrets(refresh=True)
            if fresh == [before]:
                raise
            verify_standard(headers, body, [*fresh, *secrets[1:]], tolerance=self.tolerance_seconds)

    def parse_callback(
        self, headers: Mapping[str, str], body: bytes, parsed: Any = None
    ) -> Callback:
        data = callback_json(body, parsed, self.name)
        outcome = parse_prediction(data)
        return Callback(
            delivery_key=headers.get("webhook-id") or "",
            outcome=outcome,
            provider_task_id=outcome.provider_task_id,
        )


def _signed(headers: Mapping[str, str]) -> bool:
    return bool(headers.get("webhook-signature"))


# --- parsing ----------------------------------------------------------------------------------


def parse_prediction(data: Any) -> Outcome:
    """A prediction (poll or webhook body) into an Outcome.

    ``output`` is a URL string or a list of them (a ``data:`` URI is decoded to bytes);
    ``canceled`` and ``aborted`` are failures; a failure whose error reads like a safety
    refusal is ``moderated``."""
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        raise BadRequest("replicate: prediction has no status")
    status = data["status"]
    pid = str(data["id"]) if data.get("id") else None
    model = _model(data)
    seed = _seed(data)
    if status in _PENDING:
        return Outcome(OutcomeStatus.PENDING, provider_task_id=pid, model=model, seed=seed)
    if status == "succeeded":
        images = _outputs(data.get("output"))
        if not images:
            return Outcome(
                OutcomeStatus.FAILED,
                provider_task_id=pid,
                error_code="no_output",
                error_message="prediction succeeded without any output URL",
                model=model,
            )
        return Outcome(
            OutcomeStatus.SUCCEEDED,
            images=_with_deadline(images, data),
            provider_task_id=pid,
            seed=seed,
            model=model,
        )
    if status in ("failed", "canceled", "aborted"):
        error = data.get("error")
        message = error if isinstance(error, str) and error else None
        if isinstance(error, dict):
            message = str(error.get("detail") or error.get("message") or error)
        if status != "failed":
            message = message or f"prediction {status}"
        message = message or "prediction failed"
        moderated = status == "failed" and bool(_MODERATED.search(message))
        return Outcome(
            OutcomeStatus.MODERATED if moderated else OutcomeStatus.FAILED,
            provider_task_id=pid,
            error_code="moderated" if moderated else status,
            error_message=message,
            model=model,
        )
    raise BadRequest(f"replicate: unknown prediction status {status!r}")


def _outputs(output: Any) -> tuple[ResultImage, ...]:
    items = output if isinstance(output, list) else [output]
    found: list[ResultImage] = []
    for item in items:
        if isinstance(item, str) and item.startswith(("http://", "https://")):
            found.append(ResultImage(url=item))
        elif isinstance(item, str) and item.startswith("data:"):
            header, _, payload = item.partition(",")
            try:
                raw = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                continue
            content_type = header[5:].split(";")[0] or None
            found.append(ResultImage(inline=raw, content_type=content_type))
    return tuple(found)


def _with_deadline(
    images: tuple[ResultImage, ...], data: Mapping[str, Any]
) -> tuple[ResultImage, ...]:
    """Outputs are deleted an hour after the prediction: date each URL from ``completed_at``
    (else ``created_at``), so a late webhook or poll does not stretch the deadline."""
    start = _timestamp(data.get("completed_at")) or _timestamp(data.get("created_at"))
    if start is None:
        return images
    return tuple(
        replace(img, expires_at=start + OUTPUT_LIFETIME) if img.url is not None else img
        for img in images
    )


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _model(data: Mapping[str, Any]) -> str | None:
    model = data.get("model")
    return model if isinstance(model, str) and model else None


def _seed(data: Mapping[str, Any]) -> int | None:
    inputs = data.get("input")
    if isinstance(inputs, dict):
        seed = inputs.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
    logs = data.get("logs")
    if isinstance(logs, str):
        found = _SEED_LOG.search(logs)
        if found:
            return int(found.group(1))
    return None
