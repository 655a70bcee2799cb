"""Simulated Mynth: ``POST /image/generate``, the task reads and both webhook body shapes.

``POST /image/generate`` (Bearer API key) checks the documented limits and answers 201
``{"data":{"taskId","access":{"publicAccessToken"}}}``. ``GET /tasks/{id}``,
``/tasks/{id}/status`` and ``/tasks/{id}/result`` read the task (the last two also with the
task's ``pat_`` token). When the task finishes, each ``webhook.custom[].url`` receives the
task **unsigned**, as Mynth sends custom webhooks; tasks alternate the newer body
(``{"id":"evt_…","type":…,"data":{task}}`` with a ``webhook-id`` header) and the older one
(``{"event","task","request","result"|"errors"}`` with ``X-Mynth-Delivery``), unless the prompt
marker ``[sim:shape=standard]`` / ``[sim:shape=legacy]`` picks one.

Account-level webhooks (registered in Mynth's dashboard) are signed. A test registers one with
``POST /_sim/mynth/account-webhooks`` ``{"url","secret","scheme":"standard"|"legacy"}``; every
task is then also delivered there, signed with Standard Webhooks or ``X-Mynth-Signature``.

The request checks follow seed 000 and Mynth's SDK (``output.format`` png|jpg|webp,
``quality`` 1-100, ``rating`` true or an object, ``webhook.dashboard`` false mutes the account
webhooks for that task, destination slugs of lowercase letters, digits and dashes).

Other prompt markers: ``[sim:outcome=moderated|failed]`` (via the core), ``[sim:failed_images=N]``
(the first N images of a completed task fail), ``[sim:upload_failed=true]`` (``url`` is null
on a task with a destination). Images carry ``mynth_url`` (served here, 7 days) and, with a
``destination``, ``url`` on that destination, which this simulator does not serve. Images
also carry the ``seed`` they were generated with (Mynth does not document one).
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..signatures import mynth_sign, standard_sign
from .core import SimTask, Simulator

SEVEN_DAYS = 7 * 24 * 3600.0
AUTO_MODEL = "black-forest-labs/flux.2-dev"
DESTINATIONS = ("bunny-prod", "sim-s3")  # storage destinations this "account" configured
# Destination slugs: lowercase letters, digits and dashes (Mynth's destination reference).
_SLUG = re.compile(r"^[a-z0-9-]{1,64}$")
_FORMATS = ("png", "jpg", "webp")  # the SDK's ImageGenerationRequestOutputFormat
_PRICE = 0.004


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _check(body: Any) -> str | None:
    """The first documented limit the body breaks, or None."""
    if not isinstance(body, dict):
        return "body must be an object"
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not 1 <= len(prompt) <= 8192:
        return "prompt: string of 1 to 8192 characters required"
    negative = body.get("negative_prompt")
    if negative is not None and (not isinstance(negative, str) or not 1 <= len(negative) <= 8192):
        return "negative_prompt: string of 1 to 8192 characters"
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 20:
        return "count: 1 <= x <= 20"
    inputs = body.get("inputs", [])
    if not isinstance(inputs, list) or len(inputs) > 20:
        return "inputs: at most 20"
    destination = body.get("destination")
    if destination is not None and (
        not isinstance(destination, str) or not _SLUG.match(destination)
    ):
        return "destination: slug of 1 to 64 lowercase letters, digits and dashes"
    output = body.get("output")
    if output is not None:
        if not isinstance(output, dict) or output.get("format", "webp") not in _FORMATS:
            return "output.format: png, jpg or webp"
        quality = output.get("quality", 80)
        if isinstance(quality, bool) or not isinstance(quality, int | float):
            return "output.quality: 1 to 100"
        if not 1 <= quality <= 100:
            return "output.quality: 1 to 100"
    rating = body.get("rating")
    if rating is not None and rating is not True:
        if not isinstance(rating, dict) or rating.get("mode", "nsfw_sfw") not in (
            "nsfw_sfw",
            "custom",
        ):
            return "rating: true, {mode: nsfw_sfw} or {mode: custom, levels}"
        if rating.get("mode") == "custom" and not rating.get("levels"):
            return "rating.levels: required for mode custom"
    webhook = body.get("webhook") or {}
    if isinstance(webhook, dict) and webhook.get("dashboard", False) is not False:
        return "webhook.dashboard: only false"
    custom = webhook.get("custom", []) if isinstance(webhook, dict) else None
    if not isinstance(custom, list) or len(custom) > 5:
        return "webhook.custom: at most 5"
    for hook in custom:
        if not isinstance(hook, dict) or not isinstance(hook.get("url"), str):
            return "webhook.custom[].url: required"
    return None


class _Mynth:
    """One simulated Mynth account: its tasks' wire shapes and its webhooks."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.account_hooks: list[dict[str, str]] = []
        self.counter = 0

    # --- shapes ---------------------------------------------------------------------------

    def status(self, task: SimTask) -> str:
        return {"pending": "pending", "succeeded": "completed"}.get(task.status, "failed")

    def images(self, task: SimTask) -> list[dict[str, Any]]:
        failed = int(task.faults.get("failed_images", 0))
        destination = task.params.get("destination")
        found: list[dict[str, Any]] = []
        for i, url in enumerate(task.urls):
            if i < failed:
                found.append({"status": "failed", "error": "Image generation failed"})
                continue
            own: str | None = None
            if destination and not task.faults.get("upload_failed"):
                own = f"{self.sim.public_url}/destinations/{destination}/{task.id}/{i}.png"
            found.append(
                {
                    "status": "success",
                    "id": f"img_{task.id[4:]}_{i}",
                    "url": own if destination else url,
                    "mynth_url": url,
                    "size": "64x64",
                    "format": "png",
                    "seed": task.seed + i,
                    "cost": f"{_PRICE:.4f}",
                    **(
                        {"rating": {"level": "sfw"}}
                        if task.params.get("rating") is not None
                        else {}
                    ),
                }
            )
        return found

    def cost(self, task: SimTask) -> str | None:
        if task.status != "succeeded":
            return None
        ok = max(0, len(task.urls) - int(task.faults.get("failed_images", 0)))
        return f"{_PRICE * ok:.4f}"

    def result(self, task: SimTask) -> dict[str, Any] | None:
        if task.status != "succeeded":
            return None
        total = self.cost(task) or "0"
        return {
            "model": task.extra["model"],
            "images": self.images(task),
            "cost": {"images": total, "total": total, "fee": "0.0000"},
        }

    def errors(self, task: SimTask) -> list[dict[str, str]]:
        if task.status == "moderated":
            return [{"code": "content_moderated", "message": task.error or "moderated"}]
        if task.status == "failed":
            return [{"code": "generation_failed", "message": task.error or "failed"}]
        return []

    def full(self, task: SimTask) -> dict[str, Any]:
        """The task as ``GET /tasks/{id}`` (and the newer webhook's ``data``) shows it."""
        data: dict[str, Any] = {
            "id": task.id,
            "status": self.status(task),
            "type": "image",
            "apiKeyId": "key_sim",
            "userId": "user_sim",
            "cost": self.cost(task),
            "result": self.result(task),
            "request": task.extra["request"],
            "createdAt": _iso(task.created_at),
            "updatedAt": _iso(task.completed_at or task.created_at),
        }
        if self.errors(task):
            data["errors"] = self.errors(task)
        return data

    def event(self, task: SimTask) -> str:
        ending = "completed" if task.status == "succeeded" else "failed"
        return f"task.image.generate.{ending}"

    def standard_body(self, task: SimTask, event_id: str) -> dict[str, Any]:
        return {
            "id": event_id,
            "type": self.event(task),
            "timestamp": int(time.time()),
            "data": self.full(task),
        }

    def legacy_body(self, task: SimTask) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event": self.event(task),
            "task": {"id": task.id},
            "request": task.extra["request"],
        }
        if task.status == "succeeded":
            body["task"]["cost"] = self.cost(task)
            body["result"] = self.result(task)
        else:
            body["errors"] = self.errors(task)
        return body

    # --- delivery -------------------------------------------------------------------------

    async def send(self, task: SimTask) -> None:
        shape = task.extra["shape"]
        event_id = f"evt_{os.urandom(12).hex()}"  # one id for every copy and retry
        body = json.dumps(
            self.standard_body(task, event_id) if shape == "standard" else self.legacy_body(task)
        ).encode()
        event = self.event(task)

        def unsigned() -> dict[str, str]:
            if shape == "standard":
                return {"webhook-id": event_id, "webhook-timestamp": str(self._ts(task))}
            return {"X-Mynth-Event": event, "X-Mynth-Delivery": event_id}

        for url in task.extra["hooks"]:
            await self.sim.deliver(task, url, body, unsigned)
        muted = (task.extra.get("webhook") or {}).get("dashboard") is False
        for hook in [] if muted else self.account_hooks:
            await self.sim.deliver(
                task, hook["url"], body, self._signer(task, hook, body, event_id)
            )

    def _ts(self, task: SimTask) -> int:
        return int(time.time()) - int(task.faults.get("timestamp_skew", 0))

    def _signer(
        self, task: SimTask, hook: dict[str, str], body: bytes, event_id: str
    ) -> Callable[[], dict[str, str]]:
        secret = hook["secret"]
        event = self.event(task)

        def headers() -> dict[str, str]:
            ts = self._ts(task)
            if hook.get("scheme") == "legacy":
                return {
                    "X-Mynth-Event": event,
                    "X-Mynth-Delivery": event_id,
                    "X-Mynth-Signature": mynth_sign(secret, ts, body),
                }
            key = (
                secret
                if secret.startswith("whsec_")
                else ("whsec_" + base64.b64encode(secret.encode()).decode())
            )
            return {
                "webhook-id": event_id,
                "webhook-timestamp": str(ts),
                "webhook-signature": standard_sign(key, event_id, ts, body),
            }

        return headers

    def finish(self, task: SimTask) -> None:
        self.sim.complete(task, int(task.params.get("count") or 1))


