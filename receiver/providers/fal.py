"""fal: the queue API with a ``fal_webhook``, callbacks signed with ED25519 against a JWKS.

Submission is ``POST {base_url}/{endpoint id}?fal_webhook=<our callback URL>`` with
``Authorization: Key <api_key>`` (``base_url`` defaults to ``https://queue.fal.run``); the
answer names the ``request_id`` (our provider task id). fal signs every webhook with its own
keys, never with a secret we choose, so the per-task secrets are not used: a callback passes
when ``X-Fal-Webhook-Signature`` is a valid ED25519 signature, by any key of fal's published
JWKS, over ``request_id\\nuser_id\\ntimestamp\\nsha256_hex(body)`` with a timestamp within the
tolerance. The JWKS comes from provider option ``jwks_url`` (default fal's public one), is
fetched through the adapter's HTTP client without our API key, cached, and fetched again when
no key matches (rotation), at most once per ``jwks_min_refresh_seconds`` so forged callbacks
cannot make us hammer the key endpoint.

Polling reads ``{base_url}/{owner}/{app}/requests/{id}/status`` and, once ``COMPLETED``,
the result at ``{base_url}/{owner}/{app}/requests/{id}``; queue URLs name the app without the
endpoint's sub-path (``fal-ai/flux/dev`` → ``fal-ai/flux``), as fal's own clients do.

Moderation: a safety-checked endpoint still answers ``OK`` but flags each image in
``has_nsfw_concepts`` (the flagged ones come back blacked out). All flagged → ``moderated``;
some flagged → only the clean images are kept. An ``ERROR`` whose detail is a
``content_policy_violation`` is ``moderated`` as well.

fal publishes no lifetime for its result URLs: we assume one hour (``url_lifetime``) and refresh
by polling when a download finds them gone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from ..errors import BadRequest, ProviderError, SignatureError, ValidationFailed
from ..models import Outcome, OutcomeStatus, ResultImage, Task
from ..signatures import JwksCache, verify_fal
from .base import Callback, CallbackTarget, Provider, Submission, callback_json, json_body

DEFAULT_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
# fal publishes no prompt limit for FLUX endpoints; this bound only stops absurd requests.
MAX_PROMPT = 10_000
IMAGE_SIZES = (
    "square_hd",
    "square",
    "portrait_4_3",
    "portrait_16_9",
    "landscape_4_3",
    "landscape_16_9",
)
# Inputs of fal's FLUX text-to-image endpoints (dev, schnell, pro); ``prompt`` is the task's.
PARAMS = (
    "image_size",
    "num_images",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "enable_safety_checker",
    "safety_tolerance",
    "output_format",
    "acceleration",
)
# Image inputs of the edit endpoints: Kontext takes one ``image_url`` (``fal-ai/flux-pro/
# kontext``), multi-image Kontext and FLUX.2 edit take ``image_urls`` (``.../kontext/multi``,
# ``fal-ai/flux-2/edit``), image-to-image takes ``image_url`` and ``strength``; Kontext sizes
# by ``aspect_ratio`` (its enum below). Names from fal's endpoint schemas as fal's own clients
# send them; the list limit is our guess (none is published for every endpoint).
IMAGE_PARAMS = ("image_url", "image_urls", "aspect_ratio", "strength")
MAX_IMAGE_URLS = 10
ASPECT_RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")
_ENDPOINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)+$")
_PENDING = {"IN_QUEUE", "IN_PROGRESS"}
_FAILED = {"FAILED", "ERROR", "CANCELED", "CANCELLED"}
_MODERATED = re.compile(r"nsfw|moderat|safety|content.?policy|flagged|sensitive", re.I)


class FalProvider(Provider):
    name = "fal"
    default_base_url = "https://queue.fal.run"
    default_model = "fal-ai/flux/dev"
    url_lifetime = 3600.0  # not published by fal: an assumption, see the module docstring
    callback_grace = 300.0
    secret_format = "hex"  # unused: fal signs with its own keys
    options = ("jwks_url", "jwks_ttl_seconds", "jwks_min_refresh_seconds")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.jwks = JwksCache(
            self._fetch_jwks, ttl=float(self.settings.option("jwks_ttl_seconds", 3600.0))
        )
        self._jwks_data: Any = None
        self._jwks_at = float("-inf")

    # --- request side ---------------------------------------------------------------------------

    def validate(self, model: str | None, prompt: str, params: Mapping[str, Any]) -> None:
        """``model`` is a fal endpoint id (``owner/app[/path]``); ``params`` are the endpoint's
        inputs, flat, checked against the FLUX endpoints' documented ranges."""
        if not _ENDPOINT.match(model or self.default_model or ""):
            raise ValidationFailed("model", "must be a fal endpoint id such as fal-ai/flux/dev")
        if not prompt.strip():
            raise ValidationFailed("prompt", "must not be empty")
        if len(prompt) > MAX_PROMPT:
            raise ValidationFailed("prompt", f"must be at most {MAX_PROMPT} characters")
        if "prompt" in params:
            raise ValidationFailed("params.prompt", "give the prompt once, at the top level")
        self.reject_unknown(params, (*PARAMS, *IMAGE_PARAMS))
        _image_size(params.get("image_size"))
        _image_inputs(params)
        _integer(params, "num_images", 1, 4)
        _integer(params, "seed", 0, 2**63 - 1)
        _integer(params, "num_inference_steps", 1, 50)
        guidance = params.get("guidance_scale")
        if guidance is not None and (
            isinstance(guidance, bool)
            or not isinstance(guidance, int | float)
            or not 1 <= guidance <= 20
        ):
            raise ValidationFailed("params.guidance_scale", "must be a number, 1 to 20")
        checker = params.get("enable_safety_checker")
        if checker is not None and not isinstance(checker, bool):
            raise ValidationFailed("params.enable_safety_checker", "must be true or false")
        tolerance = params.get("safety_tolerance")
        if tolerance is not None and str(tolerance) not in ("1", "2", "3", "4", "5", "6"):
            raise ValidationFailed("params.safety_tolerance", "must be 1 to 6")
        _choice(params, "output_format", ("jpeg", "png"))
        _choice(params, "acceleration", ("none", "regular", "high"))

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Key {self.settings.api_key or ''}"}

    async def submit(self, task: Task, callback: CallbackTarget | None) -> Submission:
        """Queue the request; the callback URL rides in the ``fal_webhook`` query parameter."""
        model = task.model or self.default_model or ""
        body: dict[str, Any] = {**task.params, "prompt": task.prompt}
        query = {"fal_webhook": callback.url} if callback is not None else {}
        response = await self.request(
            "POST", f"{self.base_url}/{model}", params=query, json=body, headers=self._headers()
        )
        data = json_body(response, self.name)
        request_id = data.get("request_id") if isinstance(data, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise ProviderError("fal: queue answer has no request_id")
        return Submission(provider_task_id=request_id)

    async def poll(self, task: Task) -> Outcome:
        """The queue status, then (once completed) the result; also refreshes result URLs."""
        if not task.provider_task_id:
            raise ProviderError("fal: task has no request id", maybe_sent=False)
        request_id = task.provider_task_id
        base = f"{self.base_url}/{app_id(task.model or self.default_model or '')}"
        base += f"/requests/{request_id}"
        response = await self.request("GET", f"{base}/status", headers=self._headers())
        state = json_body(response, self.name)
        if not isinstance(state, dict) or not isinstance(state.get("status"), str):
            raise BadRequest("fal: queue status has no status")
        status = state["status"].upper()
        if status in _PENDING:
            return Outcome(OutcomeStatus.PENDING, provider_task_id=request_id)
        if status in _FAILED or state.get("error"):
            return failure(request_id, state.get("error") or status.lower(), state)
        if status != "COMPLETED":
            raise BadRequest(f"fal: unknown queue status {state['status']!r}")
        # The answer's response_url is used only when it is on our base URL: it gets our key.
        result_url = state.get("response_url")
        if not isinstance(result_url, str) or not result_url.startswith(self.base_url + "/"):
            result_url = base
        return await self._result(request_id, result_url)

    async def _result(self, request_id: str, url: str) -> Outcome:
        """The finished request's payload; a 4xx with a detail is the request's own failure."""
        try:
            response = await self.http.get(url, headers=self._headers())
        except httpx.TimeoutException as exc:
            raise ProviderError(f"fal: timed out: {exc}", maybe_sent=False) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"fal: {exc}", maybe_sent=False) from exc
        if response.status_code in (400, 422) or (
            response.status_code < 500 and response.headers.get("x-fal-error-type")
        ):
            try:
                detail = response.json()
            except ValueError:
                detail = {"detail": response.text[:300]}
            if "in progress" in json.dumps(detail).lower():  # raced the status: not finished
                return Outcome(OutcomeStatus.PENDING, provider_task_id=request_id)
            message = response.headers.get("x-fal-error-type") or f"HTTP {response.status_code}"
            return failure(request_id, message, detail if isinstance(detail, dict) else {})
        if response.status_code >= 400:
            raise ProviderError(
                f"fal: result HTTP {response.status_code}: {response.text[:300]}",
                maybe_sent=False,
            )
        return from_payload(json_body(response, self.name), request_id)

    # --- callback side --------------------------------------------------------------------------

    @property
    def jwks_url(self) -> str:
        """Read on every fetch, so a changed setting takes effect without a restart."""
        return str(self.settings.option("jwks_url") or DEFAULT_JWKS_URL)

    async def _fetch_jwks(self) -> Any:
        """Fetch the key set, or hand back the last one when it is younger than the minimum
        refresh interval (a forged signature must not cost a fetch each)."""
        min_refresh = float(self.settings.option("jwks_min_refresh_seconds", 30.0))
        if self._jwks_data is not None and time.monotonic() - self._jwks_at < min_refresh:
            return self._jwks_data
        try:
            response = await self.request("GET", self.jwks_url, retry_429=1)
            data = json_body(response, self.name)
        except ProviderError as exc:  # name what to change, not only what failed
            raise ProviderError(
                f"fal: cannot read the signing keys from {self.jwks_url} "
                f"(providers.fal.jwks_url): {exc.message}"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ProviderError(
                f"fal: the JWKS at {self.jwks_url} has no keys (providers.fal.jwks_url)"
            )
        self._jwks_data, self._jwks_at = data, time.monotonic()
        return data

    async def verify_callback(
        self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]
    ) -> None:
        """ED25519 against fal's JWKS (see the module); ``secrets`` play no part. The signed
        request id must also be the one the body speaks of."""
        signed_id = await verify_fal(headers, body, self.jwks, tolerance=self.tolerance_seconds)
        try:
            data = json.loads(body)
        except ValueError:
            return  # signed but unreadable: parse_callback answers 400
        body_id = data.get("request_id") if isinstance(data, dict) else None
        if body_id is not None and body_id != signed_id:
            raise SignatureError(
                "request id in the body differs from the signed header", cause="mismatch"
            )

    def parse_callback(
        self, headers: Mapping[str, str], body: bytes, parsed: Any = None
    ) -> Callback:
        """``{request_id, gateway_request_id, status: OK|ERROR, payload, error, payload_error}``.

        ``OK`` without a payload (fal could not serialise it: ``payload_error``) is pending:
        the reconciler fetches the result by polling."""
        data = callback_json(body, parsed, self.name)
        if not isinstance(data, dict):
            raise BadRequest("fal: callback body is not an object")
        request_id = data.get("request_id") or headers.get("x-fal-webhook-request-id")
        if not isinstance(request_id, str) or not request_id:
            raise BadRequest("fal: callback names no request_id")
        status = data.get("status")
        if status == "OK":
            payload = data.get("payload")
            if payload is None:
                outcome = Outcome(OutcomeStatus.PENDING, provider_task_id=request_id)
            else:
                outcome = from_payload(payload, request_id)
        elif status == "ERROR":
            payload = data.get("payload")
            outcome = failure(
                request_id, data.get("error"), payload if isinstance(payload, dict) else {}
            )
        else:
            raise BadRequest(f"fal: unknown callback status {status!r}")
        return Callback(
            delivery_key=f"{request_id}:{hashlib.sha256(body).hexdigest()}",
            outcome=outcome,
            provider_task_id=request_id,
        )


