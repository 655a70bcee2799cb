"""``GET /v1/tasks/{id}/events``: every status change as a server-sent event, until the end.

Woken by the ledger's announcements for the task (other replicas' through LISTEN/NOTIFY) and,
as a safety net, by a short poll (see :mod:`receiver.api.sse`)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from ..errors import NotFound
from .common import runtime
from .sse import Next, follow, sse_response
from .tasks import require_task_access

POLL_SECONDS = 1.0


def _last_event_id(raw: str | None) -> int:
    """Our ids are small sequence numbers; anything else (junk, beyond 64 bits) starts over."""
    raw = (raw or "").strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return 0
    return int(raw)


async def task_events(request: Request) -> Response:
    rt = runtime(request)
    task_id = request.path_params["task_id"]
    require_task_access(request, task_id)
    if await rt.ledger.get_task(task_id) is None:
        raise NotFound("no such task")
    after = _last_event_id(request.headers.get("last-event-id"))

    async def read() -> tuple[list[str], Next]:
        nonlocal after
        messages: list[str] = []
        for event in await rt.ledger.events(task_id, after):
            after = event.seq
            data = {"task_id": task_id, "status": event.status, "at": event.at, **event.data}
            messages.append(f"id: {event.seq}\nevent: status\ndata: {json.dumps(data)}\n\n")
            if event.status in ("archived", "failed"):
                return messages, "done"
        return messages, "wait"

    return sse_response(follow(rt, f"task:{task_id}", read, poll_seconds=POLL_SECONDS))
