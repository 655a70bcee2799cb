"""The notifier in one process: signed pushes to the application's inbox (an httpx
MockTransport), checked with the Standard Webhooks reference library; retries and giving up on
the fake clock."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from standardwebhooks import Webhook

from receiver.models import Notification, StoredObject, Task
from receiver.notify import Notifier
from receiver.testing import NOTIFY_SECRET, MemoryRuntime, memory_runtime

pytestmark = pytest.mark.anyio


async def archived(rt: MemoryRuntime) -> Task:
    task = await rt.completed_task(["https://cdn.example/0.png"])
    (job,) = await rt.ledger.claim_jobs("w", 1, 60)
    key = f"2026/01/01/{task.id}/0.png"
    await rt.store.put(key, b"\x89PNG", size=4, content_type="image/png")
    obj = StoredObject(
        index=0,
        uri=rt.store.uri(key),
        sidecar_uri=rt.store.uri(key + ".json"),
        key=key,
        sha256="ab" * 32,
        bytes=4,
        content_type="image/png",
        sidecar={"schema": "receiver.sidecar/1"},
    )
    done = await rt.ledger.finish_job(job.id, "w", [obj])
    assert done is not None
    return done


async def claim_one(rt: MemoryRuntime) -> Notification:
    (note,) = await rt.ledger.claim_notifications(rt.owner, 5, 60)
    return note


async def test_archived_task_is_pushed_signed_with_its_objects(rt: MemoryRuntime) -> None:
    task = await archived(rt)
    notifier = Notifier(rt)
    assert await notifier.send(await claim_one(rt))
    (request,) = rt.inbox.received
    # Sent to the address the guard checked, naming the host (as the fetcher does).
    assert request.headers["host"] == "app.example" and request.url.path == "/hooks/receiver"
    assert request.extensions.get("sni_hostname") == "app.example"
    payload = Webhook(NOTIFY_SECRET).verify(request.content, dict(request.headers))
    assert payload["type"] == "task.archived" and payload["id"] == request.headers["webhook-id"]
    assert payload["data"]["id"] == task.id and payload["data"]["status"] == "archived"
    (obj,) = payload["data"]["objects"]
    assert obj["presigned_url"].startswith("https://memory.invalid/local/")
    assert obj["sidecar"] == {"schema": "receiver.sidecar/1"}
    assert await rt.ledger.claim_notifications(rt.owner, 5, 60) == []  # delivered: done
    await notifier.http.aclose()


async def test_refused_push_is_retried_with_the_same_id_then_given_up(rt: MemoryRuntime) -> None:
    rt.inbox.status = [500]
    await archived(rt)
    notifier = Notifier(rt)
    first = await claim_one(rt)
    assert not await notifier.send(first)
    rt.clock.advance(rt.settings.notify.retry_max_seconds)
    second = await claim_one(rt)
    assert second.id == first.id and second.attempts == 2
    assert not await notifier.send(second)
    ids = {r.headers["webhook-id"] for r in rt.inbox.received}
    assert ids == {first.id}  # the application can de-duplicate on it
    rt.clock.advance(rt.settings.notify.retry_hours * 3600)
    assert not await notifier.send(await claim_one(rt))
    rt.clock.advance(rt.settings.notify.retry_hours * 3600)
    assert await rt.ledger.claim_notifications(rt.owner, 5, 60) == []  # dead
    await notifier.http.aclose()


async def test_unreachable_application_is_retried(rt: MemoryRuntime) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    await archived(rt)
    notifier = Notifier(rt, transport=httpx.MockTransport(refuse))
    assert not await notifier.send(await claim_one(rt))
    rt.clock.advance(rt.settings.notify.retry_max_seconds)
    assert (await claim_one(rt)).attempts == 2
    await notifier.http.aclose()


async def test_without_a_secret_nothing_unsigned_is_sent() -> None:
    async with memory_runtime(notify={"secret": None}) as rt:
        await archived(rt)
        notifier = Notifier(rt)
        assert not await notifier.send(await claim_one(rt))
        assert rt.inbox.received == []
        await notifier.http.aclose()


async def test_notification_for_a_vanished_task_is_dropped(rt: MemoryRuntime) -> None:
    await archived(rt)
    note = await claim_one(rt)
    ghost = Notification(note.id, "tsk_gone", note.event, note.url, 1, note.created_at, rt.owner)
    notifier = Notifier(rt)
    assert not await notifier.send(ghost)
    rt.clock.advance(rt.settings.notify.retry_max_seconds * 10)
    assert await rt.ledger.claim_notifications(rt.owner, 5, 60) == []
    await notifier.http.aclose()


async def test_run_sends_when_the_ledger_announces_and_stops(rt: MemoryRuntime) -> None:
    rt.settings.worker.poll_interval = 3600  # only the ledger's wake-up can make it send
    notifier = Notifier(rt)
    loop = asyncio.create_task(notifier.run())
    await asyncio.sleep(0)
    await archived(rt)
    for _ in range(400):
        if rt.inbox.received:
            break
        await asyncio.sleep(0.005)
    assert len(rt.inbox.received) == 1
    notifier.stop()
    await asyncio.wait_for(loop, 5)
    assert notifier.http.is_closed


async def test_stop_while_claiming_ends_the_loop_without_waiting_for_the_next_poll(
    rt: MemoryRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() sets the wake-up event; the loop clearing it after its claim must still stop
    (it used to wait out a whole poll interval, which delayed every shutdown)."""
    rt.settings.worker.poll_interval = 3600  # a missed stop would wait an hour
    notifier = Notifier(rt)
    claim = rt.ledger.claim_notifications

    async def claim_then_stop(*args: object, **kwargs: object) -> list[Notification]:
        notifier.stop()  # lands while the loop is between its check and its wait
        return await claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rt.ledger, "claim_notifications", claim_then_stop)
    await asyncio.wait_for(notifier.run(), 5)
    assert notifier.http.is_closed
