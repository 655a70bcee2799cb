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
from ..timers import LazyDeadline
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
    deadline = _Deadline(timeout)
    try:
        async for chunk in request.stream():
            deadline.moved()
            size += len(chunk)
            if size > cap:
                raise PayloadTooLarge(f"body larger than {cap} bytes")
            chunks.append(chunk)
    except asyncio.CancelledError:
        if deadline.expired():
            raise RequestTimeout(
                f"no body data for {timeout:g}s (server.body_read_timeout_seconds)"
            ) from None
        raise
    except ClientDisconnect:
        # The sender hung up mid-upload: nothing to answer and nothing went wrong here.
        raise BadRequest("the client disconnected before sending the whole body") from None
    finally:
        deadline.stop()
    return b"".join(chunks)


class _Deadline:
    """The longest wait for the next piece of a body: the reading task is cancelled once no
    piece has come for ``timeout`` seconds (a LazyDeadline, receiver.timers: one timer per
    body, where asyncio.timeout rescheduled per piece cost three times as much)."""

    __slots__ = ("_cancelling", "_fired", "_task", "_timer")

    def __init__(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:  # pragma: no cover - read_body always runs in a task
            raise RuntimeError("read_body runs outside a task")
        self._task = task
        # As asyncio.timeout does: a cancellation from elsewhere at the same time still wins.
        self._cancelling = task.cancelling()
        self._fired = False
        self._timer = LazyDeadline(loop, timeout, self._expire)
        self._timer.restart()

    def moved(self) -> None:
        self._timer.restart()

    def _expire(self) -> None:
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """On a CancelledError, once: True when it was this deadline's (and only its)."""
        return self._fired and self._task.uncancel() <= self._cancelling

    def stop(self) -> None:
        self._timer.stop()


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
