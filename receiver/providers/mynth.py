"""Mynth: ``POST /image/generate`` with a per-request custom webhook, polled as a fallback.

Two ways a result reaches us, verified differently:

- The custom URL we put in ``webhook.custom[].url``. Mynth does not sign these, so the
  task-bound token in the URL (checked before the adapter runs) is the whole check.
- Account-level webhooks registered in Mynth's dashboard arrive at ``POST /v1/hooks/mynth`` and
  are signed with the account's secret (``providers.mynth.webhook_secret``): Standard Webhooks
  (``webhook-id``/``-timestamp``/``-signature``) on the newer scheme, ``X-Mynth-Signature`` on
  the older one. Either is accepted, each strictly (timestamp window, constant-time compare).

Bodies come in two shapes (newer ``{"id":"evt_…","type":…,"data":{task}}`` and older
``{"event":…,"task":{…},"result":{…}}`` / ``errors[]``) and both are read. A completed task
may still hold failed images: those are skipped, and a task with none left is a failure.
``mynth_url`` (Mynth's CDN, 7 days) is preferred over ``url`` (the account's own storage,
``null`` when the upload there failed).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..errors import BadRequest, ProviderError, SignatureError, ValidationFailed
from ..models import Outcome, OutcomeStatus, ResultImage, Task
from ..signatures import verify_mynth_legacy, verify_standard
from .base import Callback, CallbackTarget, Provider, Submission, callback_json, json_body

SEVEN_DAYS = 7 * 24 * 3600.0
MAX_PROMPT = 8192
MAX_COUNT = 20
MAX_INPUTS = 20
MAX_INPUT_URL = 2048

_PARAMS = (
    "negative_prompt",
    "count",
    "inputs",
    "output",
    "destination",
    "rating",
    "magic_prompt",
    "size",
    "metadata",
    "access",
)
_OUTPUT_KEYS = ("format", "quality")
# Mynth's SDK (mynthio/oss, packages/sdk/src/types.ts): png | jpg | webp, quality 1-100.
_FORMATS = ("png", "jpg", "webp")
# Destination slugs: lowercase letters, digits and dashes (Mynth's destination reference),
# 1 to 64 characters (seed 000).
_SLUG = re.compile(r"^[a-z0-9-]{1,64}$")
_RATING_MODES = ("nsfw_sfw", "custom")
_MODEL = re.compile(r"^(?:auto|[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)$")
_IMAGE_OK = {"success", "succeeded", "completed"}
_MODERATED = re.compile(
    r"moderat|nsfw|safety|flagged|content.?policy|prohibited|inappropriate|unsafe", re.I
)


class MynthProvider(Provider):
    name = "mynth"
    default_base_url = "https://api.mynth.io"
    default_model = "auto"
    url_lifetime = SEVEN_DAYS
    callback_grace = 300.0
    # Custom webhook URLs are unsigned; the per-task secret is never sent anywhere. Their
    # outcome is therefore confirmed by reading the task (confirm_by_read, on by default).
    secret_format = "hex"
    signs_callbacks = False

    # --- request side ---------------------------------------------------------------------------

    def validate(self, model: str | None, prompt: str, params: Mapping[str, Any]) -> None:
        """The documented limits, checked here so a bad request never costs a round trip."""
        if model is not None and not _MODEL.match(model):
            raise ValidationFailed("model", "must be 'auto' or an owner/name model id")
        if not 1 <= len(prompt) <= MAX_PROMPT:
            raise ValidationFailed("prompt", f"must be 1 to {MAX_PROMPT} characters")
        if "prompt" in params:
            raise ValidationFailed("params.prompt", "give the prompt once, at the top level")
        _webhook(params.get("webhook"))
        self.reject_unknown(params, (*_PARAMS, "webhook"))
        _text(params, "negative_prompt", MAX_PROMPT)
        count = params.get("count")
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT
        ):
            raise ValidationFailed("params.count", f"must be an integer, 1 to {MAX_COUNT}")
        _inputs(params.get("inputs"))
        _output(params.get("output"))
        destination = params.get("destination")
        if destination is not None and (
            not isinstance(destination, str) or not _SLUG.match(destination)
        ):
            raise ValidationFailed(
                "params.destination",
                "must be a slug of 1 to 64 lowercase letters, digits and dashes",
            )
        _rating(params.get("rating"))
        size = params.get("size")
        if size is not None and not isinstance(size, str | dict):
            raise ValidationFailed("params.size", "must be a string or an object")
        for key in ("metadata", "access"):
            if key in params and not isinstance(params[key], dict):
                raise ValidationFailed(f"params.{key}", "must be an object")

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.settings.api_key or ''}"}

    async def submit(self, task: Task, callback: CallbackTarget | None) -> Submission:
        """``POST /image/generate``; the answer carries only the task id (201)."""
        body: dict[str, Any] = {
            "prompt": task.prompt,
            "model": task.model or self.default_model,
            **{k: v for k, v in task.params.items() if k in _PARAMS},
        }
        webhook: dict[str, Any] = {}
        if isinstance(task.params.get("webhook"), dict) and "dashboard" in task.params["webhook"]:
            webhook["dashboard"] = False  # mute the account's webhooks for this task
        if callback is not None:
            webhook["custom"] = [{"url": callback.url}]
        if webhook:
            body["webhook"] = webhook
        response = await self.request(
            "POST", f"{self.base_url}/image/generate", json=body, headers=self._headers()
        )
        data = json_body(response, self.name)
        inner = data.get("data") if isinstance(data, dict) else None
        task_id = inner.get("taskId") if isinstance(inner, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ProviderError("mynth: create answer has no data.taskId")
        return Submission(provider_task_id=task_id)

    async def poll(self, task: Task) -> Outcome:
        """``GET /tasks/{id}/result``: the reconciler's way back when a callback is lost."""
        if not task.provider_task_id:
            raise ProviderError("mynth: task has no Mynth task id", maybe_sent=False)
        response = await self.request(
            "GET",
            f"{self.base_url}/tasks/{task.provider_task_id}/result",
            headers=self._headers(),
        )
        data = json_body(response, self.name)
        inner = data.get("data") if isinstance(data, dict) else None
        if not isinstance(inner, dict):
            raise BadRequest("mynth: result answer has no data object")
        outcome = parse_task(inner)
        if outcome.provider_task_id is None:
            outcome = replace(outcome, provider_task_id=task.provider_task_id)
        return outcome

    # --- callback side --------------------------------------------------------------------------

    async def verify_callback(
        self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]
    ) -> None:
        """Per-request custom URLs carry no signature: the task-bound URL token (already
        checked) is the authentication, so there is nothing more to verify."""
        return None

    async def verify_account_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """Standard Webhooks or ``X-Mynth-Signature`` with the configured account secret."""
        secret = self.settings.webhook_secret
        if not secret:
            raise SignatureError(
                "mynth: no webhook_secret configured for account webhooks", cause="config"
            )
        standard = bool(headers.get("webhook-signature") or headers.get("webhook-id"))
        legacy = bool(headers.get("x-mynth-signature"))
        if not standard and not legacy:
            raise SignatureError(
                "mynth: no webhook-signature or X-Mynth-Signature header", cause="missing_header"
            )
        failures: list[SignatureError] = []
        if standard:
            try:
                verify_standard(
                    headers, body, [_as_whsec(secret)], tolerance=self.tolerance_seconds
                )
                return
            except SignatureError as exc:
                failures.append(exc)
        if legacy:
            try:
                verify_mynth_legacy(headers, body, [secret], tolerance=self.tolerance_seconds)
                return
            except SignatureError as exc:
                failures.append(exc)
        raise failures[0]

    def parse_callback(
        self, headers: Mapping[str, str], body: bytes, parsed: Any = None
    ) -> Callback:
        data = callback_json(body, parsed, self.name)
        outcome, event_id = parse_webhook(data)
        key = headers.get("webhook-id") or headers.get("x-mynth-delivery") or event_id
        if not key:
            key = "body:" + hashlib.sha256(body).hexdigest()
        return Callback(
            delivery_key=key, outcome=outcome, provider_task_id=outcome.provider_task_id
        )