# --- parsing ----------------------------------------------------------------------------------


def app_id(endpoint: str) -> str:
    """``owner/app`` of an endpoint id: the queue's status and result URLs use only that."""
    return "/".join(endpoint.strip("/").split("/")[:2])


def from_payload(payload: Any, request_id: str) -> Outcome:
    """A finished request's output (the webhook's ``payload`` or the queue's result)."""
    if not isinstance(payload, dict):
        raise BadRequest("fal: result payload is not an object")
    items = payload.get("images")
    if items is None and isinstance(payload.get("image"), dict):
        items = [payload["image"]]
    images: list[ResultImage | None] = [
        _image(item) for item in (items if isinstance(items, list) else [])
    ]
    seed = payload.get("seed")
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    flags = payload.get("has_nsfw_concepts")
    if isinstance(flags, list) and flags and len(flags) == len(images):
        if all(flag is True for flag in flags):
            return Outcome(
                OutcomeStatus.MODERATED,
                provider_task_id=request_id,
                error_code="moderated",
                error_message="every image was flagged by fal's safety checker",
                seed=seed,
            )
        images = [img for img, flag in zip(images, flags, strict=True) if flag is not True]
    found = tuple(img for img in images if img is not None)
    if not found:
        return Outcome(
            OutcomeStatus.FAILED,
            provider_task_id=request_id,
            error_code="no_output",
            error_message="fal reported success without any image URL",
            seed=seed,
        )
    return Outcome(OutcomeStatus.SUCCEEDED, images=found, provider_task_id=request_id, seed=seed)


