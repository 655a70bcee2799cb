"""Black Forest Labs: ``POST /v1/{model}`` with ``x-key``, a per-task webhook, or polling.

The request carries our callback URL in ``webhook_url`` and the task's derived secret in
``webhook_secret``. BFL's two official descriptions of the callback disagree (the secret
echoed in ``X-Webhook-Secret``, or ``X-BFL-Signature: sha256=<hex HMAC>``), so both are
accepted by :func:`~receiver.signatures.verify_bfl`, each checked strictly. No delivery id is
documented, so deliveries are de-duplicated on the task id, status and a digest of the body.

Polling uses the ``polling_url`` the submission returned, which BFL says must be used as given
(regional hosts such as ``api.eu.bfl.ai``); it is kept in the ledger with the task, so every
replica and every restart polls it. Only a task without one falls back to
``GET /v1/get_result?id=``, and there "Task not found" is not believed until
:data:`RESULT_WINDOW` has passed. Only ``Pending`` is unfinished; ``Ready`` carries
``result.sample``, a signed URL that lives 10 minutes (its ``se=`` expiry is used when present).

The parameter checks live in :class:`ModelSpec` tables so Vtrix, which exposes the same
parameters under other model names, reuses them (``receiver/providers/vtrix.py``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from ..errors import BadRequest, ProviderError, ValidationFailed
from ..models import Outcome, OutcomeStatus, ResultImage, Task
from ..signatures import verify_bfl
from .base import Callback, CallbackTarget, Provider, Submission, callback_json, json_body

# FLUX.2 takes prompts of up to 32K tokens; we cannot count tokens, so the cap is in characters
# at a generous four per token: longer cannot fit, shorter is left to BFL to judge.
PROMPT_MAX_CHARS = 128_000
MAX_PIXELS = 4 * 1024 * 1024  # "at most about 4 megapixels" (2048 x 2048)
WEBHOOK_URL_MAX = 2083
SEED_MAX = 2**64 - 1
_INPUT_IMAGE = re.compile(r"^input_image(?:_(\d+))?$")
_RATIO = re.compile(r"^(\d{1,3}):(\d{1,3})$")
_MODERATED_STATUSES = {"request moderated", "content moderated"}
_PENDING_STATUSES = {"pending", "queued", "processing", "running", "in_progress"}
# "Task not found" from a URL we built (not the returned polling_url) is final only this long
# after submission: the result of a task submitted then could still exist in another region.
RESULT_WINDOW = 1800.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What one model accepts, from BFL's parameter tables."""

    max_input_images: int
    safety_max: int
    sized: bool  # width/height (FLUX.2) rather than aspect_ratio (Kontext)
    flex: bool = False  # guidance and steps
    output_formats: tuple[str, ...] = ("jpeg", "png", "webp")
    upsampling: bool = True  # prompt_upsampling

    def allowed(self) -> tuple[str, ...]:
        names = ["seed", "safety_tolerance", "output_format"]
        if self.upsampling:
            names.append("prompt_upsampling")
        names += ["width", "height"] if self.sized else ["aspect_ratio"]
        if self.flex:
            names += ["guidance", "steps"]
        return tuple(names)


FLUX2 = ModelSpec(max_input_images=8, safety_max=5, sized=True)
FLEX = replace(FLUX2, flex=True)
KONTEXT = ModelSpec(max_input_images=4, safety_max=6, sized=False, output_formats=("jpeg", "png"))

BFL_MODELS: dict[str, ModelSpec] = {
    "flux-2-max": FLUX2,
    "flux-2-pro": FLUX2,
    "flux-2-flex": FLEX,
    "flux-kontext-pro": KONTEXT,
    "flux-kontext-max": KONTEXT,
}


