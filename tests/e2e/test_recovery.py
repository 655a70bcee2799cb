"""A submitter that dies between recording a task and hearing back from the provider: the
reconciler of any replica submits the task again once the submission lease runs out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from receiver.ledger import open_ledger
from receiver.models import NewTask
from tests.e2e.conftest import Stack
from tests.helpers import wait_tasks


def test_interrupted_submission_is_submitted_again(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(worker={"reconcile_interval": 0.2})

    async def orphan() -> str:
        # What a crashed replica leaves behind: the task committed, nothing sent.
        ledger = open_ledger(stack.settings.ledger_url)
        await ledger.open()
        try:
            task, _ = await ledger.create_task(
                NewTask(provider="simulated", prompt="orphan", destination="local")
            )
            assert await ledger.tasks_to_poll(10) == []  # not before the lease runs out
            await ledger.schedule_poll(task.id, 0.0)  # the lease has run out
            return task.id
        finally:
            await ledger.close()

    task_id = asyncio.run(orphan())
    [task] = wait_tasks(stack.base, [task_id], timeout=30)
    assert task["status"] == "archived", task
    assert task["provider_task_id"] and len(task["objects"]) == 1
    assert len(stack.sim_state()["tasks"]) == 1  # submitted exactly once
