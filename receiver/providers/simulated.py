"""The generic simulated provider (``receiver simulate``): the embedded default for the demo
and the tests of the core path. Standard Webhooks callbacks, polling, 10-minute URLs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import BadRequest, ValidationFailed
from ..models import Outcome, OutcomeStatus, ResultImage, Task
from ..signatures import verify_standard
from .base import Callback, CallbackTarget, Provider, Submission, callback_json, json_body

_PARAMS = ("count", "width", "height", "seed", "faults")
_STATUS = {
    "pending": OutcomeStatus.PENDING,
    "succeeded": OutcomeStatus.SUCCEEDED,
    "failed": OutcomeStatus.FAILED,
    "moderated": OutcomeStatus.MODERATED,
}


class SimulatedProvider(Provider):
    name = "simulated"
    default_base_url = "http://127.0.0.1:8100"
    default_model = "sim-flux-1"
    url_lifetime = 600.0
    callback_grace = 60.0
    secret_format = "whsec"
    options = ()

    def validate(self, model: str | None, prompt: str, params: Mapping[str, Any]) -> None:
        if not 1 <= len(prompt) <= 4000:
            raise ValidationFailed("prompt", "must be 1 to 4000 characters")
        self.reject_unknown(params, _PARAMS)
        self.require_int(params, "count", 1, 8)
        self.require_int(params, "width", 16, 2048)
        self.require_int(params, "height", 16, 2048)
        self.require_int(params, "seed", 0, 2**32 - 1)
        if "faults" in params and not isinstance(params["faults"], dict):
            raise ValidationFailed("params.faults", "must be an object")

    async def submit(self, task: Task, callback: CallbackTarget | None) -> Submission:
        body: dict[str, Any] = {
            "prompt": task.prompt,
            "model": task.model or self.default_model,
            **task.params,
        }
        if callback is not None:
            body["webhook_url"] = callback.url
            body["webhook_secret"] = callback.secret
        headers = {"authorization": f"Bearer {self.settings.api_key or 'sim'}"}
        response = await self.request(
            "POST", f"{self.base_url}/v1/generate", json=body, headers=headers
        )
        data = json_body(response, self.name)
        return Submission(provider_task_id=str(data["id"]))

    async def verify_callback(
        self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]
    ) -> None:
        verify_standard(headers, body, secrets, tolerance=self.tolerance_seconds)

    def parse_callback(
        self, headers: Mapping[str, str], body: bytes, parsed: Any = None
    ) -> Callback:
        data = callback_json(body, parsed, self.name)
        outcome = self.parse(data)
        return Callback(
            delivery_key=headers.get("webhook-id") or "",
            outcome=outcome,
            provider_task_id=outcome.provider_task_id,
        )

    async def poll(self, task: Task) -> Outcome:
        response = await self.request(
            "GET",
            f"{self.base_url}/v1/tasks/{task.provider_task_id}",
            headers={"authorization": f"Bearer {self.settings.api_key or 'sim'}"},
        )
        return self.parse(json_body(response, self.name))

    def parse(self, data: Any) -> Outcome:
        if not isinstance(data, dict) or data.get("status") not in _STATUS:
            raise BadRequest("callback body lacks a known status")
        raw_error = data.get("error")
        error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
        images = tuple(
            ResultImage(url=str(img["url"]), expires_at=img.get("expires_at"))
            for img in data.get("images") or []
            if isinstance(img, dict) and img.get("url")
        )
        seed = data.get("seed")
        return Outcome(
            status=_STATUS[data["status"]],
            images=images,
            provider_task_id=str(data.get("id")) if data.get("id") else None,
            error_code=error.get("code"),
            error_message=error.get("message"),
            cost=str(data["cost"]) if data.get("cost") is not None else None,
            seed=seed if isinstance(seed, int) else None,
            model=data.get("model"),
        )
