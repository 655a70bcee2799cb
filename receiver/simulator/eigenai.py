"""Simulated EigenAI: ``POST /api/v1/generate`` answers with the image itself.

With ``binary_response: true`` the body is the PNG; otherwise a JSON object carrying it as
base64. The request id is echoed in ``x-request-id`` so tests can match archived bytes with
``/_sim/state``. Failures are HTTP errors with a JSON ``error``, as no other form is documented.
"""

from __future__ import annotations

import asyncio
import base64

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .core import Simulator


def routes(sim: Simulator) -> list[Route]:
    async def generate(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            sim.rejected += 1
            return JSONResponse({"error": "missing or invalid API key"}, status_code=401)
        try:
            params = await request.json()
        except ValueError:
            sim.rejected += 1
            return JSONResponse({"error": "invalid JSON"}, status_code=400)
        if not isinstance(params, dict) or not params.get("model") or not params.get("prompt"):
            sim.rejected += 1
            return JSONResponse({"error": "model and prompt are required"}, status_code=400)
        for key in ("width", "height"):
            value = params.get(key)
            if value is not None and (not isinstance(value, int) or not 512 <= value <= 2048):
                sim.rejected += 1
                return JSONResponse({"error": f"{key} must be 512-2048"}, status_code=400)
        task = sim.new_task("eigenai", params, prefix="eig")
        await asyncio.sleep(float(sim.fault(task, "delay")))
        sim.complete(task, 1)
        headers = {"x-request-id": task.id}
        if task.status == "moderated":
            return JSONResponse({"error": task.error}, status_code=400, headers=headers)
        if task.status == "failed":
            return JSONResponse({"error": task.error}, status_code=500, headers=headers)
        image = task.images[0]
        if params.get("binary_response", False) is True:
            return Response(image, media_type="image/png", headers=headers)
        return JSONResponse(
            {
                "status": "succeeded",
                "seed": task.seed,
                "image_base64": base64.b64encode(image).decode(),
            },
            headers=headers,
        )

    return [Route("/api/v1/generate", generate, methods=["POST"])]
