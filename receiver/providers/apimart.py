"""APIMart (seeds 003 and 004): FLUX.2 and Kontext behind one task API, with no callbacks.

APIMart never calls back, so ``delivers_callbacks`` is False and the reconciler polls
``GET /v1/tasks/{task_id}`` from submission on. Its docs show a result image's ``url`` both as
a string and as a list of strings, so both are read. Result URLs live 24 hours and each image
carries its own ``expires_at`` (unix seconds), which becomes the archive deadline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..errors import BadRequest, ProviderError, ValidationFailed
from ..models import Outcome, OutcomeStatus, ResultImage, Task
from .base import CallbackTarget, Provider, Submission, json_body

FLUX2_MODELS = ("flux-2-flex", "flux-2-pro")
KONTEXT_MODELS = ("flux-kontext-pro", "flux-kontext-max")
FLUX2_SIZES = ("1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3")
KONTEXT_SIZES = (*FLUX2_SIZES, "21:9", "9:21", "match_input_image", "auto")
FLUX2_PARAMS = ("resolution", "size", "image_urls")
KONTEXT_PARAMS = ("image_urls", "size", "response_format", "safety_tolerance", "prompt_upsampling")

_PENDING = {"submitted", "pending", "queued", "processing", "running", "in_progress"}
_DONE = {"completed", "succeeded", "success"}
_CANCELLED = {"cancelled", "canceled"}
# No moderation status is documented; a failure whose code or message says so is moderation.
_MODERATED = re.compile(r"moderat|nsfw|safety|content.?policy|flagged|sensitive", re.I)


class ApimartProvider(Provider):
    name = "apimart"
    default_base_url = "https://api.apimart.ai"
    default_model = "flux-2-flex"
    url_lifetime = 24 * 3600.0
    delivers_callbacks = False
    secret_format = "hex"

    # --- request side ---------------------------------------------------------------------------

    def validate(self, model: str | None, prompt: str, params: Mapping[str, Any]) -> None:
        """The documented limits of seeds 003 (FLUX.2) and 004 (Kontext), before any call."""
        model = model or self.default_model
        if not prompt.strip():
            raise ValidationFailed("prompt", "must not be empty")
        if model in FLUX2_MODELS:
            self.reject_unknown(params, FLUX2_PARAMS)
            resolution = params.get("resolution")
            if resolution is not None and (
                not isinstance(resolution, str) or resolution.upper() not in ("1K", "2K")
            ):
                raise ValidationFailed("params.resolution", "must be 1K or 2K")
            _choice(params, "size", FLUX2_SIZES)
            _image_urls(params, 8)
        elif model in KONTEXT_MODELS:
            self.reject_unknown(params, KONTEXT_PARAMS)
            _choice(params, "size", KONTEXT_SIZES)
            _image_urls(params, 1)
            _choice(params, "response_format", ("png", "jpg"))
            tolerance = params.get("safety_tolerance")
            if tolerance is not None and (
                isinstance(tolerance, bool)
                or not isinstance(tolerance, int)
                or not 0 <= tolerance <= 6
            ):
                raise ValidationFailed("params.safety_tolerance", "must be an integer, 0 to 6")
            upsampling = params.get("prompt_upsampling")
            if upsampling is not None and not isinstance(upsampling, bool):
                raise ValidationFailed("params.prompt_upsampling", "must be true or false")
        else:
            raise ValidationFailed(
                "model", f"must be one of {', '.join(FLUX2_MODELS + KONTEXT_MODELS)}"
            )

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.settings.api_key or ''}"}

    async def submit(self, task: Task, callback: CallbackTarget | None) -> Submission:
        """``POST /v1/images/generations``; the answer names the task to poll."""
        body: dict[str, Any] = {
            "model": task.model or self.default_model,
            "prompt": task.prompt,
            **task.params,
        }
        response = await self.request(
            "POST", f"{self.base_url}/v1/images/generations", json=body, headers=self._headers()
        )
        return Submission(provider_task_id=parse_submission(json_body(response, self.name)))

    async def poll(self, task: Task) -> Outcome:
        """``GET /v1/tasks/{task_id}``: the only way APIMart tells us anything."""
        if not task.provider_task_id:
            raise ProviderError("apimart: task has no provider task id", maybe_sent=False)
        response = await self.request(
            "GET", f"{self.base_url}/v1/tasks/{task.provider_task_id}", headers=self._headers()
        )
        outcome = parse_task(json_body(response, self.name))
        if outcome.model is None:
            outcome = _with_model(outcome, task.model or self.default_model)
        return outcome


# --- parsing (module level so the unit tests can feed documented bodies) ----------------------


def parse_submission(data: Any) -> str:
    """``{"code":200,"data":[{"status":"submitted","task_id":…}]}`` → the task id.

    A ``code`` other than 200 inside an HTTP 200 is an error too."""
    if not isinstance(data, dict):
        raise ProviderError("apimart: submission answer is not an object")
    code = data.get("code")
    if code is not None and code != 200:
        raise ProviderError(f"apimart: submission refused (code {code}): {_message(data)}")
    items = data.get("data")
    if isinstance(items, dict):
        items = [items]
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                task_id = item.get("task_id") or item.get("id")
                if isinstance(task_id, str) and task_id:
                    return task_id
    raise ProviderError("apimart: submission answer names no task_id")


def parse_task(data: Any) -> Outcome:
    """A polled task into an Outcome; ``url`` may be a string or a list of strings."""
    if not isinstance(data, dict):
        raise BadRequest("apimart: task answer is not an object")
    code = data.get("code")
    if code is not None and code != 200:
        raise ProviderError(f"apimart: task query refused (code {code}): {_message(data)}")
    body = data.get("data")
    if isinstance(body, list) and len(body) == 1:
        body = body[0]  # the submission answer's shape; tolerated here too
    if not isinstance(body, dict):
        raise BadRequest("apimart: task answer has no data object")
    task_id = str(body["id"]) if body.get("id") else None
    status = str(body.get("status") or "").lower()
    if status in _PENDING:
        return Outcome(OutcomeStatus.PENDING, provider_task_id=task_id)
    if status in _DONE:
        images = _images(body.get("result"))
        if not images:
            return Outcome(
                OutcomeStatus.FAILED,
                provider_task_id=task_id,
                error_code="no_images",
                error_message="task completed without any image",
            )
        return Outcome(
            OutcomeStatus.SUCCEEDED,
            images=images,
            provider_task_id=task_id,
            cost=_cost(body),
            model=body.get("model") if isinstance(body.get("model"), str) else None,
        )
    if status in _CANCELLED or status == "failed":
        code_text, message = _error(body.get("error"))
        if status in _CANCELLED:
            message = message or "task was cancelled"
            code_text = code_text or "cancelled"
        message = message or "task failed"
        moderated = bool(_MODERATED.search(f"{code_text or ''} {message}"))
        return Outcome(
            OutcomeStatus.MODERATED if moderated else OutcomeStatus.FAILED,
            provider_task_id=task_id,
            error_code=code_text,
            error_message=message,
        )
    raise BadRequest(f"apimart: unknown task status {status!r}")


def _images(result: Any) -> tuple[ResultImage, ...]:
    if not isinstance(result, dict) or not isinstance(result.get("images"), list):
        return ()
    found: list[ResultImage] = []
    for image in result["images"]:
        if not isinstance(image, dict):
            continue
        expires_at = _unix(image.get("expires_at"))
        urls = image.get("url")
        for url in urls if isinstance(urls, list) else [urls]:
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                found.append(ResultImage(url=url, expires_at=expires_at))
    return tuple(found)


def _unix(value: Any) -> float | None:
    """Unix seconds (documented); a numeric string or milliseconds are read too."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value) / 1000.0 if value > 1e11 else float(value)


