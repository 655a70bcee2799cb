"""The archive worker in one process: every branch of ``Worker.process`` and the loop around
it, on receiver.testing's in-memory runtime (no server, no real sleep)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime

import httpx
import pytest

from receiver import sidecar
from receiver.errors import LedgerUnavailable, StoreError
from receiver.models import Job, Outcome, OutcomeStatus, ResultImage, Status, Task
from receiver.testing import MemoryRuntime, png
from receiver.worker import Worker

pytestmark = pytest.mark.anyio

URL = "https://cdn.example/results/a.png?sig=secret"


async def claim(rt: MemoryRuntime, owner: str | None = None) -> Job:
    (job,) = await rt.ledger.claim_jobs(owner or rt.owner, 1, rt.settings.worker.lease_seconds)
    return job


async def status(rt: MemoryRuntime, task: Task) -> Task:
    found = await rt.ledger.get_task(task.id)
    assert found is not None
    return found


async def test_process_archives_image_then_sidecar_and_enqueues_the_notification(
    rt: MemoryRuntime,
) -> None:
    body = png("worker", 5, 4)
    task = await rt.completed_task([rt.origin.serve_image(URL, body)])
    rt.clock.advance(120)  # archive time comes from the runtime's clock
    await Worker(rt).process(await claim(rt))

    done = await status(rt, task)
    assert done.status is Status.ARCHIVED and len(done.objects) == 1
    obj = done.objects[0]
    assert rt.store.objects[obj.key] == body
    assert obj.sha256 == hashlib.sha256(body).hexdigest() and (obj.width, obj.height) == (5, 4)
    side = json.loads(rt.store.objects[sidecar.sidecar_key(obj.key)])
    assert side["sha256"] == obj.sha256 and side["task_id"] == task.id
    assert side["source_url"] == "https://cdn.example/results/a.png"  # query never stored
    archived_at = datetime.fromisoformat(side["archived_at"].replace("Z", "+00:00"))
    assert archived_at.timestamp() == pytest.approx(rt.clock.now(), abs=0.01)
    # The fetcher connected to the checked address, naming the host in Host.
    (request,) = rt.origin.requests
    assert request.url.host == "93.184.216.34" and request.headers["host"] == "cdn.example"
    (note,) = await rt.ledger.claim_notifications("n", 5, 60)
    assert note.event == "task.archived"


async def test_a_second_attempt_keeps_what_the_first_stored(rt: MemoryRuntime) -> None:
    """Create-only writes: a crashed attempt left the image and its sidecar; the retry adopts
    both instead of failing or replacing them."""
    task = await rt.completed_task([rt.origin.serve_image(URL)])
    first = await Worker(rt).archive(task, task.outcome)  # type: ignore[arg-type]
    stored = dict(rt.store.objects)
    await Worker(rt).process(await claim(rt))
    done = await status(rt, task)
    assert done.status is Status.ARCHIVED
    assert [o.uri for o in done.objects] == [o.uri for o in first]
    assert rt.store.objects == stored


async def test_inline_results_are_archived_from_the_ledger(rt: MemoryRuntime) -> None:
    task = await rt.submitted_task()
    body = png("inline")
    outcome = Outcome(OutcomeStatus.SUCCEEDED, images=(ResultImage(inline=body),))
    await rt.ledger.record_outcome(
        task.id, outcome, provider="simulated", delivery_key="sync", deadline=None
    )
    await Worker(rt).process(await claim(rt))
    done = await status(rt, task)
    assert done.status is Status.ARCHIVED
    assert rt.store.objects[done.objects[0].key] == body
    assert rt.origin.requests == []


async def test_expired_url_is_refreshed_by_polling_the_provider(rt: MemoryRuntime) -> None:
    task = await rt.completed_task([rt.origin.expire(URL)])
    fresh = rt.origin.serve_image("https://cdn.example/results/fresh.png", png("fresh"))
    rt.api.answer(task.provider_task_id or "", "succeeded", [fresh])
    await Worker(rt).process(await claim(rt))
    done = await status(rt, task)
    assert done.status is Status.ARCHIVED
    assert rt.store.objects[done.objects[0].key] == png("fresh")


@pytest.mark.parametrize("answer", ["pending", "down", "no_images"])
async def test_expired_url_that_cannot_be_refreshed_fails_the_task_expired(
    rt: MemoryRuntime, answer: str
) -> None:
    task = await rt.completed_task([rt.origin.expire(URL)])
    pid = task.provider_task_id or ""
    if answer == "down":
        rt.api.down = True
    elif answer == "no_images":
        rt.api.answer(pid, "succeeded", [])
    else:
        rt.api.answer(pid, "pending")
    await Worker(rt).process(await claim(rt))
    done = await status(rt, task)
    assert done.status is Status.FAILED and done.failure_reason == "expired"


async def test_refreshed_url_that_expires_too_fails_without_asking_again(
    rt: MemoryRuntime,
) -> None:
    task = await rt.completed_task([rt.origin.expire(URL)])
    again = rt.origin.expire("https://cdn.example/results/again.png")
    rt.api.answer(task.provider_task_id or "", "succeeded", [again])
    await Worker(rt).process(await claim(rt))
    assert (await status(rt, task)).failure_reason == "expired"
    polls = [r for r in rt.origin.requests if r.headers["host"] == "cdn.example"]
    assert len(polls) == 2  # the first URL, the refreshed one; no third round


async def test_task_without_a_provider_task_id_is_not_refreshed(rt: MemoryRuntime) -> None:
    task = await rt.completed_task([rt.origin.expire(URL)])
    await rt.ledger.mark_submitted(task.id, None, next_poll_at=None)
    await Worker(rt).process(await claim(rt))
    assert (await status(rt, task)).failure_reason == "expired"
    assert rt.api.submitted == []


async def test_url_resolving_to_a_private_address_is_refused_at_once(rt: MemoryRuntime) -> None:
    rt.resolver.table["internal.example"] = ["10.0.0.8"]
    task = await rt.completed_task([rt.origin.serve_image("https://internal.example/a.png")])
    await Worker(rt).process(await claim(rt))
    done = await status(rt, task)
    assert done.status is Status.FAILED and done.failure_reason == "fetch_failed"
    assert "not public" in (done.failure_message or "")
    assert rt.origin.requests == []


async def test_transient_download_error_is_retried_then_archived(rt: MemoryRuntime) -> None:
    task = await rt.completed_task([rt.origin.serve_image(URL, fail_first=1)])
    worker = Worker(rt)
    job = await claim(rt)
    await worker.process(job)
    assert (await status(rt, task)).status is Status.COMPLETED
    assert await rt.ledger.claim_jobs(rt.owner, 1, 60) == []  # not due yet: backing off
    rt.clock.advance(rt.settings.worker.retry_base_seconds)
    again = await claim(rt)
    assert again.id == job.id and again.attempts == 2
    await worker.process(again)
    assert (await status(rt, task)).status is Status.ARCHIVED


async def test_transient_errors_fail_the_task_after_max_attempts(rt: MemoryRuntime) -> None:
    rt.settings.worker.max_attempts = 3
    task = await rt.completed_task([rt.origin.serve_image(URL, fail_first=99)])
    worker = Worker(rt)
    for _ in range(3):
        await worker.process(await claim(rt))
        rt.clock.advance(rt.settings.worker.retry_max_seconds)
    done = await status(rt, task)
    assert done.status is Status.FAILED and done.failure_reason == "fetch_failed"
    assert "after 3 attempts" in (done.failure_message or "")


async def test_transient_error_past_the_url_deadline_fails_the_task_expired(
    rt: MemoryRuntime,
) -> None:
    task = await rt.completed_task([rt.origin.serve_image(URL, fail_first=99)])
    job = await claim(rt)
    assert job.deadline is not None
    rt.clock.advance(job.deadline - rt.clock.now() - 0.01)  # no time left for a retry
    await Worker(rt).process(job)
    done = await status(rt, task)
    assert done.status is Status.FAILED and done.failure_reason == "expired"
    assert "deadline reached" in (done.failure_message or "")


async def test_store_errors_retry_when_transient_and_fail_when_permanent(
    rt: MemoryRuntime,
) -> None:
    task = await rt.completed_task([rt.origin.serve_image(URL)])
    worker = Worker(rt)
    rt.store.fail_next(StoreError("503 Slow Down"))
    await worker.process(await claim(rt))
    assert (await status(rt, task)).status is Status.COMPLETED
    rt.clock.advance(rt.settings.worker.retry_max_seconds)
    rt.store.fail_next(StoreError("AccessDenied", permanent=True))
    await worker.process(await claim(rt))
    done = await status(rt, task)
    assert done.status is Status.FAILED and done.failure_reason == "store_failed"


async def test_store_error_at_the_deadline_keeps_its_reason(rt: MemoryRuntime) -> None:
    task = await rt.completed_task([rt.origin.serve_image(URL)])
    job = await claim(rt)
    rt.clock.advance(job.deadline - rt.clock.now() - 0.01)  # type: ignore[operator]
    rt.store.fail_next(StoreError("503 Slow Down"))
    await Worker(rt).process(job)
    assert (await status(rt, task)).failure_reason == "store_failed"


async def test_lease_lost_to_another_worker_changes_nothing(rt: MemoryRuntime) -> None:
    task = await rt.completed_task([rt.origin.serve_image(URL)])
    mine = await claim(rt)
    rt.clock.advance(rt.settings.worker.lease_seconds + 1)  # we stalled past the lease
    theirs = await claim(rt, owner="other-replica")
    assert theirs.id == mine.id
    await Worker(rt).process(mine)
    assert (await status(rt, task)).status is Status.COMPLETED  # the other owner finishes it
    assert not await rt.ledger.extend_lease(mine.id, rt.owner, 60)
    assert await rt.ledger.finish_job(theirs.id, "other-replica", []) is not None


async def test_job_whose_task_is_gone_is_ended_not_retried(rt: MemoryRuntime) -> None:
    await rt.completed_task([URL])
    job = await claim(rt)
    orphan = Job(job.id, "tsk_missing", job.attempts, None, rt.owner, job.lease_expires_at)
    await Worker(rt).process(orphan)
    rt.clock.advance(rt.settings.worker.lease_seconds + 1)
    assert await rt.ledger.claim_jobs(rt.owner, 1, 60) == []  # dead, never claimed again
    assert rt.origin.requests == []


async def test_run_claims_processes_and_gives_back_on_stop(rt: MemoryRuntime) -> None:
    """The loop: a job enqueued while it waits is claimed at once (the ledger's wake-up),
    and stopping gives back what it has not finished."""
    rt.settings.worker.poll_interval = 3600  # only a wake-up can make it claim in time
    worker = Worker(rt)
    loop = asyncio.create_task(worker.run())
    await asyncio.sleep(0)
    task = await rt.completed_task([rt.origin.serve_image(URL)])
    for _ in range(200):
        if (await status(rt, task)).status is Status.ARCHIVED:
            break
        await asyncio.sleep(0.005)
    assert (await status(rt, task)).status is Status.ARCHIVED

    hang = asyncio.Event()

    async def never(task: Task, outcome: Outcome) -> list[object]:
        await hang.wait()
        return []

    worker.archive = never  # type: ignore[assignment,method-assign]
    stuck = await rt.completed_task([URL])
    for _ in range(200):
        if worker.inflight:
            break
        await asyncio.sleep(0.005)
    assert worker.inflight
    rt.settings.worker.shutdown_grace_seconds = 0
    worker.stop()
    await asyncio.wait_for(loop, 5)
    assert (await status(rt, stuck)).status is Status.COMPLETED
    again = await claim(rt)  # given back, due now, not waiting for the lease
    assert again.task_id == stuck.id and again.attempts == 1


async def test_a_crashing_job_is_retried_and_the_loop_survives(rt: MemoryRuntime) -> None:
    worker = Worker(rt)

    async def boom(job: Job) -> None:
        raise RuntimeError("bug")

    worker.process = boom  # type: ignore[method-assign]
    task = await rt.completed_task([URL])
    job = await claim(rt)
    await worker._guarded(job)
    assert (await status(rt, task)).status is Status.COMPLETED
    assert worker.inflight == {}
    rt.clock.advance(10)
    assert (await claim(rt)).attempts == 2  # given back with a delay, attempt counted


async def test_ledger_outage_during_a_job_leaves_it_to_the_lease(rt: MemoryRuntime) -> None:
    worker = Worker(rt)

    async def down(job: Job) -> None:
        raise LedgerUnavailable("gone")

    worker.process = down  # type: ignore[method-assign]
    await rt.completed_task([URL])
    job = await claim(rt)
    await worker._guarded(job)
    assert await rt.ledger.claim_jobs(rt.owner, 1, 60) == []  # still leased
    rt.clock.advance(rt.settings.worker.lease_seconds + 1)
    assert (await claim(rt)).id == job.id


async def test_heartbeat_extends_the_lease_on_the_clock(rt: MemoryRuntime) -> None:
    await rt.completed_task([URL])
    job = await claim(rt)
    beat = asyncio.create_task(Worker(rt)._heartbeat(job))
    lease = rt.settings.worker.lease_seconds
    for _ in range(5):  # well past the first lease, in heartbeat steps
        await rt.clock.until_sleeping()
        rt.clock.advance(lease / 3)
    await rt.clock.until_sleeping()  # the last extension has committed
    beat.cancel()
    assert await rt.ledger.claim_jobs("other", 1, 60) == []  # still ours
    rt.clock.advance(lease + 1)
    assert len(await rt.ledger.claim_jobs("other", 1, 60)) == 1


async def test_origin_refuses_what_is_not_an_image(rt: MemoryRuntime) -> None:
    rt.origin.route(URL, lambda _: httpx.Response(200, content=b"<html>" * 10))
    task = await rt.completed_task([URL])
    await Worker(rt).process(await claim(rt))
    assert (await status(rt, task)).failure_reason == "fetch_failed"


async def test_a_task_with_many_images_archives_each_in_its_place(rt: MemoryRuntime) -> None:
    """Images of one task go several at a time; objects still come back in result order."""
    bodies = [png(f"many {i}", 3 + i, 2) for i in range(9)]
    urls = [
        rt.origin.serve_image(f"https://cdn.example/results/{i}.png", body)
        for i, body in enumerate(bodies)
    ]
    task = await rt.completed_task(urls)
    await Worker(rt).process(await claim(rt))
    done = await status(rt, task)
    assert done.status is Status.ARCHIVED
    assert [o.index for o in done.objects] == list(range(9))
    for obj, body in zip(done.objects, bodies, strict=True):
        assert rt.store.objects[obj.key] == body and obj.width == 3 + obj.index
        assert sidecar.sidecar_key(obj.key) in rt.store.objects


async def test_one_expired_image_of_many_fails_the_task_expired(rt: MemoryRuntime) -> None:
    urls = [rt.origin.serve_image(f"https://cdn.example/results/{i}.png") for i in range(6)]
    rt.origin.expire(urls[4])
    task = await rt.completed_task(urls)
    await Worker(rt).process(await claim(rt))
    done = await status(rt, task)
    assert done.status is Status.FAILED and done.failure_reason == "expired"
