"""The ledger contract on a real PostgreSQL server (127.0.0.1:5432, a fresh database)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from receiver.errors import LedgerUnavailable
from receiver.ledger import Ledger
from receiver.ledger.postgres import PostgresLedger
from tests.unit.ledger_contract import OK, LedgerContract, new

pytestmark = pytest.mark.anyio


class TestPostgresLedger(LedgerContract):
    @pytest.fixture
    async def ledger(self, pg_dsn: str) -> AsyncIterator[Ledger]:
        ledger = PostgresLedger(pg_dsn)
        await ledger.open()
        yield ledger
        await ledger.close()


async def test_replicas_migrate_together_and_hear_each_other(pg_dsn: str) -> None:
    a, b = PostgresLedger(pg_dsn), PostgresLedger(pg_dsn)
    await asyncio.gather(a.open(), b.open())
    heard: list[str] = []
    await b.listen(heard.append)
    await asyncio.sleep(0.3)  # LISTEN is issued by a background task
    try:
        task, _ = await a.create_task(new())
        await a.record_outcome(task.id, OK, provider="s", delivery_key="x", deadline=None)
        for _ in range(100):
            if "jobs" in heard:
                break
            await asyncio.sleep(0.05)
        assert "jobs" in heard and f"task:{task.id}" in heard
        dup = await b.record_outcome(task.id, OK, provider="s", delivery_key="x", deadline=None)
        assert dup.duplicate
        (job,) = await b.claim_jobs("replica-b", 5, 30)
        assert await a.claim_jobs("replica-a", 5, 30) == []
        assert job.task_id == task.id
    finally:
        await a.close()
        await b.close()


async def test_unreachable_server_is_ledger_unavailable() -> None:
    ledger = PostgresLedger("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(LedgerUnavailable):
        await ledger.open()