def routes(sim: Simulator) -> list[Route]:
    mynth = _Mynth(sim)

    def api_key(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        return auth.startswith("Bearer ") and bool(token) and not token.startswith("pat_")

    def may_read(request: Request, task: SimTask) -> bool:
        auth = request.headers.get("authorization", "")
        return api_key(request) or auth == f"Bearer {task.extra['pat']}"

    async def generate(request: Request) -> Response:
        if not api_key(request):
            sim.rejected += 1
            return _error(401, "unauthorized", "missing or invalid API key")
        try:
            body = await request.json()
        except ValueError:
            sim.rejected += 1
            return _error(400, "invalid_json", "body is not valid JSON")
        problem = _check(body)
        if problem is not None:
            sim.rejected += 1
            return _error(400, "validation_error", problem)
        destination = body.get("destination")
        if destination is not None and destination not in DESTINATIONS:
            sim.rejected += 1
            return _error(400, "unknown_destination", f"destination {destination!r} not found")
        request_echo = {k: v for k, v in body.items() if k != "webhook"}
        task = sim.new_task("mynth", dict(request_echo), prefix="tsk")
        task.faults.setdefault("url_ttl", SEVEN_DAYS)  # mynth_url is served for 7 days
        hooks = [hook["url"] for hook in (body.get("webhook") or {}).get("custom", [])]
        shape = task.faults.get("shape")
        if shape not in ("standard", "legacy"):
            shape = "standard" if mynth.counter % 2 == 0 else "legacy"
        mynth.counter += 1
        model = body.get("model") or "auto"
        task.extra.update(
            request=request_echo,
            hooks=hooks,
            shape=shape,
            model=AUTO_MODEL if model == "auto" else model,
            pat=f"pat_{os.urandom(16).hex()}",
            webhook=body.get("webhook") or {},
        )
        if hooks or mynth.account_hooks:
            task.webhook_url = hooks[0] if hooks else "account"
        sim.schedule(task, mynth.finish, mynth.send)
        return JSONResponse(
            {"data": {"taskId": task.id, "access": {"publicAccessToken": task.extra["pat"]}}},
            status_code=201,
        )

    def find(request: Request) -> SimTask | None:
        task = sim.tasks.get(request.path_params["task_id"])
        return task if task is not None and task.provider == "mynth" else None

    async def get_task(request: Request) -> Response:
        task = find(request)
        if not api_key(request):
            return _error(401, "unauthorized", "missing or invalid API key")
        if task is None:
            return _error(404, "not_found", "task not found")
        return JSONResponse({"data": mynth.full(task)})

    async def get_status(request: Request) -> Response:
        task = find(request)
        if task is None:
            return _error(404, "not_found", "task not found")
        if not may_read(request, task):
            return _error(401, "unauthorized", "missing or invalid token")
        return JSONResponse({"data": {"status": mynth.status(task)}})

    async def get_result(request: Request) -> Response:
        task = find(request)
        if task is None:
            return _error(404, "not_found", "task not found")
        if not may_read(request, task):
            return _error(401, "unauthorized", "missing or invalid token")
        data: dict[str, Any] = {
            "id": task.id,
            "type": "image",
            "status": mynth.status(task),
            "result": mynth.result(task),
        }
        if mynth.errors(task):
            data["errors"] = mynth.errors(task)
        return JSONResponse({"data": data})

    async def register_account_hook(request: Request) -> Response:
        """Test hook: what registering a webhook in Mynth's dashboard does."""
        hook = await request.json()
        mynth.account_hooks.append(
            {
                "url": str(hook["url"]),
                "secret": str(hook["secret"]),
                "scheme": str(hook.get("scheme", "standard")),
            }
        )
        return JSONResponse({"hooks": len(mynth.account_hooks)}, status_code=201)

    return [
        Route("/image/generate", generate, methods=["POST"]),
        Route("/tasks/{task_id}", get_task, methods=["GET"]),
        Route("/tasks/{task_id}/status", get_status, methods=["GET"]),
        Route("/tasks/{task_id}/result", get_result, methods=["GET"]),
        Route("/_sim/mynth/account-webhooks", register_account_hook, methods=["POST"]),
    ]
