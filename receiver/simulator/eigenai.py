"""Simulated EigenAI: ``POST /api/v1/generate`` answers with the image itself.

Seed 002 documents the request (JSON for text-to-image; ``multipart/form-data`` for editing, with
the source image uploaded as ``image_file`` or ``image``, or named by ``image_path``) and says
``binary_response`` returns the image bytes instead of JSON. It does not document the JSON
answer, so the simulator can give each form a client may meet (all but ``binary`` are guesses,
labelled in tests/fixtures/eigenai/SOURCES.md), chosen with the prompt marker
``[sim:answer=...]``:

- ``binary``: the PNG itself (``image/png``); the default when ``binary_response`` is true;
- ``base64``: ``{"status", "seed", "image_base64"}`` (the default otherwise);
- ``data_url``: ``{"images": [{"url": "data:image/png;base64,..."}]}``;
- ``url``: ``{"data": [{"url": "<signed URL>", "seed"}]}``, served by this simulator;
- ``unknown``: a JSON body with no image anywhere (what an undocumented shape looks like).

The request id is echoed in ``x-request-id`` so tests can match archived bytes with the task.
Editing uploads are recorded (``extra["upload"]``: name, content type, sha256). Failures are
HTTP errors with a JSON ``error``, as no other form is documented.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .core import Simulator

FORMS = ("binary", "base64", "data_url", "url", "unknown")


def _form_parts(content_type: str, body: bytes) -> list[tuple[str, str | None, str, bytes]]:
    """``(name, filename, content type, bytes)`` of each multipart/form-data part, read with
    the standard library's MIME parser (enough for a simulator; no extra dependency)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    parts = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            parts.append((name, part.get_filename(), part.get_content_type(), payload))
    return parts


def routes(sim: Simulator) -> list[Route]:
    async def read(request: Request) -> tuple[dict[str, Any], dict[str, Any]] | JSONResponse:
        """``(params, upload)`` from a JSON or multipart request, or the error to answer."""
        kind = request.headers.get("content-type", "")
        upload: dict[str, Any] = {}
        if kind.startswith("multipart/form-data"):
            params: dict[str, Any] = {}
            for name, filename, part_type, data in _form_parts(kind, await request.body()):
                if filename is not None:
                    upload = {
                        "field": name,
                        "filename": filename,
                        "content_type": part_type,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "bytes": len(data),
                    }
                else:
                    params[name] = data.decode()
            if params.get("mode") != "image-editing":
                return JSONResponse({"error": "multipart is for mode image-editing"}, 400)
            if not upload and not params.get("image_path"):
                return JSONResponse({"error": "image_file, image or image_path required"}, 400)
            return params, upload
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "invalid JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be an object"}, status_code=400)
        if body.get("mode") == "image-editing":
            return JSONResponse({"error": "image editing takes multipart/form-data"}, 400)
        for key in ("width", "height"):
            value = body.get(key)
            if value is not None and (not isinstance(value, int) or not 512 <= value <= 2048):
                return JSONResponse({"error": f"{key} must be 512-2048"}, status_code=400)
        return body, upload

    async def generate(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            sim.rejected += 1
            return JSONResponse({"error": "missing or invalid API key"}, status_code=401)
        got = await read(request)
        if isinstance(got, JSONResponse):
            sim.rejected += 1
            return got
        params, upload = got
        if not params.get("model") or not params.get("prompt"):
            sim.rejected += 1
            return JSONResponse({"error": "model and prompt are required"}, status_code=400)
        task = sim.new_task("eigenai", params, prefix="eig")
        task.extra["upload"] = upload
        await asyncio.sleep(float(sim.fault(task, "delay")))
        sim.complete(task, 1)
        headers = {"x-request-id": task.id}
        if task.status == "moderated":
            return JSONResponse({"error": task.error}, status_code=400, headers=headers)
        if task.status == "failed":
            return JSONResponse({"error": task.error}, status_code=500, headers=headers)
        image = task.images[0]
        binary = params.get("binary_response") in (True, "true")
        form = str(task.faults.get("answer", "binary" if binary else "base64"))
        task.extra["answer"] = form
        encoded = base64.b64encode(image).decode()
        if form == "binary":
            return Response(image, media_type="image/png", headers=headers)
        if form == "data_url":
            body: dict[str, Any] = {"images": [{"url": f"data:image/png;base64,{encoded}"}]}
        elif form == "url":
            body = {"data": [{"url": task.urls[0], "seed": task.seed}]}
        elif form == "unknown":
            body = {"result": {"artifact": task.id, "state": "stored"}, "took_ms": 812}
        else:
            body = {"status": "succeeded", "seed": task.seed, "image_base64": encoded}
        return JSONResponse(body, headers=headers)

    return [Route("/api/v1/generate", generate, methods=["POST"])]
