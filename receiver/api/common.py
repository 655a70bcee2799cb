"""Shared pieces of the HTTP handlers: errors as JSON, capped bodies, the runtime."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from .. import strictjson
from ..errors import BadRequest, PayloadTooLarge, ReceiverError, RequestTimeout, ValidationFailed
from ..runtime import Runtime
from ..views import ErrorEnvelope

M = TypeVar("M", bound=BaseModel)


def render(view: BaseModel, status: int = 200) -> JSONResponse:
    """A response from its view model (the model /openapi.json documents it with). A value
    recorded before input was parsed strictly (NaN, a lone surrogate) is shown scrubbed
    rather than answering 500."""
    data = view.model_dump(mode="json")
    try:
        return JSONResponse(data, status_code=status)
    except (ValueError, UnicodeEncodeError):
        return JSONResponse(strictjson.scrub(data), status_code=status)


def error_json(status: int, code: str, message: str) -> JSONResponse:
    return render(ErrorEnvelope.of(code, message), status)


def from_error(exc: ReceiverError) -> JSONResponse:
    response = error_json(exc.status, exc.code, exc.message or exc.code)
    if exc.status == 503:
        response.headers["retry-after"] = "5"
    return response


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def read_body(request: Request, cap: int) -> bytes:
    """The raw body, refusing past ``cap`` bytes without reading it all into memory."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > cap:
                raise PayloadTooLarge(f"body larger than {cap} bytes")
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    timeout = runtime(request).settings.server.body_read_timeout_seconds
    clock = asyncio.get_running_loop().time
    try:
        # One deadline for the whole body, moved on by each piece that arrives (a deadline per
        # read cost three timers for a body that came in one piece).
        async with asyncio.timeout(timeout) as deadline:
            async for chunk in request.stream():
                if not chunk:
                    continue  # the end of the body, already here
                size += len(chunk)
                if size > cap:
                    raise PayloadTooLarge(f"body larger than {cap} bytes")
                chunks.append(chunk)
                deadline.reschedule(clock() + timeout)
    except TimeoutError:
        raise RequestTimeout(
            f"no body data for {timeout:g}s (server.body_read_timeout_seconds)"
        ) from None
    except ClientDisconnect:
        # The sender hung up mid-upload: nothing to answer and nothing went wrong here.
        raise BadRequest("the client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def read_model(request: Request, model: type[M]) -> M:
    """The body as ``model``: 413 past the size cap, 400 unless a JSON object, and 422 naming
    the first field outside its limits."""
    cap = runtime(request).settings.server.max_body_bytes
    body = parse_object(await read_body(request, cap))
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise ValidationFailed(field, err["msg"]) from None


def parse_object(body: bytes) -> dict[str, Any]:
    """A request body: strict JSON (no NaN, Infinity, lone surrogates, NUL, deep nesting),
    a bad value answered 422 naming its field."""
    data = strictjson.loads(body)
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data
