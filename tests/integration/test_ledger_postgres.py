"""The ledger contract on a real PostgreSQL server (127.0.0.1:5432, a fresh database)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from receiver.errors import LedgerUnavailable
from receiver.ledger import Ledger
from receiver.ledger.postgres import PostgresLedger
from receiver.models import Outcome, OutcomeStatus, Status, Task
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


async def test_a_group_commit_runs_as_statements_not_call_by_call(pg_dsn: str) -> None:
    """On PostgreSQL a group of callbacks is one query of prepared statements: the thread
    pool transaction (each call's ``fn``) is not used for it at all."""
    ledger = PostgresLedger(pg_dsn)
    await ledger.open()
    try:
        tasks = [(await ledger.create_task(new()))[0] for _ in range(6)]

        async def refused(fn: object, **kw: object) -> object:
            raise AssertionError("a grouped call ran as a transaction of its own")

        ledger._run = refused  # type: ignore[method-assign,assignment]
        pending = Outcome(status=OutcomeStatus.PENDING)
        results = await asyncio.gather(
            *(
                ledger.record_outcome(
                    t.id,
                    OK if i % 2 else pending,
                    provider="s",
                    delivery_key=f"k{i}",
                    deadline=None,
                )
                for i, t in enumerate(tasks)
            )
        )
        assert [r.job_enqueued for r in results] == [False, True] * 3
        assert not any(r.duplicate for r in results)
    finally:
        del ledger._run
        await ledger.close()


async def test_a_migration_under_the_prepared_statements_costs_a_reconnect(pg_dsn: str) -> None:
    """Another replica adds a column to tasks: the group connection's prepared statements
    now fail ("cached plan must not change result type"); the group is sent again on a new
    connection, which prepares them anew, and nothing is refused or recorded twice."""
    import psycopg

    ledger = PostgresLedger(pg_dsn)
    await ledger.open()
    try:
        task, _ = await ledger.create_task(new())
        pending = Outcome(status=OutcomeStatus.PENDING)
        first = await ledger.record_outcome(
            task.id, pending, provider="s", delivery_key="a", deadline=None
        )
        assert first.task is not None and not first.duplicate
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE tasks ADD COLUMN added_later TEXT")
        second = await ledger.record_outcome(
            task.id, OK, provider="s", delivery_key="b", deadline=None
        )
        assert second.job_enqueued and not second.duplicate
        again = await ledger.record_outcome(
            task.id, OK, provider="s", delivery_key="b", deadline=None
        )
        assert again.duplicate
        assert len(await ledger.claim_jobs("w", 10, 30)) == 1
    finally:
        await ledger.close()


async def test_replicas_racing_a_success_and_a_failure_leave_one_consistent_task(
    pg_dsn: str,
) -> None:
    """Two replicas record a success and a failure for the same tasks at the same moment:
    whichever commits first decides, and the task is never failed with a live archive job
    nor completed without exactly one."""
    a, b = PostgresLedger(pg_dsn), PostgresLedger(pg_dsn)
    await asyncio.gather(a.open(), b.open())
    try:
        tasks = [(await a.create_task(new()))[0] for _ in range(24)]
        failure = Outcome(status=OutcomeStatus.FAILED, error_code="E1")
        # Each call a moment apart on either replica, so groups of both interleave (and
        # may deadlock, which the ledger retries).
        rng = random.Random(7)

        async def record(ledger: PostgresLedger, t: Task, outcome: Outcome, key: str) -> None:
            await asyncio.sleep(rng.random() / 100)
            await ledger.record_outcome(
                t.id, outcome, provider="s", delivery_key=key, deadline=None
            )

        await asyncio.gather(
            *(record(a, t, OK, f"ok{t.id}") for t in tasks),
            *(record(b, t, failure, f"no{t.id}") for t in tasks),
        )
        for t in tasks:
            stored = await a.get_task(t.id)
            assert stored is not None and stored.status in (Status.COMPLETED, Status.FAILED)
            jobs = (await a.task_activity(t.id))["jobs"]
            live = [j for j in jobs if j["state"] in ("queued", "leased")]
            assert len(live) == (1 if stored.status is Status.COMPLETED else 0)
            finals = [e.status for e in await a.events(t.id) if e.status != "submitted"]
            assert finals == [stored.status.value]
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("name", ["record_deliveries", "record_outcomes"])
async def test_group_statements_look_tasks_up_by_index_at_any_size(pg_dsn: str, name: str) -> None:
    """The group statements are planned once (prepared) for batches of any size, which the
    planner guesses at a hundred rows: their plan must find tasks, jobs and events by index,
    not scan a table, whatever its size."""
    import psycopg

    ledger = PostgresLedger(pg_dsn)
    await ledger.open()
    await ledger.close()
    prepared, call, names = ledger._group_statements[name]
    with psycopg.connect(pg_dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute(
            "INSERT INTO tasks (id, provider, prompt, params, destination, metadata, status,"
            " created_at, updated_at) SELECT 'tsk_' || n, 's', 'p', '{}', 'local', '{}',"
            " 'submitted', n, n FROM generate_series(1, 20000) AS n"
        )
        conn.execute(
            "INSERT INTO events (task_id, seq, status, at, data)"
            " SELECT id, 1, 'submitted', 0, '{}' FROM tasks"
        )
        conn.execute(
            "INSERT INTO jobs (task_id, state, next_attempt_at, created_at, updated_at)"
            " SELECT id, 'done', 0, 0, 0 FROM tasks"
        )
        conn.execute("ANALYZE")
        conn.execute(f"PREPARE receiver_{name} AS {prepared}")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        values = {"batch": '[{"id": "tsk_1", "action": "complete"}]', "now": 1.0, "channel": "c"}
        plan = "\n".join(
            row[0] for row in conn.execute("EXPLAIN " + call, [values[n] for n in names])
        )
    assert "Index Scan using tasks_pkey on tasks" in plan
    assert "Seq Scan" not in plan, plan


async def test_a_value_postgresql_refuses_fails_only_its_own_callback(pg_dsn: str) -> None:
    """A NUL character PostgreSQL cannot store, in one callback of a group: that callback is
    refused (LedgerRefused, a 422 for the provider), the others are recorded."""
    from receiver.errors import LedgerRefused

    ledger = PostgresLedger(pg_dsn)
    await ledger.open()
    try:
        tasks = [(await ledger.create_task(new()))[0] for _ in range(3)]
        poisoned = Outcome(status=OutcomeStatus.FAILED, error_message="bad\x00byte")
        results = await asyncio.gather(
            ledger.record_outcome(tasks[0].id, OK, provider="s", delivery_key="a", deadline=None),
            ledger.record_outcome(
                tasks[1].id, poisoned, provider="s", delivery_key="b", deadline=None
            ),
            ledger.record_outcome(tasks[2].id, OK, provider="s", delivery_key="c", deadline=None),
            return_exceptions=True,
        )
        assert isinstance(results[1], LedgerRefused)
        assert [getattr(r, "job_enqueued", None) for r in results] == [True, None, True]
        alone = await asyncio.gather(
            ledger.record_outcome(
                tasks[1].id, poisoned, provider="s", delivery_key="b", deadline=None
            ),
            return_exceptions=True,
        )
        assert isinstance(alone[0], LedgerRefused)
        stored = await ledger.get_task(tasks[1].id)
        assert stored is not None and stored.status is Status.SUBMITTED
    finally:
        await ledger.close()
