"""Provider callbacks over HTTP: read the request, hand it to :mod:`receiver.intake`, answer.

2xx only after the delivery is committed; errors are raised and answered by the app."""

from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from .. import intake
from ..views import AccountHookAnswer, HookAnswer
from .common import read_body, render, runtime

# The two answers to a task callback, rendered from their view once rather than per callback.
_ANSWERS = {
    status: bytes(render(HookAnswer(status=status)).body) for status in ("accepted", "duplicate")
}


async def task_hook(request: Request) -> Response:
    """``POST /v1/hooks/{provider}/{token}``: a callback for a task we submitted."""
    accepted = await intake.accept_callback(
        runtime(request),
        request.path_params["provider"],
        request.path_params["token"],
        request.headers,
        partial(read_body, request),
    )
    return Response(_ANSWERS[accepted.status], media_type="application/json")


async def account_hook(request: Request) -> Response:
    """``POST /v1/hooks/{provider}``: an account-level webhook (tasks submitted elsewhere)."""
    accepted = await intake.accept_account_webhook(
        runtime(request),
        request.path_params["provider"],
        request.headers,
        partial(read_body, request),
    )
    return render(AccountHookAnswer(status=accepted.status, task_id=accepted.task_id))
