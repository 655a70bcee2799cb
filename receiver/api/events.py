"""``GET /v1/tasks/{id}/events``: every status change as a server-sent event, until the end.

Woken by the process's change channel (fed by LISTEN/NOTIFY on PostgreSQL) and, as a
safety net, by a short poll, so a change made by another replica is never missed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import NotFound
from .common import runtime
from .tasks import require_task_access

POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0


async def task_events(request: Request) -> Response:
    rt = runtime(request)
    task_id = request.path_params["task_id"]
    require_task_access(request, task_id)
    if await rt.ledger.get_task(task_id) is None:
        raise NotFound("no such task")
    try:
        after = int(request.headers.get("last-event-id") or 0)
    except ValueError:
        after = 0

    async def stream() -> AsyncIterator[str]:
        nonlocal after
        channel = f"task:{task_id}"
        wake = rt.changes.subscribe(channel)
        idle = 0.0
        try:
            yield "retry: 2000\n\n"
            while True:
                wake.clear()
                for event in await rt.ledger.events(task_id, after):
                    after = event.seq
                    data = {
                        "task_id": task_id,
                        "status": event.status,
                        "at": event.at,
                        **event.data,
                    }
                    yield f"id: {event.seq}\nevent: status\ndata: {json.dumps(data)}\n\n"
                    idle = 0.0
                    if event.status in ("archived", "failed"):
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL_SECONDS)
                idle += POLL_SECONDS
                if idle >= KEEPALIVE_SECONDS:
                    idle = 0.0
                    yield ": keep-alive\n\n"
        finally:
            rt.changes.unsubscribe(channel, wake)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
