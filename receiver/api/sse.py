"""Server-sent event streams woken by the ledger's change announcements.

One loop serves the task event stream of the API and the console's live pages: it reads what
is new whenever the ledger announces a change on the stream's channel (LISTEN/NOTIFY carries
other replicas' changes), and, as a safety net, every ``poll_seconds``; after a quiet spell it
sends a keep-alive comment so proxies keep the connection open.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

from starlette.responses import StreamingResponse

from ..runtime import Runtime

KEEPALIVE_SECONDS = 15.0
# What to do after sending a read's messages: wait for a change, read again at once (more is
# pending), or end the stream.
Next = Literal["wait", "again", "done"]
Reader = Callable[[], Awaitable[tuple[list[str], Next]]]


async def follow(
    rt: Runtime,
    channel: str,
    read: Reader,
    *,
    poll_seconds: float,
    max_seconds: float | None = None,
) -> AsyncIterator[str]:
    """SSE text: a ``retry`` hint, then the messages each ``read()`` returns, until it says
    ``done`` or ``max_seconds`` pass (an EventSource then reconnects by itself)."""
    wake = rt.changes.subscribe(channel)
    try:
        yield "retry: 2000\n\n"
        ends = None if max_seconds is None else time.monotonic() + max_seconds
        idle = 0.0
        while ends is None or time.monotonic() < ends:
            wake.clear()  # before reading, so a change during the read is not missed
            messages, then = await read()
            for message in messages:
                yield message
            if messages:
                idle = 0.0
            if then == "done":
                return
            if then == "again":
                continue
            if rt.stopping.is_set():
                return  # shutting down: end now; the client reconnects to another replica
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(wake.wait(), rt.stopping.wait()), poll_seconds)
            if rt.stopping.is_set():
                return
            idle += poll_seconds
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                yield ": keep-alive\n\n"
    finally:
        rt.changes.unsubscribe(channel, wake)


def sse_response(stream: AsyncIterator[str], cache_control: str = "no-cache") -> StreamingResponse:
    """A streamed ``text/event-stream`` answer that nginx passes on unbuffered."""
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"cache-control": cache_control, "x-accel-buffering": "no"},
    )


async def _first(*waits: Awaitable[object]) -> None:
    """Return when the first of ``waits`` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
