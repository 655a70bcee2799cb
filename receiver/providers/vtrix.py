"""Vtrix (seed 001): BFL's FLUX parameters behind Vtrix's multimodal generation gateway.

Wire format, from seed 001 and the gateway's own published client (``VtrixAI/vtrix-cli``,
``internal/generation/client.go``; sources in ``tests/fixtures/vtrix/SOURCES.md``):

- submit: ``POST {base}/model/v1/generation`` with ``Authorization: Bearer`` and the envelope
  ``{"model": "flux_2_max", "input": [{"params": {prompt, seed, width, ..., webhook_url,
  webhook_secret}}]}``; the answer is the task object.
- read: ``GET {base}/model/v1/generation/task/{id}``. The task object is ``{id, status, model,
  output: [{content: [{type, url, id, img_id}]}], error, created_at, progress, usage: {cost,
  quantity, unit_price, extra_info}}``. Statuses: ``in_progress`` (the client), ``pending`` and
  ``processing`` (seed 001), ``completed``, ``failed``. ``error`` is a plain string,
  ``{code, message}`` (seed 001) or ``{code, error_message}`` (the client); NSFW/moderation
  wording in any of them means moderated. Only ``content`` items of type ``image`` are results.
- callbacks: ``webhook_url``/``webhook_secret`` are accepted, but no signature scheme and no
  callback body are published. A callback is therefore only a hint: it is authenticated by the
  task-bound URL token, and its outcome is confirmed by reading the task from the API
  (``confirm_by_read``, on by default), so a forged body can cause a read and nothing more. If a
  BFL-style proof header happens to be present it is verified too.

The result URL's lifetime is not published: 10 minutes is assumed, as at BFL (a guess).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import quote

from ..errors import BadRequest, ProviderError
from ..models import Outcome, OutcomeStatus, ResultImage, Task
from ..signatures import verify_bfl
from .base import Callback, CallbackTarget, Submission, callback_json, json_body
from .bfl import (
    FLEX,
    FLUX2,
    KONTEXT,
    BflProvider,
    ModelSpec,
    delivery_key,
    parse_result,
    url_expiry,
)

# Seed 001 lists jpeg and png only, and no prompt_upsampling, for FLUX.2 at Vtrix.
_VTRIX_FLUX2 = replace(FLUX2, output_formats=("jpeg", "png"), upsampling=False)
VTRIX_MODELS: dict[str, ModelSpec] = {
    "flux_2_max": _VTRIX_FLUX2,  # seed 001
    # Named in Vtrix's model catalogue (a second public client's fixtures); their parameter
    # tables are not published, so BFL's are assumed (a guess).
    "flux_2_pro": _VTRIX_FLUX2,
    "flux_2_flex": replace(FLEX, output_formats=("jpeg", "png"), upsampling=False),
    "flux_kontext_pro": KONTEXT,
    "flux_kontext_max": KONTEXT,
}
_BFL_STATUSES = {
    "Pending",
    "Ready",
    "Error",
    "Task not found",
    "Request Moderated",
    "Content Moderated",
}
_PENDING = {"in_progress", "pending", "processing", "queued", "running", "submitted"}
_DONE = {"completed", "succeeded", "success"}
_FAILED = {"failed", "cancelled", "canceled", "error"}
_MODERATED = re.compile(
    r"nsfw|moderat|safety|content.?policy|flagged|sensitive|inappropriate|porn|sexual", re.I
)


class VtrixProvider(BflProvider):
    name = "vtrix"
    default_base_url = "https://cloud.vtrix.ai"
    default_model = "flux_2_max"
    url_lifetime = 600.0
    callback_grace = 120.0
    signs_callbacks = False
    models: ClassVar[dict[str, ModelSpec]] = VTRIX_MODELS

    def wire_model(self, model: str) -> str:
        """``flux-2-max`` (BFL's spelling) is accepted and sent as ``flux_2_max``."""
        return model.replace("-", "_").replace(".", "_").lower()

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.settings.api_key or ''}"}

    def envelope(self, task: Task, callback: CallbackTarget | None) -> dict[str, Any]:
        """The gateway's request: the model beside one ``input`` block holding the parameters."""
        return {
            "model": self.wire_model(task.model or self.default_model or ""),
            "input": [{"params": self.request_body(task, callback)}],
        }

    async def submit(self, task: Task, callback: CallbackTarget | None) -> Submission:
        """``POST /model/v1/generation``; never repeated except after 429."""
        response = await self.request(
            "POST",
            f"{self.base_url}/model/v1/generation",
            json=self.envelope(task, callback),
            headers=self._headers(),
        )
        data = _unwrap(json_body(response, self.name))
        task_id = _task_id(data)
        if task_id is None:
            if isinstance(data, dict):
                _, message = error_of(data.get("error"))
                message = message or _text(data.get("message"))
                if message:
                    raise ProviderError(f"vtrix: submission refused: {message}")
            raise ProviderError("vtrix: submission answer has no task id")
        return Submission(provider_task_id=task_id)

    def task_url(self, provider_task_id: str) -> str:
        return f"{self.base_url}/model/v1/generation/task/{quote(provider_task_id, safe='')}"

    async def poll(self, task: Task) -> Outcome:
        """``GET /model/v1/generation/task/{id}``."""
        pid = task.provider_task_id
        if not pid:
            raise ProviderError("vtrix: task has no provider id", maybe_sent=False)
        response = await self.request("GET", self.task_url(pid), headers=self._headers())
        outcome = parse_task(_unwrap(json_body(response, self.name)))
        return replace(
            outcome,
            provider_task_id=outcome.provider_task_id or pid,
            model=outcome.model or task.model or self.default_model,
        )

    async def verify_callback(
        self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]
    ) -> None:
        """No scheme is published: the URL token (already checked) is the authentication. A
        BFL-style proof header, when one is present, must still hold."""
        if headers.get("x-bfl-signature") is not None or headers.get("x-webhook-secret"):
            verify_bfl(headers, body, secrets)

    def parse_callback(
        self, headers: Mapping[str, str], body: bytes, parsed: Any = None
    ) -> Callback:
        """The body is assumed to be the task object (not published; a guess), or BFL's shape."""
        data = _unwrap(callback_json(body, parsed, self.name))
        outcome = parse_any(data)
        return Callback(
            delivery_key=delivery_key(data, body),
            outcome=outcome,
            provider_task_id=outcome.provider_task_id,
        )


