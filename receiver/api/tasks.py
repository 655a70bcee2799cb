"""The application-facing task API."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response

from ..errors import Conflict, NotFound, Unauthorized, ValidationFailed
from ..models import OutcomeStatus, Status
from ..replay import current_outcome
from ..signatures import access_token, verify_access_token
from ..submit import TaskRequest, create_and_submit
from ..views import CreatedTaskView, RedeliveryView, TaskPage, TaskView
from .common import read_model, render, runtime


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def require_api_key(request: Request) -> None:
    token = _bearer(request)
    keys = runtime(request).settings.api_keys
    if token is None:
        raise Unauthorized("missing Authorization: Bearer API key")
    # Compare with every key, in constant time, without stopping at the first match.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.encode(), key.encode())
    if not matched:
        raise Unauthorized("invalid API key")


def require_task_access(request: Request, task_id: str) -> None:
    """An API key, or the task's own public access token (header or ``?access_token=``)."""
    query_token = request.query_params.get("access_token")
    bearer = _bearer(request)
    if query_token is None and bearer is not None:
        try:
            require_api_key(request)
            return
        except Unauthorized:
            pass
    token = query_token or bearer
    if token is None:
        raise Unauthorized("missing API key or access token")
    rt = runtime(request)
    verify_access_token(
        rt.settings.secret_keys, token, task_id, rt.settings.server.access_token_seconds
    )


async def create_task(request: Request) -> Response:
    rt = runtime(request)
    require_api_key(request)
    req = await read_model(request, TaskRequest)
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 200:
        raise ValidationFailed("Idempotency-Key", "must be 1 to 200 characters")
    task, created = await create_and_submit(rt, req, key)
    token = access_token(rt.settings.secret_keys, task.id)
    view = CreatedTaskView(**dict(TaskView.of(task)), access_token=token)
    return render(view, 202 if created else 200)


async def get_task(request: Request) -> Response:
    rt = runtime(request)
    task_id = request.path_params["task_id"]
    require_task_access(request, task_id)
    task = await rt.ledger.get_task(task_id)
    if task is None:
        raise NotFound("no such task")
    return render(TaskView.of(task))


async def list_tasks(request: Request) -> Response:
    rt = runtime(request)
    q = request.query_params
    require_api_key(request)
    try:
        status = Status(q["status"]) if q.get("status") else None
    except ValueError:
        raise ValidationFailed("status", f"must be one of {[s.value for s in Status]}") from None
    try:
        limit = min(200, max(1, int(q.get("limit", "50"))))
        after = float(q["created_after"]) if q.get("created_after") else None
        before = float(q["created_before"]) if q.get("created_before") else None
    except ValueError:
        raise ValidationFailed("limit/created_after/created_before", "must be numbers") from None
    tasks, cursor = await rt.ledger.list_tasks(
        status=status,
        provider=q.get("provider"),
        created_after=after,
        created_before=before,
        cursor=q.get("cursor"),
        limit=limit,
    )
    return render(TaskPage(tasks=[TaskView.of(t) for t in tasks], next_cursor=cursor))


async def replay_task(request: Request) -> Response:
    """Archive again from the provider's current result (``receiver replay``)."""
    rt = runtime(request)
    task_id = request.path_params["task_id"]
    require_api_key(request)
    task = await rt.ledger.get_task(task_id)
    if task is None:
        raise NotFound("no such task")
    outcome = await current_outcome(rt, task)
    if outcome.status is not OutcomeStatus.SUCCEEDED:
        raise Conflict(f"the provider reports the task {outcome.status.value}")
    deadline = rt.provider(task.provider).deadline_for(outcome, rt.clock.now())
    task = await rt.ledger.requeue_task(task_id, outcome, deadline)
    return render(TaskView.of(task), 202)


async def redeliver_task(request: Request) -> Response:
    """Send the task's final notification again, as a new event (``receiver redeliver``)."""
    rt = runtime(request)
    task_id = request.path_params["task_id"]
    require_api_key(request)
    note = await rt.ledger.redeliver(task_id)
    if note is None:
        raise Conflict("the task has not ended or has no notify_url")
    return render(RedeliveryView(event_id=note.id, url=note.url), 202)
