"""EigenAI (seed 002): a synchronous API; the image comes back in the response.

``POST https://app.eigenai.com/api/v1/generate`` with Bearer auth: JSON for text-to-image,
``multipart/form-data`` for image editing (``mode: "image-editing"``, the source image uploaded
as ``image_file`` or ``image``, or referenced by ``image_path``). No task id, polling endpoint or
callback is documented, so the submit response *is* the outcome.

What the answer looks like is not documented, apart from ``binary_response`` ("return binary
image data directly instead of JSON"), which seed 002 lists among the editing parameters only.
So nothing is assumed: ``binary_response`` is sent only when the caller asks for it, and the
answer is read by its ``Content-Type``. An image body is the image. A JSON body is searched for
images anywhere in it: data URLs, base64 strings that sniff as an image, http(s) URLs (fetched
later by the safe fetcher, like every result URL). When no image can be found the raw answer is
kept in the ledger and the task fails with reason ``unparsed_response``, so ``receiver replay``
can read it again after an upgrade: an image paid for is never thrown away.

Editing: source images are given as URLs in ``params`` (``image_file`` or ``image``); they are
downloaded with the safe fetcher (public addresses only, size-capped, sniffed) and uploaded as
the multipart file. ``image_path`` is passed through as it is.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..errors import FetchError, ProviderError, ValidationFailed
from ..fetch import sniff_image
from ..models import Outcome, OutcomeStatus, ResultImage, Task
from .base import CallbackTarget, Provider, Submission

MODES = ("text-to-image", "image-editing")
# binary_response and output_format are documented with editing; a caller may still ask for
# them in text-to-image (they are sent only when asked for).
TEXT_TO_IMAGE = (
    "seed",
    "mode",
    "real_time",
    "width",
    "height",
    "guidance_scale",
    "binary_response",
    "output_format",
)
EDITING = (
    "seed",
    "mode",
    "guidance_scale",
    "image_file",
    "image",
    "image_path",
    "num_inference_steps",
    "binary_response",
    "output_format",
    "downsizing_mp",
    "lora_strength",
    "rank",
    "offloading",
    "weight",
    "true_cfg_scale",
    "sample_steps",
    "sample_guide_scale",
    "negative_prompt",
    "s3_output_path",
)
UPLOADS = ("image_file", "image")
_NUMBERS = (
    "guidance_scale",
    "num_inference_steps",
    "downsizing_mp",
    "lora_strength",
    "rank",
    "true_cfg_scale",
    "sample_steps",
    "sample_guide_scale",
)
_MODERATED = re.compile(r"moderat|nsfw|safety|content.?policy|flagged", re.I)
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.I)
_URL_KEY = re.compile(r"url|image|output|result|sample|file|src", re.I)
_IMAGE_PATH = re.compile(r"\.(png|jpe?g|webp|gif|avif)$", re.I)
_B64_MIN = 64


class EigenaiProvider(Provider):
    name = "eigenai"
    default_base_url = "https://app.eigenai.com"
    default_model = None  # ``model`` is required by EigenAI and no FLUX default is documented
    delivers_callbacks = False
    synchronous = True
    # Only used if a JSON answer hands back a URL instead of bytes: no lifetime is published.
    url_lifetime = 600.0

    # --- request side ---------------------------------------------------------------------------

    def validate(self, model: str | None, prompt: str, params: Mapping[str, Any]) -> None:
        """Seed 002's parameters: text-to-image, or image editing when ``mode`` says so or a
        source image is given."""
        if not model:
            raise ValidationFailed("model", "is required by EigenAI (e.g. a FLUX model id)")
        if not prompt.strip():
            raise ValidationFailed("prompt", "must not be empty")
        mode = params.get("mode")
        if mode is not None and mode not in MODES:
            raise ValidationFailed("params.mode", f"must be one of {', '.join(MODES)}")
        editing = editing_mode(params)
        if editing:
            for key in ("width", "height", "real_time"):
                if key in params:
                    raise ValidationFailed(f"params.{key}", "is for text-to-image only")
            self.reject_unknown(params, EDITING)
            sources = [k for k in (*UPLOADS, "image_path") if params.get(k) is not None]
            if not sources:
                raise ValidationFailed(
                    "params.image_file", "image editing needs image_file, image or image_path"
                )
            if len(sources) > 1:
                raise ValidationFailed(f"params.{sources[1]}", "give one source image only")
            for key in UPLOADS:
                value = params.get(key)
                if value is not None and (
                    not isinstance(value, str) or not value.startswith(("https://", "http://"))
                ):
                    raise ValidationFailed(f"params.{key}", "must be an http(s) URL to upload")
        else:
            self.reject_unknown(params, TEXT_TO_IMAGE)
            for key in ("width", "height"):
                self.require_int(params, key, 512, 2048)
        self.require_int(params, "seed", 0, None)
        for key in ("real_time", "binary_response", "offloading"):
            if key in params and not isinstance(params[key], bool):
                raise ValidationFailed(f"params.{key}", "must be true or false")
        for key in _NUMBERS:
            value = params.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            ):
                raise ValidationFailed(f"params.{key}", "must be a positive number")
        for key in ("negative_prompt", "s3_output_path", "image_path"):
            value = params.get(key)
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 8192):
                raise ValidationFailed(f"params.{key}", "must be a non-empty string")
        for key, choices in (
            ("output_format", ("jpg", "png")),
            ("weight", ("lightning", "vanilla")),
        ):
            value = params.get(key)
            if value is not None and value not in choices:
                raise ValidationFailed(f"params.{key}", f"must be one of {', '.join(choices)}")

    async def submit(self, task: Task, callback: CallbackTarget | None) -> Submission:
        """One POST whose answer is the result; no callback is ever sent."""
        model = task.model or self.default_model
        headers = {"authorization": f"Bearer {self.settings.api_key or ''}"}
        url = f"{self.base_url}/api/v1/generate"
        try:
            if editing_mode(task.params):
                # Every field as a multipart part (no filename), so the request is
                # multipart/form-data even when no file is uploaded (image_path).
                parts = await self._multipart(task)
                response = await self.request("POST", url, files=parts, headers=headers)
            else:
                body = {"model": model, "prompt": task.prompt, **task.params}
                response = await self.request("POST", url, json=body, headers=headers)
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
                        model=model,
                    ),
                )
            raise ProviderError(
                f"eigenai: HTTP {status}: {message}",
                retry_after=exc.retry_after,
                maybe_sent=exc.maybe_sent,
            ) from exc
        outcome = parse_response(response, model=model)
        return Submission(provider_task_id=_request_id(response), outcome=outcome)

    async def _multipart(self, task: Task) -> list[tuple[str, tuple[str | None, Any, str]]]:
        """The form: every parameter as a text part, the source image as a file part, fetched
        with the safe fetcher."""
        fields: dict[str, Any] = {
            "model": str(task.model or ""),
            "prompt": task.prompt,
            "mode": "image-editing",
        }
        parts: list[tuple[str, tuple[str | None, Any, str]]] = []
        for key, value in {**fields, **task.params}.items():
            if value is None:
                continue
            if key in UPLOADS:
                parts.append((key, await self._download(str(value))))
            elif isinstance(value, bool):
                parts.append((key, (None, "true" if value else "false", "text/plain")))
            else:
                parts.append((key, (None, str(value), "text/plain")))
        return parts

    async def _download(self, url: str) -> tuple[str | None, Any, str]:
        if self.fetcher is None:
            raise ProviderError(
                "eigenai: no fetcher to download the source image", maybe_sent=False
            )
        try:
            fetched = await self.fetcher.fetch(url)
        except FetchError as exc:
            raise ProviderError(
                f"eigenai: the source image could not be fetched: {exc}", maybe_sent=False
            ) from exc
        try:
            data = fetched.file.read()
        finally:
            fetched.close()
        stem = urlsplit(url).path.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "source"
        return f"{stem[:64]}.{fetched.ext}", data, fetched.content_type

    def reparse(self, raw: bytes, content_type: str | None, task: Task) -> Outcome | None:
        """A kept answer read again (after an upgrade taught the parser its shape)."""
        response = httpx.Response(200, content=raw, headers={"content-type": content_type or ""})
        return parse_response(response, model=task.model)


def editing_mode(params: Mapping[str, Any]) -> bool:
    """Image editing when ``mode`` says so, or when a source image is given without a mode."""
    mode = params.get("mode")
    if mode is not None:
        return bool(mode == "image-editing")
    return any(params.get(k) is not None for k in (*UPLOADS, "image_path"))


# --- reading the answer -------------------------------------------------------------------------


def parse_response(response: httpx.Response, *, model: str | None = None) -> Outcome:
    """Decide by ``Content-Type``: an image body is the image; JSON is searched for images;
    anything without a readable image is kept raw and fails as ``unparsed``."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    body = response.content
    sniffed = sniff_image(body[:64])
    if content_type.startswith("image/") or (sniffed and "json" not in content_type):
        if not sniffed:
            return unparsed(body, content_type, "the image body is not an image we can read")
        return Outcome(
            OutcomeStatus.SUCCEEDED,
            images=(ResultImage(inline=body, content_type=sniffed[0]),),
            model=model,
        )
    try:
        data = json.loads(body)
    except ValueError:
        return unparsed(body, content_type, "the answer is neither an image nor JSON")
    return parse_json(data, raw=body, content_type=content_type or "application/json", model=model)


