"""Simulated APIMart: ``POST /v1/images/generations`` and ``GET /v1/tasks/{task_id}``.

Poll-only like the real service (no callbacks). Tasks alternate the two documented shapes of
a result image's ``url`` (a string, then a list of strings) so the adapter meets both.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .core import SimTask, Simulator

FLUX2_SIZES = ("1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3")
KONTEXT_SIZES = (*FLUX2_SIZES, "21:9", "9:21", "match_input_image", "auto")
# model -> (accepted sizes, most input images), per seeds 003 and 004
MODELS: dict[str, tuple[tuple[str, ...], int]] = {
    "flux-2-flex": (FLUX2_SIZES, 8),
    "flux-2-pro": (FLUX2_SIZES, 8),
    "flux-kontext-pro": (KONTEXT_SIZES, 1),
    "flux-kontext-max": (KONTEXT_SIZES, 1),
}


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(
        {"code": status, "error": {"code": status, "message": message, "type": kind}},
        status_code=status,
    )


def _authorized(request: Request) -> bool:
    auth = request.headers.get("authorization", "")
    return auth.startswith("Bearer ") and len(auth) > len("Bearer ")


def task_body(sim: Simulator, task: SimTask) -> dict[str, Any]:
    """The documented polled shape: ``{"code":200,"data":{id,status,progress,result,…}}``."""
    data: dict[str, Any] = {"id": task.id, "created": int(task.created_at)}
    if task.status == "pending":
        age = time.time() - task.created_at
        delay = max(float(sim.fault(task, "delay")), 1e-6)
        data["status"] = "pending" if age < delay / 2 else "processing"
        data["progress"] = min(95, int(100 * age / delay))
    elif task.status == "succeeded":
        as_list = task.extra.get("url_shape") == "list"
        expires = int(task.expires_at or 0)
        data.update(
            status="completed",
            progress=100,
            completed=int(task.completed_at or time.time()),
            result={
                "images": [
                    {"url": [url] if as_list else url, "expires_at": expires} for url in task.urls
                ]
            },
        )
    else:
        data.update(
            status="failed",
            progress=100,
            completed=int(task.completed_at or time.time()),
            error={
                "code": (
                    "content_policy_violation"
                    if task.status == "moderated"
                    else "generation_failed"
                ),
                "message": task.error,
            },
        )
    return {"code": 200, "data": data}


def _check(params: dict[str, Any]) -> str | None:
    """The documented refusals: unknown model, unsupported ratio, too many input images,
    base64 input, a resolution other than 1K/2K."""
    model = params.get("model")
    if not isinstance(model, str) or model not in MODELS:
        return f"unsupported model {model!r}"
    sizes, most = MODELS[model]
    size = params.get("size")
    if size is not None and size not in sizes:
        return f"unsupported size {size!r} for {model}"
    resolution = params.get("resolution")
    if resolution is not None and str(resolution).upper() not in ("1K", "2K"):
        return f"unsupported resolution {resolution!r}"
    urls = params.get("image_urls")
    if urls is not None:
        if not isinstance(urls, list) or len(urls) > most:
            return f"image_urls: at most {most} for {model}"
        if not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
            return "image_urls: public URLs only, base64 is not supported"
    return None


def routes(sim: Simulator) -> list[Route]:
    counter = {"n": 0}

    async def generate(request: Request) -> Response:
        if not _authorized(request):
            sim.rejected += 1
            return _error(401, "missing or invalid API key", "authentication_error")
        try:
            params = await request.json()
        except ValueError:
            sim.rejected += 1
            return _error(400, "invalid JSON")
        if not isinstance(params, dict) or not params.get("prompt"):
            sim.rejected += 1
            return _error(400, "prompt is required")
        problem = _check(params)
        if problem is not None:
            sim.rejected += 1
            return _error(400, problem)
        task = sim.new_task("apimart", params, prefix="task")
        task.extra["url_shape"] = "list" if counter["n"] % 2 else "string"
        counter["n"] += 1

        async def no_callback(_: SimTask) -> None:
            return None

        sim.schedule(task, lambda t: sim.complete(t, 1), no_callback)
        return JSONResponse({"code": 200, "data": [{"status": "submitted", "task_id": task.id}]})

    async def get_task(request: Request) -> Response:
        if not _authorized(request):
            return _error(401, "missing or invalid API key", "authentication_error")
        task = sim.tasks.get(request.path_params["task_id"])
        if task is None or task.provider != "apimart":
            return _error(404, "task not found", "not_found_error")
        return JSONResponse(task_body(sim, task))

    return [
        Route("/v1/images/generations", generate, methods=["POST"]),
        Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
    ]