def failure(request_id: str, error: Any, detail: Mapping[str, Any]) -> Outcome:
    """A failed request; content-policy refusals are ``moderated``."""
    parts = [str(error)] if error else []
    found = detail.get("detail")
    moderated = False
    if isinstance(found, list):
        for item in found:
            if isinstance(item, dict):
                moderated |= str(item.get("type", "")) == "content_policy_violation"
                if item.get("msg"):
                    parts.append(str(item["msg"]))
    elif isinstance(found, str) and found:
        parts.append(found)
    message = ": ".join(parts) or "fal request failed"
    moderated = moderated or bool(_MODERATED.search(message))
    return Outcome(
        OutcomeStatus.MODERATED if moderated else OutcomeStatus.FAILED,
        provider_task_id=request_id,
        error_code="moderated" if moderated else "error",
        error_message=message[:1000],
    )


def _image(item: Any) -> ResultImage | None:
    if not isinstance(item, dict) or not isinstance(item.get("url"), str):
        return None
    url: str = item["url"]
    content_type = item.get("content_type") if isinstance(item.get("content_type"), str) else None
    if url.startswith(("http://", "https://")):
        return ResultImage(url=url, content_type=content_type)
    if url.startswith("data:"):  # sync_mode answers carry the bytes inline
        header, _, encoded = url.partition(",")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return None
        return ResultImage(inline=raw, content_type=header[5:].split(";")[0] or content_type)
    return None


