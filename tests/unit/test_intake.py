"""Callback intake as a service, called directly (the HTTP tests in test_api.py go through the
app): confirm-by-read, where the callback is only a hint and the provider's API decides."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from receiver import intake
from receiver.models import Status, Task
from receiver.testing import MemoryRuntime, memory_runtime

pytestmark = pytest.mark.anyio

CLAIMED = "https://cdn.example/claimed.png"
REAL = "https://cdn.example/real.png"


@pytest.fixture
async def confirming() -> AsyncIterator[MemoryRuntime]:
    """The simulated provider with its callbacks treated as unsigned hints."""
    async with memory_runtime(providers={"simulated": {"confirm_by_read": True}}) as rt:
        yield rt


async def deliver(
    rt: MemoryRuntime, task: Task, body: bytes | dict[str, object]
) -> intake.Accepted:
    """Through the service as the hook route calls it, signed over the body sent."""
    path, headers, raw = rt.callback(task, body)

    async def read(cap: int) -> bytes:
        return raw

    return await intake.accept_callback(rt, "simulated", path.rsplit("/", 1)[1], headers, read)


def body(task: Task, status: str, url: str) -> dict[str, object]:
    return {"id": task.provider_task_id, "status": status, "images": [{"url": url}]}


async def test_the_providers_answer_is_recorded_not_the_callbacks(
    confirming: MemoryRuntime,
) -> None:
    rt = confirming
    task = await rt.submitted_task()
    rt.api.answer(task.provider_task_id or "", "succeeded", [REAL])
    accepted = await deliver(rt, task, body(task, "succeeded", CLAIMED))
    assert accepted.status == "accepted" and accepted.confirmed
    found = await rt.ledger.get_task(task.id)
    assert found is not None and found.status is Status.COMPLETED
    assert found.outcome is not None and found.outcome.images[0].url == REAL


async def test_a_callback_the_api_does_not_confirm_yet_records_nothing(
    confirming: MemoryRuntime,
) -> None:
    rt = confirming
    task = await rt.submitted_task()  # the in-memory provider says pending
    accepted = await deliver(rt, task, body(task, "succeeded", CLAIMED))
    assert accepted.status == "accepted" and not accepted.confirmed
    found = await rt.ledger.get_task(task.id)
    assert found is not None and found.status is Status.SUBMITTED
    assert found.next_poll_at == pytest.approx(rt.clock.now() + 2.0)  # read again soon
    rt.api.down = True
    assert not (await deliver(rt, task, body(task, "failed", CLAIMED))).confirmed


async def test_an_unreadable_callback_is_still_a_reason_to_read(
    confirming: MemoryRuntime,
) -> None:
    rt = confirming
    task = await rt.submitted_task()
    rt.api.answer(task.provider_task_id or "", "moderated")
    accepted = await deliver(rt, task, b"not json at all")
    assert accepted.confirmed
    found = await rt.ledger.get_task(task.id)
    assert found is not None and found.failure_reason == "moderated"
