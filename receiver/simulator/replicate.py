"""Simulated Replicate: predictions, the ``completed`` webhook and the account secret.

``POST /v1/predictions`` (with ``version``) and ``POST /v1/models/{owner}/{name}/predictions``
take ``{input, webhook, webhook_events_filter}`` and answer 201 with the prediction;
``GET /v1/predictions/{id}`` reads it. Like Replicate, webhooks are signed with Standard
Webhooks using one secret for the whole account, generated at start and served at
``GET /v1/webhooks/default/secret`` (``{"key": "whsec_…"}``). A prediction's ``output`` is
a list of URLs, or a lone URL string on every other single-image task, so both are exercised.
"""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..signatures import standard_sign
from .core import SimTask, Simulator

DEFAULT_MODEL = "black-forest-labs/flux-dev"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse({"title": title, "detail": detail, "status": status}, status_code=status)


def prediction(sim: Simulator, task: SimTask) -> dict[str, Any]:
    """A prediction as Replicate's API and webhooks show it."""
    status = {"succeeded": "succeeded", "failed": "failed", "moderated": "failed"}.get(
        task.status, "processing" if time.time() - task.created_at > 0.05 else "starting"
    )
    output: Any = None
    if task.status == "succeeded":
        output = task.urls[0] if task.extra.get("single") else list(task.urls)
    return {
        "id": task.id,
        "model": task.extra.get("model", DEFAULT_MODEL),
        "version": task.extra.get("version"),
        "input": task.extra.get("input", {}),
        "logs": f"Using seed: {task.seed}\n" if task.completed_at else "",
        "output": output,
        "data_removed": False,
        "error": task.error,
        "status": status,
        "created_at": _iso(task.created_at),
        "started_at": _iso(task.created_at),
        "completed_at": _iso(task.completed_at),
        "urls": {
            "get": f"{sim.public_url}/v1/predictions/{task.id}",
            "cancel": f"{sim.public_url}/v1/predictions/{task.id}/cancel",
        },
        "metrics": {"predict_time": round((task.completed_at or time.time()) - task.created_at, 3)}
        if task.completed_at
        else {},
    }


def routes(sim: Simulator) -> list[Route]:
    account_secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    counter = {"n": 0}

    def authorized(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        return auth.startswith(("Bearer ", "Token ")) and len(auth.split(" ", 1)[1]) > 0

    async def create(request: Request, model: str | None) -> Response:
        if not authorized(request):
            sim.rejected += 1
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        try:
            body = await request.json()
        except ValueError:
            sim.rejected += 1
            return _problem(400, "Invalid JSON", "The request body is not valid JSON")
        inputs = body.get("input") if isinstance(body, dict) else None
        if not isinstance(inputs, dict):
            sim.rejected += 1
            return _problem(422, "Input validation failed", "input: is required")
        version = body.get("version")
        if model is None and not isinstance(version, str):
            sim.rejected += 1
            return _problem(422, "Input validation failed", "version: is required")
        if not inputs.get("prompt"):
            sim.rejected += 1
            return _problem(422, "Input validation failed", "input.prompt: is required")
        task = sim.new_task("replicate", dict(inputs), prefix="r8")
        count = int(inputs.get("num_outputs") or 1)
        task.extra.update(
            model=model or (version.split(":")[0] if version and "/" in version else DEFAULT_MODEL),
            version=version.split(":")[-1] if isinstance(version, str) else "sim-version",
            input=inputs,
            single=count == 1 and counter["n"] % 2 == 1,
        )
        counter["n"] += 1
        events = body.get("webhook_events_filter") or ["start", "output", "logs", "completed"]
        if "completed" in events:
            task.webhook_url = body.get("webhook")

        async def send(t: SimTask) -> None:
            payload = json.dumps(prediction(sim, t)).encode()
            msg_id = f"msg_{os.urandom(12).hex()}"  # one id for every copy and retry

            def headers() -> dict[str, str]:
                ts = int(time.time()) - int(t.faults.get("timestamp_skew", 0))
                return {
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(ts),
                    "webhook-signature": standard_sign(account_secret, msg_id, ts, payload),
                }

            await sim.deliver(t, t.webhook_url or "", payload, headers)

        sim.schedule(task, lambda t: sim.complete(t, count), send)
        return JSONResponse(prediction(sim, task), status_code=201)

    async def create_versioned(request: Request) -> Response:
        return await create(request, None)

    async def create_for_model(request: Request) -> Response:
        return await create(
            request, f"{request.path_params['owner']}/{request.path_params['name']}"
        )

    async def get_prediction(request: Request) -> Response:
        if not authorized(request):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        task = sim.tasks.get(request.path_params["prediction_id"])
        if task is None or task.provider != "replicate":
            return _problem(404, "Not found", "The requested resource could not be found")
        return JSONResponse(prediction(sim, task))

    async def webhook_secret(request: Request) -> Response:
        if not authorized(request):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        return JSONResponse({"key": account_secret})

    return [
        Route("/v1/predictions", create_versioned, methods=["POST"]),
        Route("/v1/models/{owner}/{name}/predictions", create_for_model, methods=["POST"]),
        Route("/v1/predictions/{prediction_id}", get_prediction, methods=["GET"]),
        Route("/v1/webhooks/default/secret", webhook_secret, methods=["GET"]),
    ]
