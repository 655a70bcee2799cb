"""Issue 12, finding 10: a store outage is visible. The task shows its last error and next
attempt, /readyz says degraded (still 200), retries log at warning after the first, and the
oldest-job metric grows while the job waits in backoff. In one process on the fake clock."""

from __future__ import annotations

import logging

import httpx
import pytest

from receiver import metrics
from receiver.app import create_app
from receiver.errors import StoreError
from receiver.health import DEGRADED_AFTER_SECONDS
from receiver.reconciler import Reconciler
from receiver.testing import API_KEY, MemoryRuntime
from receiver.worker import Worker

pytestmark = pytest.mark.anyio

URL = "https://cdn.example/results/a.png"
AUTH = {"authorization": f"Bearer {API_KEY}"}


async def test_finding10_a_store_outage_is_visible_everywhere(
    rt: MemoryRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    task = await rt.completed_task([rt.origin.serve_image(URL)])
    rt.store.fail_next(StoreError("store answered 503 SlowDown"), times=10)
    app = create_app(rt.settings, runtime=rt, background=False)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    worker = Worker(rt)
    with caplog.at_level(logging.INFO, logger="receiver.worker"):
        for _ in range(2):
            (job,) = await rt.ledger.claim_jobs(rt.owner, 1, 60)
            await worker.process(job)
            rt.clock.advance(rt.settings.worker.retry_max_seconds + 1)
    retries = [r for r in caplog.records if r.getMessage().startswith("retrying")]
    assert [r.levelno for r in retries] == [logging.INFO, logging.WARNING]

    shown = (await client.get(f"/v1/tasks/{task.id}", headers=AUTH)).json()
    assert shown["status"] == "completed"
    assert shown["retry"]["attempts"] == 2
    assert "SlowDown" in shown["retry"]["last_error"]
    assert shown["retry"]["next_attempt_at"] is not None

    await Reconciler(rt).tick()
    age = metrics.OLDEST_UNFINISHED_JOB.labels("simulated")._value.get()  # type: ignore[attr-defined]
    assert age >= rt.settings.worker.retry_max_seconds  # counted from queueing, backoff included

    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    rt.clock.advance(DEGRADED_AFTER_SECONDS)
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert "destination local" in ready.json()["reasons"][0]
    assert "SlowDown" in ready.json()["reasons"][0]
    await client.aclose()


def test_finding10_status_and_wait_print_the_retry() -> None:
    from receiver.cli import _retry_line

    line = _retry_line({"retry": {"attempts": 3, "last_error": "store down", "next_attempt_at": 0}})
    assert line == "retrying (attempt 3): store down"
    assert _retry_line({"retry": None}) is None