def _as_whsec(secret: str) -> str:
    """A ``whsec_`` secret is used as Standard Webhooks defines it; any other secret string
    (Mynth's ``wbs_…``) keys the HMAC with its own bytes, as the older scheme does."""
    if secret.startswith("whsec_"):
        return secret
    return "whsec_" + base64.b64encode(secret.encode()).decode()


# --- validation helpers ---------------------------------------------------------------------


def _text(params: Mapping[str, Any], key: str, limit: int) -> None:
    value = params.get(key)
    if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= limit):
        raise ValidationFailed(f"params.{key}", f"must be a string of 1 to {limit} characters")


def _inputs(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise ValidationFailed("params.inputs", "must be a list")
    if len(value) > MAX_INPUTS:
        raise ValidationFailed("params.inputs", f"at most {MAX_INPUTS} inputs")
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not 1 <= len(item) <= MAX_INPUT_URL:
                raise ValidationFailed(
                    f"params.inputs[{i}]", f"must be 1 to {MAX_INPUT_URL} characters"
                )
        elif not isinstance(item, dict):
            raise ValidationFailed(f"params.inputs[{i}]", "must be a URL string or an object")


def _output(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ValidationFailed("params.output", "must be an object")
    for key in value:
        if key not in _OUTPUT_KEYS:
            raise ValidationFailed(f"params.output.{key}", "is not an output option")
    fmt = value.get("format")
    if fmt is not None and fmt not in _FORMATS:
        raise ValidationFailed("params.output.format", f"must be one of {', '.join(_FORMATS)}")
    quality = value.get("quality")
    if quality is not None and (
        isinstance(quality, bool) or not isinstance(quality, int | float) or not 1 <= quality <= 100
    ):
        raise ValidationFailed("params.output.quality", "must be a number, 1 to 100")


def _webhook(value: Any) -> None:
    """Only ``{"dashboard": false}`` (mute the account's webhooks for this task): the custom
    URL is ours."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise ValidationFailed("params.webhook", "must be an object")
    for key in value:
        if key != "dashboard":
            raise ValidationFailed(f"params.webhook.{key}", "is set by the receiver")
    if value.get("dashboard") is not False:
        raise ValidationFailed("params.webhook.dashboard", "can only be false")


def _rating(value: Any) -> None:
    """``true`` (the default sfw/nsfw classifier), ``{"mode": "nsfw_sfw"}``, or
    ``{"mode": "custom", "levels": [{value, description}, ...]}`` (the SDK's three forms)."""
    if value is None or value is True:
        return
    if not isinstance(value, dict):
        raise ValidationFailed("params.rating", "must be true or an object")
    for key in value:
        if key not in ("mode", "levels"):
            raise ValidationFailed(f"params.rating.{key}", "is not a rating option")
    mode = value.get("mode", "nsfw_sfw")
    if mode not in _RATING_MODES:
        raise ValidationFailed("params.rating.mode", f"must be one of {', '.join(_RATING_MODES)}")
    levels = value.get("levels")
    if mode != "custom":
        if levels is not None:
            raise ValidationFailed("params.rating.levels", "is for mode custom only")
        return
    if not isinstance(levels, list) or not levels:
        raise ValidationFailed("params.rating.levels", "must be a non-empty list")
    for i, level in enumerate(levels):
        if (
            not isinstance(level, dict)
            or not isinstance(level.get("value"), str)
            or not isinstance(level.get("description"), str)
        ):
            raise ValidationFailed(
                f"params.rating.levels[{i}]", "must be an object with value and description"
            )


# --- parsing ----------------------------------------------------------------------------------


def parse_webhook(data: Any) -> tuple[Outcome, str | None]:
    """Either webhook body shape into an Outcome, with the event id when the body has one."""
    if not isinstance(data, dict):
        raise BadRequest("mynth: webhook body is not an object")
    if isinstance(data.get("data"), dict):
        # Newer: {"id":"evt_…","type":"task.image.generate.completed","data":{task}}.
        event = data.get("type") if isinstance(data.get("type"), str) else None
        event_id = data.get("id") if isinstance(data.get("id"), str) and data.get("id") else None
        return parse_task(data["data"], event), event_id
    if isinstance(data.get("task"), dict) or isinstance(data.get("event"), str):
        # Older: {"event":…, "task":{id,cost}, "request":{…}, "result":{…} | "errors":[…]}.
        raw_task = data.get("task")
        task: Mapping[str, Any] = raw_task if isinstance(raw_task, dict) else {}
        merged = {
            "id": task.get("id"),
            "cost": task.get("cost"),
            "result": data.get("result"),
            "errors": data.get("errors"),
            "request": data.get("request"),
        }
        event = data.get("event") if isinstance(data.get("event"), str) else None
        return parse_task(merged, event), None
    raise BadRequest("mynth: webhook body has neither data nor task")


def parse_task(task: Mapping[str, Any], event: str | None = None) -> Outcome:
    """A Mynth task (webhook ``data``, poll ``data`` or the older body's parts) into an
    Outcome. ``event`` (``….completed`` / ``….failed``) stands in for a missing status."""
    raw_id = task.get("id") or task.get("taskId")
    pid = str(raw_id) if raw_id else None
    raw_result = task.get("result")
    result: Mapping[str, Any] = raw_result if isinstance(raw_result, dict) else {}
    model = _model(result, task.get("request"))
    cost = _cost(task.get("cost"), result.get("cost"))
    status = _status(task.get("status"), event, result)
    errors = _errors(task, result)
    if status == "pending":
        return Outcome(OutcomeStatus.PENDING, provider_task_id=pid, model=model)
    images, seed, failures = _images(result.get("images"))
    if status == "failed":
        return _failure(pid, [*errors, *failures], model, cost)
    seed = seed if seed is not None else _int(result.get("seed"))
    if not images:
        if not failures and not errors:
            errors = [("no_output", "task completed without any image")]
        return _failure(pid, [*errors, *failures], model, cost)
    return Outcome(
        OutcomeStatus.SUCCEEDED,
        images=tuple(images),
        provider_task_id=pid,
        cost=cost,
        seed=seed,
        model=model,
    )


def _status(raw: Any, event: str | None, result: Mapping[str, Any]) -> str:
    if event and event.endswith(".failed"):
        return "failed"
    if raw in ("pending", "completed", "failed"):
        return str(raw)
    if isinstance(raw, str) and raw in ("queued", "processing", "running"):
        return "pending"
    if event and event.endswith(".completed"):
        return "completed"
    if event is None and raw is None and isinstance(result.get("images"), list):
        return "completed"
    if event is not None and raw is None:
        return "pending"  # an event we do not act on (e.g. a progress notice)
    raise BadRequest(f"mynth: unknown task status {raw!r}")


def _failure(
    pid: str | None, errors: list[tuple[str, str]], model: str | None, cost: str | None
) -> Outcome:
    errors = errors or [("failed", "task failed")]
    text = "; ".join(f"{code}: {msg}" if msg else code for code, msg in errors)
    moderated = all(_MODERATED.search(f"{code} {msg}") for code, msg in errors)
    return Outcome(
        OutcomeStatus.MODERATED if moderated else OutcomeStatus.FAILED,
        provider_task_id=pid,
        error_code="moderated" if moderated else errors[0][0],
        error_message=text[:2000],
        cost=cost,
        model=model,
    )


def _errors(task: Mapping[str, Any], result: Mapping[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for source in (task.get("errors"), result.get("errors"), task.get("error")):
        items = source if isinstance(source, list) else [source] if source else []
        for item in items:
            if isinstance(item, dict):
                found.append((str(item.get("code") or "error"), str(item.get("message") or "")))
            elif isinstance(item, str):
                found.append(("error", item))
    return found


def _images(raw: Any) -> tuple[list[ResultImage], int | None, list[tuple[str, str]]]:
    """Successful images (``mynth_url`` first), the first seed seen, and the failures."""
    images: list[ResultImage] = []
    failures: list[tuple[str, str]] = []
    seed: int | None = None
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        status = item.get("status", "success")
        if status not in _IMAGE_OK:
            error = item.get("error")
            if isinstance(error, dict):
                failures.append(
                    (str(error.get("code") or "image_failed"), str(error.get("message") or ""))
                )
            else:
                failures.append(("image_failed", str(error or status)))
            continue
        url = _http_url(item.get("mynth_url")) or _http_url(item.get("url"))
        if url is None:
            failures.append(("no_url", "image has neither mynth_url nor url"))
            continue
        images.append(ResultImage(url=url))
        if seed is None:
            seed = _int(item.get("seed"))
    return images, seed, failures


def _http_url(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith(("https://", "http://")):
        return value
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _model(result: Mapping[str, Any], request: Any) -> str | None:
    model = result.get("model")
    if isinstance(model, dict):
        model = model.get("id")
    if isinstance(model, str) and model:
        return model
    asked = request.get("model") if isinstance(request, dict) else None
    return asked if isinstance(asked, str) and asked and asked != "auto" else None


def _cost(task_cost: Any, result_cost: Any) -> str | None:
    """The task's total: ``cost`` on the task, else ``result.cost`` (a string or a
    ``{images, total, fee}`` breakdown)."""
    for value in (task_cost, result_cost):
        if isinstance(value, dict):
            value = value.get("total")
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    return None
