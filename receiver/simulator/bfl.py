"""Simulated Black Forest Labs: ``POST /v1/{model}``, ``GET /v1/get_result``, webhooks.

Submissions need ``x-key`` and answer ``{"id", "polling_url", "cost", "input_mp",
"output_mp"}``. The ``polling_url`` names another host than the one submitted to (see
:func:`region_url`), and the task is known only there, as at BFL's regional hosts: a client
that polls a URL it built itself on the submission host hears "Task not found". The task is read
at ``GET /v1/get_result?id=`` in BFL's shape (``Pending``/``Ready``/``Error``/``Task not found``/
``Request Moderated``/``Content Moderated``). The webhook body is BFL's documented example,
authenticated by the per-request ``webhook_secret`` in one of BFL's two documented forms,
alternating task by task (``X-BFL-Signature`` HMAC, then ``X-Webhook-Secret`` echo) so a
receiver meets both; a task may pin one with the prompt marker ``[sim:signature=hmac|echo|
none|bad]``. ``result.sample`` carries an Azure-style ``se=`` expiry like BFL's delivery URLs
and stops working after ``url_ttl`` (10 minutes by default, as at BFL).

Prompt markers: ``[sim:outcome=moderated|failed]``, ``[sim:moderation=request]`` (input
moderation rather than output), ``[sim:rate_limit=N]`` (the first N submissions of that prompt
get 429 with ``Retry-After``), plus the core ones (duplicates, delays, download faults).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..signatures import bfl_sign
from .core import SimTask, Simulator, faults_from_prompt

MODELS = ("flux-2-max", "flux-2-pro", "flux-2-flex", "flux-kontext-pro", "flux-kontext-max")
KONTEXT = ("flux-kontext-pro", "flux-kontext-max")


def _detail(status: int, loc: str, msg: str) -> JSONResponse:
    """FastAPI-style validation answer, as BFL's API gives."""
    return JSONResponse(
        {"detail": [{"loc": ["body", loc], "msg": msg, "type": "value_error"}]},
        status_code=status,
    )


def sample_url(sim: Simulator, task: SimTask, index: int = 0) -> str:
    expires = datetime.fromtimestamp(task.expires_at or time.time(), UTC)
    stamp = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{task.urls[index]}&se={stamp}&sp=r&sv=2024-11-04&sr=b"


def moderation_status(task: SimTask) -> str:
    return (
        "Request Moderated" if task.faults.get("moderation") == "request" else "Content Moderated"
    )


def result_body(sim: Simulator, task: SimTask) -> dict[str, Any]:
    """``GET /v1/get_result`` answer."""
    body: dict[str, Any] = {"id": task.id, "result": None, "details": None, "preview": None}
    if task.status == "pending":
        delay = max(float(sim.fault(task, "delay")), 1e-6)
        body.update(
            status="Pending", progress=round(min(0.95, (time.time() - task.created_at) / delay), 2)
        )
    elif task.status == "succeeded":
        body.update(
            status="Ready",
            progress=1.0,
            result={
                "sample": sample_url(sim, task),
                "prompt": task.params.get("prompt"),
                "seed": task.seed,
                "start_time": task.created_at,
                "end_time": task.completed_at,
                "duration": round((task.completed_at or task.created_at) - task.created_at, 3),
            },
        )
    elif task.status == "moderated":
        body.update(
            status=moderation_status(task),
            details={"Moderation Reasons": [task.error or "flagged"]},
        )
    else:
        body.update(status="Error", details={"error": task.error})
    return body


def webhook_body(sim: Simulator, task: SimTask) -> dict[str, Any]:
    """BFL's documented webhook example: ``{"id","status":"Ready","result":{"sample","prompt",
    "seed"},"timestamp"}``; failure ``{"id","status":"Error","error","message","timestamp"}``."""
    # An ISO 8601 string, as in BFL's examples ("2025-01-15T10:30:00Z").
    moment = datetime.fromtimestamp(task.completed_at or time.time(), UTC)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if task.status == "succeeded":
        return {
            "id": task.id,
            "status": "Ready",
            "result": {
                "sample": sample_url(sim, task),
                "prompt": task.params.get("prompt"),
                "seed": task.seed,
            },
            "timestamp": stamp,
        }
    if task.status == "moderated":
        status = moderation_status(task)
        return {
            "id": task.id,
            "status": status,
            "error": status,
            "message": task.error,
            "timestamp": stamp,
        }
    return {
        "id": task.id,
        "status": "Error",
        "error": "Generation failed",
        "message": task.error,
        "timestamp": stamp,
    }


def signer(task: SimTask, body: bytes, style: str) -> Callable[[], dict[str, str]]:
    """Headers for one webhook: ``hmac`` (X-BFL-Signature), ``echo`` (X-Webhook-Secret),
    ``none``, or ``bad`` (a signature over other bytes)."""
    secret = task.webhook_secret or ""

    def headers() -> dict[str, str]:
        if style == "echo":
            return {"x-webhook-secret": secret} if secret else {}
        if style == "none" or not secret:
            return {}
        if style == "bad":
            return {"x-bfl-signature": bfl_sign(secret, body + b" ")}
        return {"x-bfl-signature": bfl_sign(secret, body)}

    return headers


