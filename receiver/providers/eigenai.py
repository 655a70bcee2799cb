"""EigenAI (seed 002): synchronous text-to-image, the image comes back in the response.

No task id, polling endpoint or callback is documented for images, so the adapter is
``synchronous``: the submit response is the outcome, and its bytes are archived directly
(``ResultImage.inline``). We ask for ``binary_response: true`` by default, the simplest form
(the body *is* the image); a JSON answer is read too, tolerantly, with the image as base64 or
as a URL. Only the JSON text-to-image form is implemented: multipart image editing
(``image_file``/``image``/``image_path``) is left out and refused by ``validate``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

from ..errors import ProviderError, ValidationFailed
from ..models import Outcome, OutcomeStatus, ResultImage, Task
from .base import CallbackTarget, Provider, Submission

PARAMS = (
    "seed",
    "mode",
    "real_time",
    "width",
    "height",
    "guidance_scale",
    "negative_prompt",
    "size",
    "num_inference_steps",
    "binary_response",
    "output_format",
)
_EDITING = ("image_file", "image", "image_path", "s3_output_path")
_MODERATED = re.compile(r"moderat|nsfw|safety|content.?policy|flagged", re.I)
# Keys under which a JSON answer has been seen to carry the image, most specific first.
_B64_KEYS = ("image_base64", "b64_json", "base64", "image", "data")
_URL_KEYS = ("url", "image_url", "output_url", "output")


class EigenaiProvider(Provider):
    name = "eigenai"
    default_base_url = "https://app.eigenai.com"
    default_model = None  # ``model`` is required by EigenAI and no FLUX default is documented
    delivers_callbacks = False
    synchronous = True
    # Only used if a JSON answer hands back a URL instead of bytes: no lifetime is published.
    url_lifetime = 600.0

    def validate(self, model: str | None, prompt: str, params: Mapping[str, Any]) -> None:
        """The documented JSON text-to-image limits (width/height 512 to 2048, ...)."""
        if not model:
            raise ValidationFailed("model", "is required by EigenAI (e.g. a FLUX model id)")
        if not prompt.strip():
            raise ValidationFailed("prompt", "must not be empty")
        for key in params:
            if key in _EDITING:
                raise ValidationFailed(
                    f"params.{key}", "image editing (multipart) is not supported by this adapter"
                )
        self.reject_unknown(params, PARAMS)
        for key in ("width", "height"):
            self.require_int(params, key, 512, 2048)
        self.require_int(params, "seed", 0, None)
        if params.get("mode") not in (None, "text-to-image"):
            raise ValidationFailed("params.mode", "only text-to-image is supported")
        for key in ("real_time", "binary_response"):
            if key in params and not isinstance(params[key], bool):
                raise ValidationFailed(f"params.{key}", "must be true or false")
        for key in ("guidance_scale", "num_inference_steps"):
            value = params.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            ):
                raise ValidationFailed(f"params.{key}", "must be a positive number")
        for key in ("negative_prompt", "size"):
            value = params.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > 8192):
                raise ValidationFailed(f"params.{key}", "must be a string")
        if params.get("output_format") not in (None, "jpg", "png"):
            raise ValidationFailed("params.output_format", "must be jpg or png")

    async def submit(self, task: Task, callback: CallbackTarget | None) -> Submission:
        """One POST whose answer is the result; no callback is ever sent."""
        body: dict[str, Any] = {
            "model": task.model or self.default_model,
            "prompt": task.prompt,
            "binary_response": True,
            **task.params,
        }
        headers = {"authorization": f"Bearer {self.settings.api_key or ''}"}
        try:
            response = await self.request(
                "POST", f"{self.base_url}/api/v1/generate", json=body, headers=headers
            )
        except ProviderError as exc:
            refusal = _http_refusal(exc.message)
            if refusal is None:
                raise
            status, message = refusal
            # A refusal for content is a final answer, not a transport failure.
            if 400 <= status < 500 and _MODERATED.search(message):
                return Submission(
                    provider_task_id=None,
                    outcome=Outcome(
                        OutcomeStatus.MODERATED,
                        error_code="moderated",
                        error_message=message,
                        model=body["model"],
                    ),
                )
            # Anything else fails the task; keep the provider's own words, not the JSON around
            # them. Nothing was left running at EigenAI, so there is nothing to poll later.
            raise ProviderError(
                f"eigenai: HTTP {status}: {message}",
                retry_after=exc.retry_after,
                maybe_sent=exc.maybe_sent,
            ) from exc
        outcome = parse_response(response, model=body["model"])
        return Submission(provider_task_id=_request_id(response), outcome=outcome)


def parse_response(response: httpx.Response, *, model: str | None = None) -> Outcome:
    """Raw image bytes (``image/*``) or a JSON body with base64 or a URL: be tolerant."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type.startswith("image/") or (
        content_type in ("", "application/octet-stream") and _sniff(response.content)
    ):
        if not response.content:
            raise ProviderError("eigenai: empty image response")
        return Outcome(
            OutcomeStatus.SUCCEEDED,
            images=(
                ResultImage(
                    inline=response.content,
                    content_type=content_type
                    if content_type.startswith("image/")
                    else _sniff(response.content),
                ),
            ),
            model=model,
        )
    try:
        data = response.json()
    except ValueError:
        raise ProviderError(
            f"eigenai: answer is neither an image nor JSON ({content_type or 'no type'})"
        ) from None
    return parse_json(data, model=model)


def parse_json(data: Any, *, model: str | None = None) -> Outcome:
    """A JSON answer: look for the image as base64 or as a URL wherever it is likely to be."""
    seed = None
    for node in _nodes(data):
        if isinstance(node.get("seed"), int) and not isinstance(node.get("seed"), bool):
            seed = node["seed"]
            break
    error = _error_text(data)
    for node in _nodes(data):
        for key in _B64_KEYS:
            raw = node.get(key)
            if isinstance(raw, str) and len(raw) > 32:
                decoded = _b64(raw)
                if decoded is not None:
                    return Outcome(
                        OutcomeStatus.SUCCEEDED,
                        images=(ResultImage(inline=decoded, content_type=_sniff(decoded)),),
                        seed=seed,
                        model=model,
                    )
        for key in _URL_KEYS:
            url = node.get(key)
            if isinstance(url, list) and url and isinstance(url[0], str):
                url = url[0]
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                return Outcome(
                    OutcomeStatus.SUCCEEDED, images=(ResultImage(url=url),), seed=seed, model=model
                )
    if error:
        moderated = bool(_MODERATED.search(error))
        return Outcome(
            OutcomeStatus.MODERATED if moderated else OutcomeStatus.FAILED,
            error_code="moderated" if moderated else "failed",
            error_message=error,
            model=model,
        )
    raise ProviderError("eigenai: JSON answer carries no image")


_HTTP_ERROR = re.compile(r"HTTP (\d{3}): (.*)\Z", re.S)


def _http_refusal(text: str) -> tuple[int, str] | None:
    """``(status, provider message)`` from the message :meth:`Provider.request` raises for an
    HTTP error; the message is the JSON ``error``/``detail`` when the body is JSON."""
    found = _HTTP_ERROR.search(text)
    if found is None:
        return None
    status, raw = int(found.group(1)), found.group(2).strip()
    try:
        message = _error_text(json.loads(raw))
    except ValueError:
        message = None
    return status, message or raw or f"HTTP {status}"


def _nodes(data: Any) -> list[dict[str, Any]]:
    """The object and the objects one level down (``data``, ``data[0]``, ``result``…)."""
    found: list[dict[str, Any]] = []
    if isinstance(data, dict):
        found.append(data)
        for value in data.values():
            if isinstance(value, dict):
                found.append(value)
            elif isinstance(value, list):
                found.extend(v for v in value if isinstance(v, dict))
    elif isinstance(data, list):
        found.extend(v for v in data if isinstance(v, dict))
    return found


def _error_text(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    for key in ("error", "detail", "message"):
        value = data.get(key)
        if isinstance(value, dict):
            value = value.get("message") or value.get("detail")
        elif isinstance(value, list):
            # FastAPI-style validation errors: [{"loc": [...], "msg": "..."}]
            parts = [str(v.get("msg")) for v in value if isinstance(v, dict) and v.get("msg")]
            value = "; ".join(parts)
        if isinstance(value, str) and value:
            return value
    return None


def _b64(raw: str) -> bytes | None:
    if raw.startswith("data:"):
        raw = raw.partition(",")[2]
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if _sniff(decoded) else None


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _request_id(response: httpx.Response) -> str | None:
    for header in ("x-request-id", "x-eigen-request-id", "request-id"):
        value = response.headers.get(header)
        if value:
            return str(value)[:200]
    return None
