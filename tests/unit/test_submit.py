"""Creating and submitting a task in one process: callback settings for callback providers,
the first poll for poll-only ones, the result kept from a synchronous answer, and a refused
submission failing the task. Other providers' answers come from their fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from receiver.errors import ValidationFailed
from receiver.models import Status
from receiver.submit import TaskRequest, callback_url, create_and_submit
from receiver.testing import MemoryRuntime

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def fixture(provider: str, name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((FIXTURES / provider / name).read_text())
    data.pop("_source", None)
    return data


async def test_callback_provider_gets_our_url_and_a_per_task_secret(rt: MemoryRuntime) -> None:
    task, created = await create_and_submit(
        rt, TaskRequest(provider="simulated", prompt="a kite", params={"seed": 3})
    )
    assert created and task.status is Status.SUBMITTED and task.provider_task_id == "sim-1"
    (sent,) = rt.api.submitted
    assert sent["webhook_url"] == callback_url(rt, task.id, "simulated")
    assert sent["seed"] == 3 and sent["model"] == "sim-flux-1"
    assert task.next_poll_at == pytest.approx(rt.clock.now() + 60)  # the callback grace


async def test_configured_callback_grace_wins(rt: MemoryRuntime) -> None:
    rt.settings.providers["simulated"] = type(rt.settings.provider("simulated"))(
        callback_grace_seconds=5
    )
    task, _ = await create_and_submit(rt, TaskRequest(provider="simulated", prompt="a kite"))
    assert task.next_poll_at == pytest.approx(rt.clock.now() + 5)


async def test_poll_only_provider_is_polled_from_submission(rt: MemoryRuntime) -> None:
    seen: list[httpx.Request] = []

    def apimart(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=fixture("apimart", "submit_answer.json"))

    rt.api.others["api.apimart.ai"] = apimart
    task, _ = await create_and_submit(rt, TaskRequest(provider="apimart", prompt="a kite"))
    assert task.provider_task_id == "task_01KFG5BBFNK1YQDTJDZY0P0QT2"
    assert task.next_poll_at == pytest.approx(rt.clock.now() + 2.0)
    assert "callback" not in seen[0].content.decode().lower()  # APIMart is never called back


async def test_synchronous_answer_is_recorded_and_queued_for_archiving(rt: MemoryRuntime) -> None:
    rt.api.others["app.eigenai.com"] = lambda _: httpx.Response(
        200, json=fixture("eigenai", "response_json_url.json")
    )
    task, _ = await create_and_submit(
        rt, TaskRequest(provider="eigenai", model="flux-1-kontext", prompt="a kite")
    )
    assert task.status is Status.COMPLETED and task.next_poll_at is None
    (job,) = await rt.ledger.claim_jobs("w", 1, 60)
    assert job.task_id == task.id and job.deadline is not None


async def test_refused_submission_fails_the_task_with_the_providers_message(
    rt: MemoryRuntime,
) -> None:
    rt.api.down = True
    task, created = await create_and_submit(rt, TaskRequest(provider="simulated", prompt="x"))
    assert created and task.status is Status.FAILED
    assert task.failure_reason == "provider_error" and "503" in (task.failure_message or "")


async def test_nothing_is_recorded_when_validation_fails(rt: MemoryRuntime) -> None:
    with pytest.raises(ValidationFailed) as info:
        await create_and_submit(rt, TaskRequest(provider="simulated", prompt="x", params={"n": 1}))
    assert info.value.field == "params.n"
    tasks, _ = await rt.ledger.list_tasks()
    assert tasks == [] and rt.api.submitted == []
