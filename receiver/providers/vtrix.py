"""Vtrix (seed 001): BFL's parameters behind Bearer auth and ``"model": "flux_2_max"``.

Vtrix documents one endpoint for all its image and video models,
``POST https://cloud.vtrix.ai/model/v1/generation``, with the model named in the body. Its
task reads are documented only by their shape (``status`` pending/processing/completed/
failed, ``output[].content[]{type,url}``, ``usage{cost,discount}``, ``error{code,message}``),
not their path: ``GET /model/v1/generation/{id}`` is assumed and can be changed with the
provider option ``poll_path`` (``{id}`` is replaced).

Callbacks (``webhook_url`` + ``webhook_secret``) are not described beyond those fields, so they
are treated like BFL's: verified with :func:`~receiver.signatures.verify_bfl` and parsed in
either Vtrix's task shape or BFL's webhook shape. Option ``accept_unsigned = true`` lets an
unsigned callback rest on the URL token alone (a signed one is still checked strictly).
The result URL's lifetime is not published: 10 minutes is assumed, as for BFL.
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
from .base import Callback, CallbackTarget, Submission, json_body
from .bfl import (
    FLEX,
    FLUX2,
    KONTEXT,
    BflProvider,
    ModelSpec,
    delivery_key,
    failure_message,
    load_json,
    parse_result,
    url_expiry,
)

# Vtrix's page lists jpeg and png only for FLUX.2 output.
_VTRIX_FLUX2 = replace(FLUX2, output_formats=("jpeg", "png"))
VTRIX_MODELS: dict[str, ModelSpec] = {
    "flux_2_max": _VTRIX_FLUX2,
    "flux_2_pro": _VTRIX_FLUX2,
    "flux_2_flex": replace(FLEX, output_formats=("jpeg", "png")),
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
_PENDING = {"pending", "processing", "queued", "in_progress", "running", "submitted"}
_DONE = {"completed", "succeeded", "success"}
_FAILED = {"failed", "cancelled", "canceled", "error"}
_MODERATED = re.compile(r"moderat|nsfw|safety|content.?policy|flagged|sensitive", re.I)
_IMAGE_TYPES = {"image", "image_url", "imageurl"}


class VtrixProvider(BflProvider):
    name = "vtrix"
    default_base_url = "https://cloud.vtrix.ai"
    default_model = "flux_2_max"
    url_lifetime = 600.0
    callback_grace = 120.0
    models: ClassVar[dict[str, ModelSpec]] = VTRIX_MODELS

    def wire_model(self, model: str) -> str:
        """``flux-2-max`` (BFL's spelling) is accepted and sent as ``flux_2_max``."""
        return model.replace("-", "_").replace(".", "_").lower()

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.settings.api_key or ''}"}

    async def submit(self, task: Task, callback: CallbackTarget | None) -> Submission:
        """``POST /model/v1/generation`` with the model in the body; never repeated except
        after 429."""
        body = {
            "model": self.wire_model(task.model or self.default_model or ""),
            **self.request_body(task, callback),
        }
        response = await self.request(
            "POST", f"{self.base_url}/model/v1/generation", json=body, headers=self._headers()
        )
        data = _unwrap(json_body(response, self.name))
        task_id = _task_id(data)
        if task_id is None:
            error = data.get("error") if isinstance(data, dict) else None
            detail = failure_message(data, "") if isinstance(data, dict) else ""
            if error:
                raise ProviderError(f"vtrix: submission refused: {detail}")
            raise ProviderError("vtrix: submission answer has no task id")
        return Submission(provider_task_id=task_id)

    async def poll(self, task: Task) -> Outcome:
        """The task read (path from option ``poll_path``)."""
        pid = task.provider_task_id
        if not pid:
            raise ProviderError("vtrix: task has no provider id", maybe_sent=False)
        path = str(self.settings.option("poll_path", "/model/v1/generation/{id}"))
        response = await self.request(
            "GET",
            self.base_url + path.replace("{id}", quote(pid, safe="")),
            headers=self._headers(),
        )
        outcome = parse_task(json_body(response, self.name))
        return replace(
            outcome,
            provider_task_id=outcome.provider_task_id or pid,
            model=outcome.model or task.model or self.default_model,
        )

    async def verify_callback(
        self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]
    ) -> None:
        """As BFL; unsigned callbacks only with ``accept_unsigned`` (see the module)."""
        signed = headers.get("x-bfl-signature") is not None
        echoed = headers.get("x-webhook-secret") is not None
        if not signed and not echoed and self.settings.option("accept_unsigned", False):
            return
        verify_bfl(headers, body, secrets)

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> Callback:
        data = _unwrap(load_json(body, self.name))
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


def _task_id(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    for key in ("id", "task_id", "taskId"):
        value = data.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def parse_any(data: Any) -> Outcome:
    """A callback body in Vtrix's task shape, or in BFL's webhook shape."""
    if isinstance(data, dict) and (
        data.get("status") in _BFL_STATUSES or isinstance(data.get("result"), dict)
    ):
        return parse_result(data)
    return parse_task(data)


def parse_task(data: Any) -> Outcome:
    """Vtrix's task: ``status``; ``output[].content[]{type,url}`` when completed;
    ``usage.cost`` (USD string); ``error{code,message}`` when failed."""
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        raise BadRequest("vtrix: task has no status")
    status = data["status"].strip().lower()
    pid = _task_id(data)
    model = data.get("model") if isinstance(data.get("model"), str) else None
    seed = _seed(data)
    if status in _PENDING:
        return Outcome(OutcomeStatus.PENDING, provider_task_id=pid, model=model)
    if status in _DONE:
        images = _images(data.get("output"))
        if not images:
            return Outcome(
                OutcomeStatus.FAILED,
                provider_task_id=pid,
                error_code="no_output",
                error_message="completed without any image URL in output",
                model=model,
            )
        return Outcome(
            OutcomeStatus.SUCCEEDED,
            images=images,
            provider_task_id=pid,
            cost=_cost(data.get("usage")),
            seed=seed,
            model=model,
        )
    if status in _FAILED:
        error = data.get("error")
        code = None
        message = None
        if isinstance(error, dict):
            code = str(error["code"]) if error.get("code") not in (None, "") else None
            raw = error.get("message")
            message = raw.strip() if isinstance(raw, str) and raw.strip() else None
        elif isinstance(error, str) and error.strip():
            message = error.strip()
        message = message or failure_message(data, f"task {status}")
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


def _images(output: Any) -> tuple[ResultImage, ...]:
    found: list[ResultImage] = []
    for item in output if isinstance(output, list) else []:
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            kind = str(part.get("type") or "image").lower()
            url = part.get("url")
            if isinstance(url, dict):  # tolerate {"image_url": {"url": ...}}-style nesting
                url = url.get("url")
            if kind not in _IMAGE_TYPES or not isinstance(url, str):
                continue
            if url.startswith(("http://", "https://")):
                found.append(ResultImage(url=url, expires_at=url_expiry(url)))
    return tuple(found)


def _cost(usage: Any) -> str | None:
    if not isinstance(usage, dict):
        return None
    cost = usage.get("cost")
    if isinstance(cost, str) and cost.strip():
        return cost.strip()
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        return str(cost)
    return None


def _seed(data: Mapping[str, Any]) -> int | None:
    """Not in Vtrix's documented shape; read from ``metadata`` when it happens to be there."""
    meta = data.get("metadata")
    seed = meta.get("seed") if isinstance(meta, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None