def parse_json(data: Any, *, raw: bytes, content_type: str, model: str | None = None) -> Outcome:
    """Every image anywhere in a JSON answer, in document order, without duplicates."""
    images: list[ResultImage] = []
    seen: set[str] = set()
    for key, value in _strings(data):
        if value in seen:
            continue
        image = _image_from(key, value)
        if image is not None:
            seen.add(value)
            images.append(image)
    seed = next(
        (
            v
            for k, v in _items(data)
            if k == "seed" and isinstance(v, int) and not isinstance(v, bool)
        ),
        None,
    )
    if images:
        return Outcome(OutcomeStatus.SUCCEEDED, images=tuple(images), seed=seed, model=model)
    error = _error_text(data)
    if error is not None:
        moderated = bool(_MODERATED.search(error))
        return Outcome(
            OutcomeStatus.MODERATED if moderated else OutcomeStatus.FAILED,
            error_code="moderated" if moderated else "failed",
            error_message=error,
            model=model,
            raw=raw,
            raw_content_type=content_type,
        )
    return unparsed(raw, content_type, "no image found in the JSON answer", model)


def unparsed(raw: bytes, content_type: str, why: str, model: str | None = None) -> Outcome:
    return Outcome(
        OutcomeStatus.UNPARSED,
        error_code="unparsed_response",
        error_message=f"eigenai: {why}; the answer is kept for replay",
        model=model,
        raw=raw,
        raw_content_type=content_type or None,
    )