def start_task(
    sim: Simulator,
    provider: str,
    model: str,
    params: dict[str, Any],
    counter: dict[str, int],
    body_of: Callable[[Simulator, SimTask], dict[str, Any]],
    style: str | None = None,
) -> SimTask:
    """Accept a BFL-style task and schedule its callback, signed in ``style``; by default the
    two signature forms alternate from task to task. A prompt marker may pin one."""
    task = sim.new_task(provider, dict(params), prefix=provider[:3])
    task.extra["model"] = model
    task.webhook_url = params.get("webhook_url")
    task.webhook_secret = params.get("webhook_secret")
    default = style or ("hmac" if counter["n"] % 2 == 0 else "echo")
    style = str(task.faults.get("signature", default))
    task.extra["signature"] = style
    counter["n"] += 1

    async def send(t: SimTask) -> None:
        body = json.dumps(body_of(sim, t)).encode()
        await sim.deliver(t, t.webhook_url or "", body, signer(t, body, style))

    sim.schedule(task, lambda t: sim.complete(t, 1), send)
    return task


def region_url(sim: Simulator) -> str:
    """Where this simulator's tasks are polled: another host than the one submissions go to,
    as with BFL's regional hosts (``api.us1.bfl.ai`` for a task submitted to ``api.bfl.ai``).
    ``localhost`` stands in for ``127.0.0.1`` (same listener, another host name) unless
    ``Faults.polling_base_url`` names one."""
    if sim.faults.polling_base_url:
        return sim.faults.polling_base_url.rstrip("/")
    parts = urlsplit(sim.public_url)
    if parts.hostname == "127.0.0.1":
        return sim.public_url.replace("//127.0.0.1", "//localhost", 1)
    return sim.public_url


def check_common(params: dict[str, Any], kontext: bool) -> JSONResponse | None:
    """The checks BFL's API itself makes (the receiver should have caught them first)."""
    if not isinstance(params.get("prompt"), str) or not params["prompt"]:
        return _detail(422, "prompt", "field required")
    for key in ("width", "height"):
        value = params.get(key)
        if value is not None and (not isinstance(value, int) or value < 64 or value % 16):
            return _detail(422, key, "must be an integer >= 64 and a multiple of 16")
    limit = 4 if kontext else 8
    names = {"input_image", *(f"input_image_{i}" for i in range(2, limit + 1))}
    for key in params:
        if key.startswith("input_image") and key not in names:
            return _detail(422, key, "extra fields not permitted")
    tolerance = params.get("safety_tolerance")
    if tolerance is not None and (
        not isinstance(tolerance, int) or not 0 <= tolerance <= (6 if kontext else 5)
    ):
        return _detail(422, "safety_tolerance", "out of range")
    url = params.get("webhook_url")
    if url is not None and (not isinstance(url, str) or not 1 <= len(url) <= 2083):
        return _detail(422, "webhook_url", "ensure this value has 1 to 2083 characters")
    return None


def rate_limiter(sim: Simulator) -> Callable[[str], JSONResponse | None]:
    """``[sim:rate_limit=N]``: the first N submissions of a prompt are refused with 429."""
    seen: dict[str, int] = {}

    def check(prompt: str) -> JSONResponse | None:
        limit = int(faults_from_prompt(prompt).get("rate_limit", 0) or 0)
        count = seen.get(prompt, 0)
        if count < limit:
            seen[prompt] = count + 1
            sim.rejected += 1
            return JSONResponse(
                {"detail": "Rate limit exceeded: too many active tasks"},
                status_code=429,
                headers={"retry-after": "1"},
            )
        return None

    return check


def routes(sim: Simulator) -> list[Route]:
    counter = {"n": 0}
    limited = rate_limiter(sim)

    def authorized(request: Request) -> bool:
        return bool(request.headers.get("x-key"))

    def make_create(model: str) -> Callable[[Request], Any]:
        async def create(request: Request) -> Response:
            if not authorized(request):
                sim.rejected += 1
                return JSONResponse({"detail": "Not authenticated"}, status_code=403)
            try:
                params = await request.json()
            except ValueError:
                sim.rejected += 1
                return JSONResponse({"detail": "invalid JSON"}, status_code=400)
            if not isinstance(params, dict):
                sim.rejected += 1
                return _detail(422, "body", "must be an object")
            refused = limited(str(params.get("prompt", ""))) or check_common(
                params, model in KONTEXT
            )
            if refused is not None:
                if refused.status_code != 429:
                    sim.rejected += 1
                return refused
            task = start_task(sim, "bfl", model, params, counter, webhook_body)
            region = region_url(sim)
            task.extra["region_host"] = urlsplit(region).hostname
            return JSONResponse(
                {
                    "id": task.id,
                    "polling_url": f"{region}/v1/get_result?id={task.id}",
                    "cost": 3.0,
                    "input_mp": 0.0,
                    "output_mp": 1.05,
                }
            )

        return create

    async def get_result(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"detail": "Not authenticated"}, status_code=403)
        task_id = request.query_params.get("id", "")
        task = sim.tasks.get(task_id)
        if task is not None:  # test hook: which host names the task was polled at
            task.extra.setdefault("polled_hosts", []).append(request.url.hostname)
        region = task.extra.get("region_host") if task is not None else None
        if (
            task is None
            or task.provider != "bfl"
            or (region is not None and request.url.hostname != region)
        ):
            # BFL: a task is known only at the regional host its polling_url names.
            return JSONResponse({"id": task_id, "status": "Task not found", "result": None})
        return JSONResponse(result_body(sim, task))

    found = [Route(f"/v1/{m}", make_create(m), methods=["POST"]) for m in MODELS]
    found.append(Route("/v1/get_result", get_result, methods=["GET"]))
    return found