class BflProvider(Provider):
    name = "bfl"
    default_base_url = "https://api.bfl.ai"
    default_model = "flux-2-pro"
    url_lifetime = 600.0
    # The sample URL lives 10 minutes: ask well before that when no callback came.
    callback_grace = 120.0
    secret_format = "hex"
    models: ClassVar[dict[str, ModelSpec]] = BFL_MODELS

    # --- request side ---------------------------------------------------------------------------

    def spec_for(self, model: str | None) -> ModelSpec:
        spec = self.models.get(self.wire_model(model or self.default_model or ""))
        if spec is None:
            raise ValidationFailed("model", f"must be one of {', '.join(self.models)}")
        return spec

    def wire_model(self, model: str) -> str:
        """The model's name as the provider spells it."""
        return model

    def validate(self, model: str | None, prompt: str, params: Mapping[str, Any]) -> None:
        """BFL's documented limits, checked before anything is sent (a 422 names the field)."""
        spec = self.spec_for(model)
        if not prompt.strip():
            raise ValidationFailed("prompt", "must not be empty")
        if len(prompt) > PROMPT_MAX_CHARS:
            raise ValidationFailed("prompt", f"is longer than {PROMPT_MAX_CHARS} characters")
        validate_params(spec, params)

    def _headers(self) -> dict[str, str]:
        return {"x-key": self.settings.api_key or ""}

    def request_body(self, task: Task, callback: CallbackTarget | None) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": task.prompt, **task.params}
        if callback is not None:
            if len(callback.url) > WEBHOOK_URL_MAX:
                raise ProviderError(
                    f"{self.name}: callback URL longer than {WEBHOOK_URL_MAX}", maybe_sent=False
                )
            body["webhook_url"] = callback.url
            body["webhook_secret"] = callback.secret
        return body

    async def submit(self, task: Task, callback: CallbackTarget | None) -> Submission:
        """``POST /v1/{model}``; repeated only on 429 (Provider.request), never after a timeout.
        The returned ``polling_url`` goes to the ledger with the task (``Submission.state``)."""
        model = self.wire_model(task.model or self.default_model or "")
        response = await self.request(
            "POST",
            f"{self.base_url}/v1/{model}",
            json=self.request_body(task, callback),
            headers=self._headers(),
        )
        data = json_body(response, self.name)
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
            raise ProviderError(f"{self.name}: submission answer has no id")
        polling_url = data.get("polling_url")
        state = None
        if isinstance(polling_url, str) and polling_url.startswith(("https://", "http://")):
            state = {"polling_url": polling_url}
        return Submission(provider_task_id=data["id"], state=state)

    def trusted(self, url: str) -> bool:
        """Our API key goes only to the configured host, to BFL's own HTTPS hosts (regional
        ones such as ``api.eu.bfl.ai`` included), or to hosts named in option
        ``polling_hosts``."""
        found, base = urlsplit(url), urlsplit(self.base_url)
        if (found.scheme, found.netloc) == (base.scheme, base.netloc):
            return True
        host = (found.hostname or "").lower()
        if found.scheme == "https" and (host == "bfl.ai" or host.endswith(".bfl.ai")):
            return True
        extra = self.settings.option("polling_hosts", [])
        hosts = {str(h).lower() for h in extra} if isinstance(extra, list) else set()
        return host in hosts and found.scheme in ("https", base.scheme)

    async def poll(self, task: Task) -> Outcome:
        """The ``polling_url`` stored with the task; ``GET /v1/get_result?id=`` only for tasks
        that have none (or one on a host we do not trust with the key)."""
        pid = task.provider_task_id
        if not pid:
            raise ProviderError(f"{self.name}: task has no provider id", maybe_sent=False)
        stored = task.provider_state.get("polling_url")
        built = not (isinstance(stored, str) and self.trusted(stored))
        if not built:
            response = await self.request("GET", str(stored), headers=self._headers())
        else:
            if stored:
                log.warning(
                    "%s: polling_url on an untrusted host; polling get_result instead "
                    "(add the host to polling_hosts)",
                    self.name,
                    extra={"task_id": task.id},
                )
            response = await self.request(
                "GET", f"{self.base_url}/v1/get_result", params={"id": pid}, headers=self._headers()
            )
        outcome = parse_result(json_body(response, self.name))
        if built and outcome.error_code == "task_not_found":
            # A URL we built may be the wrong region: not proof the task is gone until the
            # window in which its result could exist has passed.
            started = task.submitted_at or task.created_at
            if time.time() < started + RESULT_WINDOW:
                return Outcome(OutcomeStatus.PENDING, provider_task_id=pid)
        return replace(
            outcome,
            provider_task_id=outcome.provider_task_id or pid,
            model=outcome.model or task.model or self.default_model,
        )

    # --- callback side --------------------------------------------------------------------------

    async def verify_callback(
        self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]
    ) -> None:
        """``X-BFL-Signature`` HMAC or ``X-Webhook-Secret`` echo, with the task's secrets."""
        verify_bfl(headers, body, secrets)

    def parse_callback(
        self, headers: Mapping[str, str], body: bytes, parsed: Any = None
    ) -> Callback:
        data = callback_json(body, parsed, self.name)
        outcome = parse_result(data)
        return Callback(
            delivery_key=delivery_key(data, body),
            outcome=outcome,
            provider_task_id=outcome.provider_task_id,
        )