def _cost(body: Mapping[str, Any]) -> str | None:
    # Not in the documented shape; read if a deployment reports it, never required.
    usage = body.get("usage")
    for value in (body.get("cost"), usage.get("cost") if isinstance(usage, dict) else None):
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            return str(value)
    return None


def _error(error: Any) -> tuple[str | None, str | None]:
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        message = error.get("message") or error.get("msg")
        return (str(code) if code else None, str(message) if message else None)
    if isinstance(error, str) and error:
        return None, error
    return None, None


def _message(data: Mapping[str, Any]) -> str:
    for key in ("msg", "message"):
        if isinstance(data.get(key), str):
            return str(data[key])
    _, message = _error(data.get("error"))
    return message or "no message"


def _with_model(outcome: Outcome, model: str | None) -> Outcome:
    return replace(outcome, model=model)


def _choice(params: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> None:
    value = params.get(key)
    if value is not None and value not in choices:
        raise ValidationFailed(f"params.{key}", f"must be one of {', '.join(choices)}")


def _image_urls(params: Mapping[str, Any], most: int) -> None:
    """Public http(s) URLs only: APIMart refuses base64 input."""
    urls = params.get("image_urls")
    if urls is None:
        return
    if not isinstance(urls, list):
        raise ValidationFailed("params.image_urls", "must be a list of URLs")
    if len(urls) > most:
        raise ValidationFailed(
            "params.image_urls", f"at most {most} image{'s' if most > 1 else ''} for this model"
        )
    for i, url in enumerate(urls):
        if not isinstance(url, str) or not re.match(r"https?://[^\s/]+", url):
            raise ValidationFailed(
                f"params.image_urls[{i}]", "must be a public http(s) URL (no base64)"
            )
