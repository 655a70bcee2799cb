"""The one server-sent event loop (receiver.api.sse.follow), driven by the ledger's wake-ups
on the in-memory runtime: nothing here waits for a timer."""

from __future__ import annotations

import asyncio

import pytest

from receiver.api.sse import KEEPALIVE_SECONDS, Next, follow
from receiver.testing import MemoryRuntime

pytestmark = pytest.mark.anyio


async def test_reads_again_at_once_when_more_is_pending(rt: MemoryRuntime) -> None:
    steps: list[tuple[list[str], Next]] = [(["a\n\n"], "again"), (["b\n\n"], "done")]

    async def read() -> tuple[list[str], Next]:
        return steps.pop(0)

    out = [m async for m in follow(rt, "c", read, poll_seconds=3600)]
    assert out == ["retry: 2000\n\n", "a\n\n", "b\n\n"]
    assert "c" not in rt.changes._events  # unsubscribed


async def test_a_quiet_stream_sends_a_keep_alive_and_wakes_on_its_channel(
    rt: MemoryRuntime,
) -> None:
    reads = 0

    async def read() -> tuple[list[str], Next]:
        nonlocal reads
        reads += 1
        return ([], "wait") if reads == 1 else (["x\n\n"], "done")

    stream = follow(rt, "c", read, poll_seconds=KEEPALIVE_SECONDS)
    assert await anext(stream) == "retry: 2000\n\n"
    waiting = asyncio.ensure_future(anext(stream))
    while "c" not in rt.changes._events or reads < 1:
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    rt.changes.notify("c")  # a change: the loop wakes long before its poll interval
    assert await asyncio.wait_for(waiting, 5) == ": keep-alive\n\n"
    assert [m async for m in stream] == ["x\n\n"]