# --- validation (shared with Vtrix) -------------------------------------------------------------


def validate_params(spec: ModelSpec, params: Mapping[str, Any]) -> None:
    """Every parameter against ``spec``; the first offending field is named."""
    allowed = spec.allowed()
    for key, value in params.items():
        field = f"params.{key}"
        image = _INPUT_IMAGE.match(key)
        if image:
            number = int(image.group(1)) if image.group(1) else 1
            if image.group(1) is not None and number < 2:
                raise ValidationFailed(field, "the first input image is input_image")
            if number > spec.max_input_images:
                raise ValidationFailed(
                    field, f"this model takes at most {spec.max_input_images} input images"
                )
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValidationFailed(field, "must be an image URL or base64 string")
            continue
        if key in ("webhook_url", "webhook_secret"):
            raise ValidationFailed(field, "is set by the receiver (it is our callback)")
        if key not in allowed:
            raise ValidationFailed(field, "is not a parameter of this model")
        if value is None:
            continue
        if key == "seed":
            _int(field, value, 0, SEED_MAX)
        elif key == "safety_tolerance":
            _int(field, value, 0, spec.safety_max)
        elif key == "output_format":
            if value not in spec.output_formats:
                raise ValidationFailed(field, f"must be one of {', '.join(spec.output_formats)}")
        elif key == "prompt_upsampling":
            if not isinstance(value, bool):
                raise ValidationFailed(field, "must be true or false")
        elif key in ("width", "height"):
            _int(field, value, 64, MAX_PIXELS // 64)
            if value % 16:
                raise ValidationFailed(field, "must be a multiple of 16")
        elif key == "aspect_ratio":
            _aspect_ratio(field, value)
        elif key == "steps":
            _int(field, value, 1, 50)
        elif key == "guidance":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValidationFailed(field, "must be a number")
            if not 1.5 <= value <= 10:
                raise ValidationFailed(field, "must be between 1.5 and 10")
    width, height = params.get("width"), params.get("height")
    if isinstance(width, int) and isinstance(height, int) and width * height > MAX_PIXELS:
        raise ValidationFailed(
            "params.width", f"width x height is {width * height} pixels, over {MAX_PIXELS} (4 MP)"
        )


def _int(field: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValidationFailed(field, f"must be an integer, {lo} to {hi}")


def _aspect_ratio(field: str, value: Any) -> None:
    """Kontext takes any ``W:H`` between 1:4 and 4:1 (BFL's SDK checks exactly this)."""
    found = _RATIO.match(value) if isinstance(value, str) else None
    if not found or not int(found.group(1)) or not int(found.group(2)):
        raise ValidationFailed(field, "must be a ratio such as 16:9")
    ratio = int(found.group(1)) / int(found.group(2))
    if not 1 / 4 <= ratio <= 4:
        raise ValidationFailed(field, "must be between 1:4 and 4:1")


# --- parsing (module level so the unit tests can feed documented bodies) ----------------------


def delivery_key(data: Any, body: bytes) -> str:
    """No delivery id is documented: the task id and status, and a digest of the exact body
    (a retried delivery repeats the body, so it repeats the key)."""
    pid = status = ""
    if isinstance(data, dict):
        pid = str(data.get("id") or data.get("task_id") or "")
        status = str(data.get("status") or "")
    return f"{pid}:{status}:{hashlib.sha256(body).hexdigest()}"


def parse_result(data: Any) -> Outcome:
    """A ``get_result`` answer or a webhook body into an Outcome.

    Statuses: ``Pending`` (the only unfinished one), ``Ready``, ``Error``, ``Task not found``,
    ``Request Moderated``, ``Content Moderated``; compared without case."""
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        raise BadRequest("bfl: result has no status")
    status = data["status"]
    key = status.strip().lower()
    pid = str(data["id"]) if data.get("id") else None
    found = data.get("result")
    result: dict[str, Any] = found if isinstance(found, dict) else {}
    seed = result.get("seed")
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    if key in _PENDING_STATUSES:
        return Outcome(OutcomeStatus.PENDING, provider_task_id=pid)
    if key == "ready":
        sample = result.get("sample")
        if not isinstance(sample, str) or not sample.startswith(("http://", "https://")):
            return Outcome(
                OutcomeStatus.FAILED,
                provider_task_id=pid,
                error_code="no_output",
                error_message="Ready without a result.sample URL",
            )
        image = ResultImage(url=sample, expires_at=url_expiry(sample))
        return Outcome(OutcomeStatus.SUCCEEDED, images=(image,), provider_task_id=pid, seed=seed)
    if key in _MODERATED_STATUSES:
        return Outcome(
            OutcomeStatus.MODERATED,
            provider_task_id=pid,
            error_code=key.replace(" ", "_"),
            error_message=failure_message(data, status),
        )
    if key == "error":
        return Outcome(
            OutcomeStatus.FAILED,
            provider_task_id=pid,
            error_code="error",
            error_message=failure_message(data, "generation failed"),
        )
    if key == "task not found":
        return Outcome(
            OutcomeStatus.FAILED,
            provider_task_id=pid,
            error_code="task_not_found",
            error_message=failure_message(data, "BFL does not know this task (or forgot it)"),
        )
    raise BadRequest(f"bfl: unknown status {status!r}")


def failure_message(data: Mapping[str, Any], default: str) -> str:
    """``message``, else ``error``, plus any moderation reasons in ``details``."""
    parts: list[str] = []
    for key in ("message", "error"):
        value = data.get(key)
        if isinstance(value, str) and value.strip() and value.strip() not in parts:
            parts.append(value.strip())
        elif isinstance(value, dict):
            inner = value.get("message") or value.get("detail")
            if isinstance(inner, str) and inner.strip():
                parts.append(inner.strip())
    details = data.get("details")
    if isinstance(details, dict):
        for name, reasons in details.items():
            if isinstance(reasons, list) and reasons:
                parts.append(f"{name}: {', '.join(map(str, reasons))}")
            elif isinstance(reasons, str) and reasons:
                parts.append(f"{name}: {reasons}")
    elif isinstance(details, str) and details.strip():
        parts.append(details.strip())
    return "; ".join(parts[:3]) if parts else default


def url_expiry(url: str) -> float | None:
    """The expiry a signed URL states about itself: Azure-style ``se=<ISO time>`` (BFL's
    delivery URLs) or ``expires=<unix>``; None when it says nothing we can read."""
    query = parse_qs(urlsplit(url).query)
    se = query.get("se")
    if se:
        try:
            stamp = datetime.fromisoformat(se[0].replace("Z", "+00:00"))
        except ValueError:
            stamp = None
        if stamp is not None:
            return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()
    expires = query.get("expires") or query.get("Expires")
    if expires:
        try:
            return float(int(expires[0]))
        except ValueError:
            pass
    return None
