"""Must show: bulk replay of 500 failed tasks from the console archives all 500 exactly once.

The simulator refuses each task's first download; with one attempt allowed, all 500 fail
with fetch_failed. The console's own form (session, CSRF, confirmation count) replays them;
then every task has one archived event and one image, the origin served each image exactly
twice (the refusal and the archive), and sending the form again changes nothing."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from ..console_kit import console_stack, sign_in

pytestmark = pytest.mark.anyio
COUNT = 500


async def test_bulk_replay_of_500_failed_tasks_archives_each_once(tmp_path: Path) -> None:
    async with (
        console_stack(tmp_path, worker={"concurrency": 16}) as stack,
        httpx.AsyncClient(timeout=60) as client,
    ):
        gate = asyncio.Semaphore(16)

        async def one(i: int) -> str:
            async with gate:
                return await stack.submit(
                    client,
                    f"harbour study {i}",
                    params={"width": 32, "height": 32, "faults": {"download_5xx": 1}},
                )

        ids = await asyncio.gather(*(one(i) for i in range(COUNT)))
        await stack.wait(ids, "failed", timeout=300)
        for task_id in ids:
            task = await stack.rt.ledger.get_task(task_id)
            assert task is not None and task.failure_reason == "fetch_failed"

        csrf = await sign_in(client, stack.base)
        query = urlencode({"action": "replay", "status": "failed", "reason": "fetch_failed"})
        confirm = await client.get(f"{stack.base}/ui/bulk?{query}")
        assert confirm.status_code == 200
        assert re.search(r"<strong>500</strong>", confirm.text), confirm.text
        fields = dict(
            re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', confirm.text)
        )
        assert fields["csrf"] == csrf and fields["action"] == "replay" and fields["as_of"]
        done = await client.post(f"{stack.base}/ui/bulk", data=fields)
        assert done.status_code == 200, done.text
        assert "500 of 500 tasks queued for archiving again" in done.text
        await stack.wait(ids, "archived", timeout=300)

        again = await client.post(f"{stack.base}/ui/bulk", data=fields)  # a second click
        assert "0 of 0 tasks" in again.text

        bulk_ids = set()
        for task_id in ids:
            task = await stack.rt.ledger.get_task(task_id)
            assert task is not None and len(task.objects) == 1
            events = await stack.rt.ledger.events(task_id)
            assert [e.status for e in events].count("archived") == 1
            replays = [e for e in events if e.data.get("replay")]
            assert len(replays) == 1
            bulk_ids.add(replays[0].data["bulk"])
        assert len(bulk_ids) == 1
        images = [p for p in stack.archive.rglob("*.png") if "_thumbs" not in p.parts]
        assert len(images) == COUNT
        served = {t.id: t.downloads for t in stack.sim.tasks.values()}
        assert len(served) == COUNT and set(served.values()) == {2}
