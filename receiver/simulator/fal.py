"""Simulated fal: the queue API, ``fal_webhook`` callbacks signed with ED25519, and the JWKS.

``POST /{owner}/{app}[/{path}]?fal_webhook=<url>`` (``Authorization: Key …``) takes the
endpoint's inputs and answers with ``request_id``, ``gateway_request_id`` and the queue URLs;
``GET /{owner}/{app}/requests/{id}/status`` and ``GET /{owner}/{app}/requests/{id}`` read the
request (the queue URLs drop the endpoint's sub-path, as fal's do). Callbacks carry
``X-Fal-Webhook-Request-Id``, ``-User-Id``, ``-Timestamp`` and ``-Signature`` (hex ED25519 by a
key generated at start), and the public keys are served at ``GET /.well-known/jwks.json``.

Prompt markers drive the faults (fal's inputs have no room for them): the shared ones
(``[sim:outcome=failed]``, ``[sim:duplicates=3]``, ``[sim:timestamp_skew=900]`` …) plus
``[sim:outcome=moderated]`` (status ``OK``, every image flagged in ``has_nsfw_concepts``, as
fal's safety checker does), ``[sim:nsfw=ft]`` (flag some: one letter per image) and
``[sim:payload_error=true]`` (``payload: null`` with a ``payload_error``).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..signatures import fal_sign, public_jwk
from .core import SimTask, Simulator

NAMED_SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
JWKS_PATH = "/.well-known/jwks.json"


class _OwnerConvertor(Convertor[str]):
    """An app owner that is not the first segment of another simulator's POST routes, so the
    queue's catch-all submit route cannot swallow them whatever the order of the routes."""

    regex = r"(?!(?:v1|v2|api|image|images|tasks|files|_sim)/)[A-Za-z0-9][A-Za-z0-9_.-]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fal_owner", _OwnerConvertor())


