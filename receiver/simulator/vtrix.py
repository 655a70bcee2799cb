"""Simulated Vtrix: ``POST /model/v1/generation`` and ``GET /model/v1/generation/{id}``.

Bearer auth; the model is named in the body (``flux_2_max`` …) with BFL's parameters. A task
reads as Vtrix documents it: ``status`` pending/processing/completed/failed,
``output[].content[]{type:"image",url}``, ``usage{cost,discount}`` (USD string),
``error{code,message}``, ``metadata``. Callbacks carry that same task body and are
authenticated like BFL's (alternating ``X-BFL-Signature`` and ``X-Webhook-Secret``; pin one
with ``[sim:signature=…]``). The same prompt markers as the BFL simulator apply.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .bfl import check_common, rate_limiter, sample_url, start_task
from .core import SimTask, Simulator

# USD per image, for usage.cost
PRICES = {
    "flux_2_max": "0.0700",
    "flux_2_pro": "0.0300",
    "flux_2_flex": "0.0500",
    "flux_kontext_pro": "0.0400",
    "flux_kontext_max": "0.0800",
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": str(status), "message": message}}, status_code=status)


def task_body(sim: Simulator, task: SimTask) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": task.id,
        "created_at": int(task.created_at),
        "model": task.extra.get("model"),
        "metadata": {
            "created_at": int(task.created_at),
            "completed_at": int(task.completed_at) if task.completed_at else None,
        },
    }
    if task.status == "pending":
        age = time.time() - task.created_at
        delay = max(float(sim.fault(task, "delay")), 1e-6)
        body["status"] = "pending" if age < delay / 2 else "processing"
    elif task.status == "succeeded":
        body.update(
            status="completed",
            output=[{"content": [{"type": "image", "url": sample_url(sim, task)}]}],
            usage={"cost": PRICES.get(str(task.extra.get("model")), "0.0500"), "discount": 0},
        )
    else:
        moderated = task.status == "moderated"
        body.update(
            status="failed",
            error={
                "code": "content_moderated" if moderated else "generation_failed",
                "message": task.error,
            },
        )
    return body


def routes(sim: Simulator) -> list[Route]:
    counter = {"n": 0}
    limited = rate_limiter(sim)

    def authorized(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        return auth.startswith("Bearer ") and len(auth) > len("Bearer ")

    async def create(request: Request) -> Response:
        if not authorized(request):
            sim.rejected += 1
            return _error(401, "API key is missing or invalid")
        try:
            params = await request.json()
        except ValueError:
            sim.rejected += 1
            return _error(400, "invalid JSON")
        if not isinstance(params, dict):
            sim.rejected += 1
            return _error(400, "body must be an object")
        model = params.get("model")
        if model not in PRICES:
            sim.rejected += 1
            return _error(400, f"unsupported model {model!r}")
        refused = limited(str(params.get("prompt", "")))
        if refused is not None:
            return refused
        invalid = check_common(
            {k: v for k, v in params.items() if k != "model"}, str(model).startswith("flux_kontext")
        )
        if invalid is not None:
            sim.rejected += 1
            return _error(400, json.loads(bytes(invalid.body))["detail"][0]["msg"])
        task = start_task(sim, "vtrix", str(model), params, counter, task_body)
        return JSONResponse(task_body(sim, task))

    async def get_task(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "API key is missing or invalid")
        task = sim.tasks.get(request.path_params["task_id"])
        if task is None or task.provider != "vtrix":
            return _error(404, "task not found")
        return JSONResponse(task_body(sim, task))

    return [
        Route("/model/v1/generation", create, methods=["POST"]),
        Route("/model/v1/generation/{task_id}", get_task, methods=["GET"]),
    ]
