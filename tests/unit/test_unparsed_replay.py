"""An answer no image could be read from is kept, and ``receiver replay`` reads it again.

EigenAI documents no JSON answer; an answer in a shape this version cannot read fails the task
with ``unparsed_response`` and keeps the bytes in the ledger. After an upgrade that knows the
shape, replay parses the kept answer (no new request, nothing paid twice) and archives."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from receiver.app import create_app
from receiver.models import NewTask, Outcome, OutcomeStatus, Status
from receiver.testing import API_KEY, MemoryRuntime, png

pytestmark = pytest.mark.anyio

AUTH = {"authorization": f"Bearer {API_KEY}"}


async def _failed_unparsed(rt: MemoryRuntime, raw: bytes) -> str:
    task, _ = await rt.ledger.create_task(
        NewTask(provider="eigenai", prompt="a fox", destination="local", model="flux-1-dev")
    )
    await rt.ledger.mark_submitted(task.id, None, next_poll_at=None)
    result = await rt.ledger.record_outcome(
        task.id,
        Outcome(
            OutcomeStatus.UNPARSED,
            error_message="no image found",
            raw=raw,
            raw_content_type="application/json",
        ),
        provider="eigenai",
        delivery_key=f"sync:{task.id}",
        deadline=None,
    )
    assert result.task is not None and result.task.failure_reason == "unparsed_response"
    return task.id


async def test_replay_parses_the_kept_answer_again(rt: MemoryRuntime) -> None:
    image = png("kept")
    # Imagine an older version that did not look inside "artifacts": now it is found.
    raw = json.dumps(
        {"artifacts": [{"b64": "data:image/png;base64," + base64.b64encode(image).decode()}]}
    ).encode()
    task_id = await _failed_unparsed(rt, raw)
    app = create_app(rt.settings, runtime=rt, background=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=rt.settings.public_url
    ) as api:
        response = await api.post(f"/v1/tasks/{task_id}/replay", headers=AUTH)
    assert response.status_code == 202, response.text
    task = await rt.ledger.get_task(task_id)
    assert task is not None and task.status is Status.COMPLETED
    assert await rt.ledger.inline_image(task_id, 0) == image
    assert await rt.ledger.raw_response(task_id) == (raw, "application/json")


async def test_replay_of_a_still_unreadable_answer_is_refused(rt: MemoryRuntime) -> None:
    task_id = await _failed_unparsed(rt, b'{"result": {"artifact": "a1"}}')
    app = create_app(rt.settings, runtime=rt, background=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=rt.settings.public_url
    ) as api:
        response = await api.post(f"/v1/tasks/{task_id}/replay", headers=AUTH)
    assert response.status_code == 409
    assert "unparsed" in response.json()["error"]["message"]
    task = await rt.ledger.get_task(task_id)
    assert task is not None and task.status is Status.FAILED
