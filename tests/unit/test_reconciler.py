"""The reconciler in one process: what no callback told us is found out by polling the
in-memory simulated provider, on the fake clock."""

from __future__ import annotations

import asyncio

import pytest

from receiver import metrics
from receiver.errors import LedgerUnavailable
from receiver.models import NewTask, Outcome, OutcomeStatus, Reason, Status, Task
from receiver.reconciler import GIVE_UP_SECONDS, Reconciler
from receiver.testing import MemoryRuntime

pytestmark = pytest.mark.anyio

URL = "https://cdn.example/r/0.png"


async def due(rt: MemoryRuntime, **fields: object) -> Task:
    """A submitted task whose first poll is due now."""
    task = await rt.submitted_task(**fields)
    return await rt.ledger.mark_submitted(
        task.id, task.provider_task_id, next_poll_at=rt.clock.now()
    )


async def get(rt: MemoryRuntime, task: Task) -> Task:
    found = await rt.ledger.get_task(task.id)
    assert found is not None
    return found


async def test_a_finished_task_found_by_polling_is_recorded_once(rt: MemoryRuntime) -> None:
    task = await due(rt)
    rt.api.answer(task.provider_task_id or "", "succeeded", [URL])
    assert await Reconciler(rt).tick() == 1
    found = await get(rt, task)
    assert found.status is Status.COMPLETED and found.next_poll_at is None
    (job,) = await rt.ledger.claim_jobs("w", 5, 60)
    assert job.deadline == pytest.approx(rt.clock.now() + 600)  # the provider's URL lifetime
    assert await Reconciler(rt).tick() == 0  # not polled again


async def test_provider_failure_found_by_polling_fails_the_task(rt: MemoryRuntime) -> None:
    task = await due(rt)
    rt.api.answer(task.provider_task_id or "", "moderated")
    await Reconciler(rt).tick()
    found = await get(rt, task)
    assert found.status is Status.FAILED and found.failure_reason == "moderated"


async def test_pending_task_is_polled_again_later_with_backoff(rt: MemoryRuntime) -> None:
    task = await due(rt)
    reconciler = Reconciler(rt)
    await reconciler.tick()
    found = await get(rt, task)
    assert found.status is Status.SUBMITTED and found.poll_attempts == 1
    assert found.next_poll_at is not None and found.next_poll_at > rt.clock.now()
    assert await reconciler.tick() == 0  # not yet due
    rt.clock.advance(found.next_poll_at - rt.clock.now())
    assert await reconciler.tick() == 1


async def test_task_pending_for_a_day_is_failed(rt: MemoryRuntime) -> None:
    task = await due(rt)
    rt.clock.advance(GIVE_UP_SECONDS + 1)
    await Reconciler(rt).tick()
    found = await get(rt, task)
    assert found.status is Status.FAILED and "24 hours" in (found.failure_message or "")


@pytest.mark.parametrize("trouble", ["down", "unreadable"])
async def test_provider_trouble_is_retried_later(rt: MemoryRuntime, trouble: str) -> None:
    task = await due(rt)
    if trouble == "down":
        rt.api.down = True
    else:
        rt.api.answers[task.provider_task_id or ""] = {"id": "x", "status": "exploded"}
    before = metrics.POLLS.labels("simulated", "error")._value.get()
    await Reconciler(rt).tick()
    found = await get(rt, task)
    assert found.status is Status.SUBMITTED and found.next_poll_at is not None
    assert found.next_poll_at > rt.clock.now()
    assert metrics.POLLS.labels("simulated", "error")._value.get() == before + 1


async def test_unknown_provider_or_no_provider_task_id_stops_polling(rt: MemoryRuntime) -> None:
    gone = await due(rt, provider="retired-provider")
    anonymous, _ = await rt.ledger.create_task(
        NewTask(provider="simulated", prompt="a heron", destination="local")
    )
    await rt.ledger.mark_submitted(anonymous.id, None, next_poll_at=rt.clock.now())
    # mark_submitted set submitted_at, so this is not an interrupted submission.
    assert await Reconciler(rt).tick() == 2
    assert (await get(rt, gone)).next_poll_at is None
    assert (await get(rt, anonymous)).next_poll_at is None
    assert rt.api.submitted == []


async def test_interrupted_submission_is_submitted_again_once(rt: MemoryRuntime) -> None:
    """The submitter died after recording the task and before the provider answered."""
    task, _ = await rt.ledger.create_task(
        NewTask(provider="simulated", prompt="a heron", destination="local")
    )
    reconciler = Reconciler(rt)
    assert await reconciler.tick() == 0  # the submitter may still be working
    rt.clock.advance(91)
    await asyncio.gather(reconciler.tick(), Reconciler(rt).tick())  # two replicas race
    assert len(rt.api.submitted) == 1
    found = await get(rt, task)
    assert found.provider_task_id == "sim-1" and found.submitted_at is not None


async def test_purges_old_delivery_ids_at_most_hourly(rt: MemoryRuntime) -> None:
    task = await rt.submitted_task()
    pending = Outcome(OutcomeStatus.PENDING)
    await rt.ledger.record_outcome(
        task.id, pending, provider="simulated", delivery_key="d1", deadline=None
    )
    reconciler = Reconciler(rt)
    retention = rt.settings.worker.delivery_retention_days * 86400
    rt.clock.advance(retention + 10)
    await reconciler.tick()
    again = await rt.ledger.record_outcome(
        task.id, pending, provider="simulated", delivery_key="d1", deadline=None
    )
    assert not again.duplicate  # forgotten after the retention
    await reconciler.tick()  # within the hour: no purge, so d1 stays remembered
    third = await rt.ledger.record_outcome(
        task.id, pending, provider="simulated", delivery_key="d1", deadline=None
    )
    assert third.duplicate


async def test_retention_deletes_old_finished_jobs_and_events_keeping_tasks(
    rt: MemoryRuntime,
) -> None:
    task = await rt.submitted_task()
    await rt.ledger.fail_task(task.id, Reason.PROVIDER_ERROR, "boom")
    conf = rt.settings.worker
    reconciler = Reconciler(rt)
    rt.clock.advance(conf.event_retention_days * 86400 - 60)
    await reconciler.tick()  # not old enough yet
    assert await rt.ledger.events(task.id) != []
    rt.clock.advance(3600 + 120)  # an hour on (purges are hourly), and past the retention
    await reconciler.tick()
    assert await rt.ledger.events(task.id) == []
    assert (await get(rt, task)).status is Status.FAILED


async def test_run_survives_errors_and_stops(rt: MemoryRuntime) -> None:
    reconciler = Reconciler(rt)
    calls: list[str] = []

    async def tick() -> int:
        calls.append("tick")
        if len(calls) == 1:
            raise LedgerUnavailable("down")
        if len(calls) == 2:
            raise RuntimeError("bug")
        reconciler.stop()
        return 0

    reconciler.tick = tick  # type: ignore[method-assign]
    rt.settings.worker.reconcile_interval = 0.001
    await asyncio.wait_for(reconciler.run(), 5)
    assert calls == ["tick", "tick", "tick"]