def _image_from(key: str, value: str) -> ResultImage | None:
    text = value.strip()
    if _DATA_URL.match(text):
        decoded = _b64(text.partition(",")[2])
        return ResultImage(inline=decoded, content_type=_kind(decoded)) if decoded else None
    if text.startswith(("https://", "http://")):
        path = urlsplit(text).path
        if _URL_KEY.search(key) or _IMAGE_PATH.search(path):
            return ResultImage(url=text)
        return None
    if len(text) >= _B64_MIN:
        decoded = _b64(text)
        if decoded is not None:
            return ResultImage(inline=decoded, content_type=_kind(decoded))
    return None


def _strings(data: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """``(key, string)`` for every string in the document; list items keep their list's key."""
    if isinstance(data, str):
        yield key, data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from _strings(v, str(k))
    elif isinstance(data, list):
        for v in data:
            yield from _strings(v, key)


def _items(data: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield str(k), v
            yield from _items(v)
    elif isinstance(data, list):
        for v in data:
            yield from _items(v)


def _b64(text: str) -> bytes | None:
    cleaned = re.sub(r"\s+", "", text)
    try:
        decoded = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        try:
            decoded = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        except (binascii.Error, ValueError):
            return None
    return decoded if sniff_image(decoded[:64]) else None


def _kind(data: bytes) -> str | None:
    found = sniff_image(data[:64])
    return found[0] if found else None


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


def _error_text(data: Any) -> str | None:
    """An explicit error in the answer (``error``, ``detail``, or ``message`` beside a failed
    status); None when the answer does not say it failed."""
    if not isinstance(data, dict):
        return None
    status = data.get("status")
    failed = isinstance(status, str) and status.lower() in ("failed", "error", "failure")
    for key in ("error", "detail", "message"):
        if key == "message" and not failed:
            continue
        value = data.get(key)
        if isinstance(value, dict):
            value = value.get("message") or value.get("detail")
        elif isinstance(value, list):
            # FastAPI-style validation errors: [{"loc": [...], "msg": "..."}]
            parts = [str(v.get("msg")) for v in value if isinstance(v, dict) and v.get("msg")]
            value = "; ".join(parts)
        if isinstance(value, str) and value:
            return value
    return "the answer reports a failure" if failed else None


def _request_id(response: httpx.Response) -> str | None:
    for header in ("x-request-id", "x-eigen-request-id", "request-id"):
        value = response.headers.get(header)
        if value:
            return str(value)[:200]
    return None