# --- parsing ----------------------------------------------------------------------------------


def _unwrap(data: Any) -> Any:
    """Accept the task bare or inside a ``{"code", "data": {...}}`` envelope."""
    if isinstance(data, dict) and "status" not in data and isinstance(data.get("data"), dict):
        return data["data"]
    return data


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _task_id(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    for key in ("id", "task_id", "taskId"):
        value = data.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def error_of(error: Any) -> tuple[str | None, str | None]:
    """``(code, message)`` from any of the three documented ``error`` forms: a plain string,
    ``{code, message}`` or ``{code, error_message}``."""
    if isinstance(error, str):
        return None, _text(error)
    if not isinstance(error, dict):
        return None, None
    raw_code = error.get("code")
    code = (
        str(raw_code)
        if isinstance(raw_code, str | int) and not isinstance(raw_code, bool) and str(raw_code)
        else None
    )
    message = _text(error.get("error_message")) or _text(error.get("message"))
    return code, message


def parse_any(data: Any) -> Outcome:
    """A callback body in Vtrix's task shape, or in BFL's webhook shape."""
    if isinstance(data, dict) and (
        data.get("status") in _BFL_STATUSES or isinstance(data.get("result"), dict)
    ):
        return parse_result(data)
    return parse_task(data)


def parse_task(data: Any) -> Outcome:
    """Vtrix's task object into an Outcome."""
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        raise BadRequest("vtrix: task has no status")
    status = data["status"].strip().lower()
    pid = _task_id(data)
    model = _text(data.get("model"))
    if status in _PENDING:
        return Outcome(OutcomeStatus.PENDING, provider_task_id=pid, model=model)
    if status in _DONE:
        images = images_of(data.get("output"))
        usage = usage_of(data.get("usage"))
        if not images:
            return Outcome(
                OutcomeStatus.FAILED,
                provider_task_id=pid,
                error_code="no_output",
                error_message="completed without any image in output[].content[]",
                model=model,
            )
        return Outcome(
            OutcomeStatus.SUCCEEDED,
            images=images,
            provider_task_id=pid,
            cost=usage.get("cost") if usage else None,
            seed=_seed(data),
            model=model,
            usage=usage,
        )
    if status in _FAILED:
        code, message = error_of(data.get("error"))
        message = message or _text(data.get("message")) or f"task {status}"
        moderated = status not in ("cancelled", "canceled") and bool(
            _MODERATED.search(f"{code or ''} {message}")
        )
        return Outcome(
            OutcomeStatus.MODERATED if moderated else OutcomeStatus.FAILED,
            provider_task_id=pid,
            error_code=code or ("moderated" if moderated else status),
            error_message=message,
            model=model,
        )
    raise BadRequest(f"vtrix: unknown task status {data['status']!r}")


def images_of(output: Any) -> tuple[ResultImage, ...]:
    """Every ``output[].content[]`` item of type ``image`` with an http(s) URL (video and audio
    items are skipped)."""
    found: list[ResultImage] = []
    for group in output if isinstance(output, list) else []:
        content = group.get("content") if isinstance(group, dict) else None
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            url = part.get("url")
            if not isinstance(kind, str) or kind.strip().lower() != "image":
                continue
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                found.append(ResultImage(url=url, expires_at=url_expiry(url)))
    return tuple(found)


def usage_of(usage: Any) -> dict[str, Any] | None:
    """``usage`` as the client types it: ``cost`` (USD string), ``quantity``, ``unit_price``
    (and seed 001's ``discount``); other keys are dropped."""
    if not isinstance(usage, dict):
        return None
    kept: dict[str, Any] = {}
    for key in ("cost", "unit_price"):
        value = usage.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if _text(value):
            kept[key] = str(value).strip()
    for key in ("quantity", "discount"):
        value = usage.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            kept[key] = value
    return kept or None


def _seed(data: Mapping[str, Any]) -> int | None:
    """Not in Vtrix's documented shape; read from ``metadata`` when it happens to be there."""
    meta = data.get("metadata")
    seed = meta.get("seed") if isinstance(meta, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None