# --- validation helpers -------------------------------------------------------------------------


def _integer(params: Mapping[str, Any], key: str, lo: int, hi: int) -> None:
    value = params.get(key)
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi
    ):
        raise ValidationFailed(f"params.{key}", f"must be an integer, {lo} to {hi}")


def _choice(params: Mapping[str, Any], key: str, choices: Sequence[str]) -> None:
    value = params.get(key)
    if value is not None and value not in choices:
        raise ValidationFailed(f"params.{key}", f"must be one of {', '.join(choices)}")


def _image_ref(field: str, value: Any) -> None:
    """An image fal can read: an http(s) URL or a ``data:image/...`` URI."""
    if not isinstance(value, str) or not (
        value.startswith(("https://", "http://")) or value.startswith("data:image/")
    ):
        raise ValidationFailed(field, "must be an http(s) URL or a data:image URI")


def _image_inputs(params: Mapping[str, Any]) -> None:
    if params.get("image_url") is not None and params.get("image_urls") is not None:
        raise ValidationFailed("params.image_urls", "give image_url or image_urls, not both")
    if params.get("image_url") is not None:
        _image_ref("params.image_url", params["image_url"])
    urls = params.get("image_urls")
    if urls is not None:
        if not isinstance(urls, list) or not 1 <= len(urls) <= MAX_IMAGE_URLS:
            raise ValidationFailed(
                "params.image_urls", f"must be a list of 1 to {MAX_IMAGE_URLS} images"
            )
        for i, url in enumerate(urls):
            _image_ref(f"params.image_urls[{i}]", url)
    _choice(params, "aspect_ratio", ASPECT_RATIOS)
    strength = params.get("strength")
    if strength is not None and (
        isinstance(strength, bool) or not isinstance(strength, int | float) or not 0 < strength <= 1
    ):
        raise ValidationFailed("params.strength", "must be a number above 0, at most 1")


def _image_size(value: Any) -> None:
    """One of fal's named sizes, or ``{width, height}`` (fal's schema caps each at 14142)."""
    if value is None or (isinstance(value, str) and value in IMAGE_SIZES):
        return
    if isinstance(value, dict):
        extra = set(value) - {"width", "height"}
        if extra:
            raise ValidationFailed(f"params.image_size.{sorted(extra)[0]}", "is not allowed")
        for side in ("width", "height"):
            size = value.get(side)
            if isinstance(size, bool) or not isinstance(size, int) or not 64 <= size <= 14142:
                raise ValidationFailed(
                    f"params.image_size.{side}", "must be an integer, 64 to 14142"
                )
        return
    raise ValidationFailed(
        "params.image_size", f"must be one of {', '.join(IMAGE_SIZES)} or {{width, height}}"
    )
