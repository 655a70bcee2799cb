"""The generic ``simulated`` provider: Standard Webhooks callbacks, polling, expiring URLs.

Wire format (mirrored by ``receiver/providers/simulated.py``):
``POST /v1/generate`` (Bearer auth) ``{prompt, model, count, width, height, seed, webhook_url,
webhook_secret, faults}`` → 201 ``{"id"}``; callback and ``GET /v1/tasks/{id}`` bodies:
``{"id", "status", "model", "seed", "cost", "images": [{"url", "expires_at"}], "error"}``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..signatures import standard_sign
from .core import SimTask, Simulator

MODEL = "sim-flux-1"


def task_body(task: SimTask) -> dict[str, Any]:
    status = {"pending": "pending", "succeeded": "succeeded"}.get(task.status, task.status)
    body: dict[str, Any] = {
        "id": task.id,
        "status": status,
        "model": task.params.get("model") or MODEL,
        "seed": task.seed,
        "cost": "0.0040" if task.status == "succeeded" else None,
        "images": [{"url": url, "expires_at": int(task.expires_at or 0)} for url in task.urls],
        "error": (
            {
                "code": "moderated" if task.status == "moderated" else "internal",
                "message": task.error,
            }
            if task.error
            else None
        ),
    }
    return body


def routes(sim: Simulator) -> list[Route]:
    async def generate(request: Request) -> Response:
        try:
            params = await request.json()
        except ValueError:
            sim.rejected += 1
            return JSONResponse({"error": "invalid JSON"}, status_code=400)
        if not isinstance(params, dict) or not params.get("prompt"):
            sim.rejected += 1
            return JSONResponse({"error": "prompt is required"}, status_code=422)
        task = sim.new_task("simulated", params)
        task.webhook_url = params.get("webhook_url")
        task.webhook_secret = params.get("webhook_secret")
        count = int(params.get("count") or 1)

        async def send(t: SimTask) -> None:
            body = json.dumps(task_body(t)).encode()
            msg_id = f"msg_{os.urandom(8).hex()}"  # one id for every copy and retry

            def headers() -> dict[str, str]:
                ts = int(time.time()) - int(t.faults.get("timestamp_skew", 0))
                return {
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(ts),
                    "webhook-signature": standard_sign(t.webhook_secret or "", msg_id, ts, body),
                }

            await sim.deliver(t, t.webhook_url or "", body, headers)

        sim.schedule(task, lambda t: sim.complete(t, count), send)
        return JSONResponse({"id": task.id}, status_code=201)

    async def get_task(request: Request) -> Response:
        task = sim.tasks.get(request.path_params["task_id"])
        if task is None:
            return JSONResponse({"error": "task not found"}, status_code=404)
        if task.urls and task.expires_at and time.time() > task.expires_at - 1:
            # A poll re-signs the result URLs, as providers that refresh them do.
            ttl = task.faults.get("refreshed_url_ttl", sim.fault(task, "url_ttl"))
            task.expires_at = time.time() + float(ttl)
            task.urls = [sim.file_url(task, i, "png") for i in range(len(task.images))]
        return JSONResponse(task_body(task))

    return [
        Route("/v1/generate", generate, methods=["POST"]),
        Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
    ]