def _detail(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _size(params: dict[str, Any]) -> tuple[int, int]:
    value = params.get("image_size", "landscape_4_3")
    if isinstance(value, dict):
        return int(value.get("width") or 512), int(value.get("height") or 512)
    return NAMED_SIZES.get(str(value), (1024, 768))


def _missing_image(path: str, params: dict[str, Any]) -> str | None:
    """Edit endpoints need their source images: Kontext (``.../kontext``, ``.../kontext/max``)
    and image-to-image take ``image_url``; multi-image Kontext and FLUX.2 edit take
    ``image_urls`` (a non-empty list)."""
    if path.endswith(("/multi", "/edit")):
        urls = params.get("image_urls")
        return None if isinstance(urls, list) and urls else "image_urls"
    if ("/kontext" in path and "text-to-image" not in path) or path.endswith("image-to-image"):
        return None if isinstance(params.get("image_url"), str) else "image_url"
    return None


def routes(sim: Simulator) -> list[Route]:
    signing_key = Ed25519PrivateKey.generate()
    # A second, unused key: the receiver must accept a signature by any key of the set.
    spare_key = Ed25519PrivateKey.generate()
    jwks = {
        "keys": [
            public_jwk(spare_key.public_key(), kid="sim-spare"),
            public_jwk(signing_key.public_key(), kid=f"sim-{os.urandom(4).hex()}"),
        ]
    }
    user_id = f"sim-user-{os.urandom(4).hex()}"

    def authorized(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        return auth.startswith("Key ") and len(auth) > 4

    def urls(task: SimTask) -> dict[str, str]:
        base = f"{sim.public_url}/{task.extra['app']}/requests/{task.id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    def payload(task: SimTask) -> dict[str, Any]:
        width, height = task.extra["rendered"]
        body: dict[str, Any] = {
            "images": [
                {
                    "url": url,
                    "width": width,
                    "height": height,
                    "content_type": "image/png",
                    "file_name": f"{index}.png",
                    "file_size": len(task.images[index]),
                }
                for index, url in enumerate(task.urls)
            ],
            "seed": task.seed,
            "prompt": task.params.get("prompt"),
            "timings": {
                "inference": round((task.completed_at or time.time()) - task.created_at, 3)
            },
        }
        if task.extra.get("safety", True):
            body["has_nsfw_concepts"] = task.extra.get("nsfw") or [False] * len(task.urls)
        return body

    def error_detail(task: SimTask) -> dict[str, Any]:
        return {"detail": [{"loc": ["body"], "msg": task.error, "type": "runtime_error"}]}

    def callback_body(task: SimTask) -> dict[str, Any]:
        body: dict[str, Any] = {
            "request_id": task.id,
            "gateway_request_id": task.extra["gateway_id"],
            "status": "OK",
            "payload": None,
            "error": None,
            "payload_error": None,
        }
        if task.status == "failed":
            body.update(
                status="ERROR", error="Invalid status code: 500", payload=error_detail(task)
            )
        elif task.faults.get("payload_error"):
            body["payload_error"] = "Response payload is not JSON serializable"
        else:
            body["payload"] = payload(task)
        return body

    def finish(task: SimTask, count: int) -> None:
        """Complete the task; a moderated one still has (blacked-out) images, all flagged."""
        outcome = task.faults.get("outcome")
        if outcome == "moderated":
            del task.faults["outcome"]
            sim.complete(task, count)
            task.faults["outcome"] = outcome
            task.extra["nsfw"] = [True] * count
            task.status = "moderated"
            return
        sim.complete(task, count)
        flags = task.faults.get("nsfw")  # one letter per image: "tf" flags the first
        if isinstance(flags, str) and len(flags) == count:
            task.extra["nsfw"] = [letter == "t" for letter in flags]

    async def submit(request: Request) -> Response:
        if not authorized(request):
            sim.rejected += 1
            return _detail(401, "No user found for Key ID and Secret")
        try:
            params = await request.json()
        except ValueError:
            sim.rejected += 1
            return _detail(400, "Request body is not valid JSON")
        if not isinstance(params, dict) or not isinstance(params.get("prompt"), str):
            sim.rejected += 1
            return JSONResponse(
                {"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]},
                status_code=422,
            )
        count = params.get("num_images", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 4:
            sim.rejected += 1
            return JSONResponse(
                {"detail": [{"loc": ["body", "num_images"], "msg": "must be 1 to 4"}]},
                status_code=422,
            )
        missing = _missing_image(request.url.path, params)
        if missing is not None:
            sim.rejected += 1
            return JSONResponse(
                {"detail": [{"loc": ["body", missing], "msg": "field required"}]},
                status_code=422,
            )
        width, height = _size(params)
        task = sim.new_task("fal", {**params, "width": width, "height": height})
        del sim.tasks[task.id]  # fal's request ids are UUIDs
        task.id = str(uuid.uuid4())
        sim.tasks[task.id] = task
        owner, app = request.path_params["owner"], request.path_params["app"]
        task.extra.update(
            app=f"{owner}/{app}",
            endpoint=request.url.path.strip("/"),
            gateway_id=task.id,
            rendered=(min(width, 256), min(height, 256)),
            safety=params.get("enable_safety_checker", True) is not False,
        )
        task.webhook_url = request.query_params.get("fal_webhook")

        async def send(t: SimTask) -> None:
            body = json.dumps(callback_body(t)).encode()

            def headers() -> dict[str, str]:
                ts = int(time.time()) - int(t.faults.get("timestamp_skew", 0))
                return {
                    "x-fal-webhook-request-id": t.id,
                    "x-fal-webhook-user-id": user_id,
                    "x-fal-webhook-timestamp": str(ts),
                    "x-fal-webhook-signature": fal_sign(signing_key, t.id, user_id, ts, body),
                }

            await sim.deliver(t, t.webhook_url or "", body, headers)

        sim.schedule(task, lambda t: finish(t, count), send)
        return JSONResponse(
            {
                "request_id": task.id,
                "gateway_request_id": task.id,
                "status": "IN_QUEUE",
                "queue_position": 0,
                **urls(task),
            }
        )

    def find(request: Request) -> SimTask | None:
        task = sim.tasks.get(request.path_params["request_id"])
        app = f"{request.path_params['owner']}/{request.path_params['app']}"
        if task is None or task.provider != "fal" or task.extra.get("app") != app:
            return None
        return task

    async def status(request: Request) -> Response:
        if not authorized(request):
            return _detail(401, "No user found for Key ID and Secret")
        task = find(request)
        if task is None:
            return _detail(404, "Request not found")
        body: dict[str, Any] = {"request_id": task.id, **urls(task)}
        if task.status == "pending":
            started = time.time() - task.created_at > 0.05
            body["status"] = "IN_PROGRESS" if started else "IN_QUEUE"
            if not started:
                body["queue_position"] = 0
        else:
            body["status"] = "COMPLETED"
            if task.status == "failed":
                body.update(error=task.error, error_type="runner_server_error")
        return JSONResponse(body)

    async def result(request: Request) -> Response:
        if not authorized(request):
            return _detail(401, "No user found for Key ID and Secret")
        task = find(request)
        if task is None:
            return _detail(404, "Request not found")
        if task.status == "pending":
            return _detail(400, "Request is still in progress")
        if task.status == "failed":
            return JSONResponse(
                error_detail(task),
                status_code=422,
                headers={"x-fal-error-type": "runner_server_error"},
            )
        if task.expires_at is not None and task.expires_at < time.time():
            # Reading the result again hands out fresh URLs, like a refresh.
            task.expires_at = time.time() + float(sim.fault(task, "url_ttl"))
            task.urls = [sim.file_url(task, i, "png") for i in range(len(task.images))]
        return JSONResponse(payload(task))

    async def keys(request: Request) -> Response:
        return JSONResponse(jwks)

    return [
        Route(JWKS_PATH, keys, methods=["GET"]),
        Route("/{owner:fal_owner}/{app}/requests/{request_id}/status", status, methods=["GET"]),
        Route("/{owner:fal_owner}/{app}/requests/{request_id}", result, methods=["GET"]),
        Route("/{owner:fal_owner}/{app}", submit, methods=["POST"]),
        Route("/{owner:fal_owner}/{app}/{path:path}", submit, methods=["POST"]),
    ]
