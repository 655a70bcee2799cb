"""Simulated Vtrix gateway, written from the gateway's published client and seed 001.

- ``POST /model/v1/generation`` takes only the client's envelope ``{"model", "input":
  [{"params": {...}}]}`` with ``Authorization: Bearer``; a flat body is refused. The answer is the
  task object with status ``in_progress`` (the client's word).
- ``GET /model/v1/generation/task/{id}`` reads a task: ``in_progress``/``pending``/
  ``processing`` while running (the three spellings rotate), then ``completed`` with
  ``output[].content[]`` items ``{type: "image", url, id, img_id}`` and ``usage: {cost,
  quantity, unit_price}``, or ``failed`` with ``error`` in one of its three documented forms
  (plain string, ``{code, message}``, ``{code, error_message}``), rotating from task to task, or
  pinned with the prompt marker ``[sim:error_form=string|message|error_message]``.
- Callbacks: no callback format or signature is published. The simulator posts the task object
  to ``webhook_url`` unsigned (a guess, labelled in tests/fixtures/vtrix/SOURCES.md);
  ``[sim:signature=echo|hmac|bad]`` adds a BFL-style header instead.
  ``[sim:extra_content=1]`` adds a non-image (audio) item before the image.

Errors to requests are ``{"code", "message"}`` JSON (the client reads ``message`` or ``error``).
The other prompt markers are the BFL simulator's (outcome, delays, rate limits, downloads).
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

# USD per image for usage.cost / unit_price (invented prices).
PRICES = {
    "flux_2_max": "0.07",
    "flux_2_pro": "0.03",
    "flux_2_flex": "0.05",
    "flux_kontext_pro": "0.04",
    "flux_kontext_max": "0.08",
}
ERROR_FORMS = ("message", "error_message", "string")
RUNNING = ("in_progress", "pending", "processing")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


def task_error(task: SimTask) -> Any:
    """``error`` in the task's form; moderation is NSFW wording, as the gateway reports it."""
    moderated = task.status == "moderated"
    form = task.extra.get("error_form", "message")
    message = (
        "NSFW content detected in the generated image" if moderated else (task.error or "failed")
    )
    if form == "string":
        return message
    if form == "error_message":
        return {"code": 40031 if moderated else 50001, "error_message": message}
    return {"code": "content_moderated" if moderated else "generation_failed", "message": message}


def task_body(sim: Simulator, task: SimTask) -> dict[str, Any]:
    model = str(task.extra.get("model"))
    body: dict[str, Any] = {"id": task.id, "model": model, "created_at": int(task.created_at)}
    if task.status == "pending":
        age = time.time() - task.created_at
        delay = max(float(sim.fault(task, "delay")), 1e-6)
        running = task.extra.get("running", "in_progress")
        body.update(status=running, progress=min(0.95, age / delay))
    elif task.status == "succeeded":
        content: list[dict[str, Any]] = []
        if task.faults.get("extra_content"):
            content.append({"type": "audio", "url": f"{sim.public_url}/files/none.mp3", "id": "a1"})
        content.append(
            {"type": "image", "url": sample_url(sim, task), "id": f"{task.id}-0", "img_id": 1}
        )
        price = PRICES.get(model, "0.05")
        body.update(
            status="completed",
            progress=1.0,
            output=[{"content": content}],
            usage={"cost": price, "quantity": 1, "unit_price": price},
        )
    else:
        body.update(status="failed", progress=1.0, error=task_error(task))
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
            body = await request.json()
        except ValueError:
            sim.rejected += 1
            return _error(400, "invalid JSON")
        blocks = body.get("input") if isinstance(body, dict) else None
        if (
            not isinstance(blocks, list)
            or len(blocks) != 1
            or not isinstance(blocks[0], dict)
            or not isinstance(blocks[0].get("params"), dict)
            or set(body) - {"model", "input"}
        ):
            sim.rejected += 1
            return _error(400, 'body must be {"model": ..., "input": [{"params": {...}}]}')
        model = body.get("model")
        if model not in PRICES:
            sim.rejected += 1
            return _error(400, f"unsupported model {model!r}")
        params: dict[str, Any] = dict(blocks[0]["params"])
        refused = limited(str(params.get("prompt", "")))
        if refused is not None:
            return refused
        invalid = check_common(params, str(model).startswith("flux_kontext"))
        if invalid is not None:
            sim.rejected += 1
            return _error(400, json.loads(bytes(invalid.body))["detail"][0]["msg"])
        n = counter["n"]
        task = start_task(sim, "vtrix", str(model), params, counter, task_body, style="none")
        task.extra["error_form"] = str(task.faults.get("error_form", ERROR_FORMS[n % 3]))
        task.extra["running"] = RUNNING[n % 3]
        return JSONResponse(
            {"id": task.id, "status": "in_progress", "model": model, "created_at": int(time.time())}
        )

    async def get_task(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "API key is missing or invalid")
        task = sim.tasks.get(request.path_params["task_id"])
        if task is None or task.provider != "vtrix":
            return _error(404, "task not found")
        task.extra["reads"] = int(task.extra.get("reads", 0)) + 1
        return JSONResponse(task_body(sim, task))

    return [
        Route("/model/v1/generation", create, methods=["POST"]),
        Route("/model/v1/generation/task/{task_id}", get_task, methods=["GET"]),
    ]
