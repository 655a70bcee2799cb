"""The console's ledger queries (filters, prompt search, live changes, replay-once) on SQLite
and PostgreSQL, and the migration runner keeping a trigger's body whole."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.ledger import Ledger
from receiver.ledger.postgres import PostgresLedger
from receiver.ledger.sql import SqlLedger, migrations, split_statements
from receiver.ledger.sqlite import SqliteLedger
from receiver.models import Outcome, OutcomeStatus, Reason, Status, TaskFilter

from ..unit.ledger_contract import OK, new, obj

pytestmark = pytest.mark.anyio
FAILED = Outcome(status=OutcomeStatus.FAILED, error_code="internal", error_message="boom")


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlLedger]:
    if request.param == "sqlite":
        found: SqlLedger = SqliteLedger(str(tmp_path / "ledger.db"))
    else:
        found = PostgresLedger(request.getfixturevalue("pg_dsn"))
    await found.open()
    yield found
    await found.close()


async def _archived(ledger: Ledger, prompt: str, **kw: object) -> str:
    task, _ = await ledger.create_task(new(prompt=prompt, **kw))
    await ledger.record_outcome(task.id, OK, provider="simulated", delivery_key=None, deadline=None)
    (job,) = await ledger.claim_jobs("w", 1, 30)
    await ledger.finish_job(job.id, "w", [obj(task.id)])
    return task.id


async def _fetch_failed(ledger: Ledger, prompt: str, **kw: object) -> str:
    task, _ = await ledger.create_task(new(prompt=prompt, **kw))
    await ledger.record_outcome(task.id, OK, provider="simulated", delivery_key=None, deadline=None)
    (job,) = await ledger.claim_jobs("w", 1, 30)
    await ledger.fail_job(job.id, "w", Reason.FETCH_FAILED, "origin answered 503")
    return task.id


async def _ids(ledger: Ledger, where: TaskFilter) -> list[str]:
    tasks, _ = await ledger.search_tasks(where, limit=100)
    return [t.id for t in tasks]


async def test_filters_and_prompt_search(ledger: SqlLedger) -> None:
    kite = await _archived(ledger, "A red kite over the dunes", model="flux-a")
    fox = await _archived(ledger, "a fox made of autumn leaves", destination="other")
    broken = await _fetch_failed(ledger, "a kite made of glass")
    moderated, _ = await ledger.create_task(new(prompt="an <script>alert(1)</script> kite"))
    await ledger.record_outcome(
        moderated.id, FAILED, provider="simulated", delivery_key=None, deadline=None
    )

    assert await _ids(ledger, TaskFilter()) == [moderated.id, broken, fox, kite]
    assert await _ids(ledger, TaskFilter(text="kite")) == [moderated.id, broken, kite]
    assert await _ids(ledger, TaskFilter(text="KITE red")) == [kite]  # every word, any case
    assert await _ids(ledger, TaskFilter(text="autu")) == [fox]  # word prefixes
    assert await _ids(ledger, TaskFilter(text='"kite" * -(')) == [moderated.id, broken, kite]
    assert await _ids(ledger, TaskFilter(text="script")) == [moderated.id]
    assert await _ids(ledger, TaskFilter(text="zebra")) == []
    assert await _ids(ledger, TaskFilter(status=Status.FAILED)) == [moderated.id, broken]
    assert await _ids(ledger, TaskFilter(reason="fetch_failed")) == [broken]
    assert await _ids(ledger, TaskFilter(model="flux-a")) == [kite]
    assert await _ids(ledger, TaskFilter(destination="other")) == [fox]
    assert await _ids(ledger, TaskFilter(provider="bfl")) == []
    everything = await ledger.get_task(kite)
    assert everything is not None
    after = everything.created_at
    assert kite not in await _ids(ledger, TaskFilter(created_after=after + 1e-6))
    assert await _ids(ledger, TaskFilter(created_before=after + 1e-6)) == [kite]
    assert await ledger.count_tasks(TaskFilter(text="kite", status=Status.FAILED)) == 2
    assert await ledger.task_ids(TaskFilter(text="kite"), 10) == [kite, broken, moderated.id]


async def test_cursor_pages_cover_every_task_once(ledger: SqlLedger) -> None:
    made = [await _archived(ledger, f"lighthouse number {i}") for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await ledger.search_tasks(
            TaskFilter(text="lighthouse"), cursor=cursor, limit=3
        )
        seen += [t.id for t in page]
        if cursor is None:
            break
    assert seen == list(reversed(made))


async def test_changed_tasks_follow_updates(ledger: SqlLedger) -> None:
    start = ledger.now()
    await asyncio.sleep(0.01)
    task_id = await _fetch_failed(ledger, "a slow kite")
    changed = await ledger.changed_tasks(TaskFilter(), start, 10)
    assert [t.id for t in changed] == [task_id]
    assert changed[0].status is Status.FAILED
    assert await ledger.changed_tasks(TaskFilter(status=Status.ARCHIVED), start, 10) == []
    assert await ledger.changed_tasks(TaskFilter(), changed[0].updated_at, 10) == []


async def test_replay_failed_moves_a_task_once_and_audits_it(ledger: SqlLedger) -> None:
    task_id = await _fetch_failed(ledger, "a kite")
    audit: dict[str, object] = {"by": "test", "bulk": "blk_1"}
    first, second = await asyncio.gather(
        ledger.replay_failed(task_id, OK, None, audit),
        ledger.replay_failed(task_id, OK, None, audit),
    )
    assert [first is None, second is None].count(False) == 1  # exactly one replay won
    jobs = await ledger.claim_jobs("w", 10, 30)
    assert [j.task_id for j in jobs] == [task_id]
    events = await ledger.events(task_id)
    replays = [e for e in events if e.data.get("replay")]
    assert len(replays) == 1 and replays[0].data["bulk"] == "blk_1"
    archived = await _archived(ledger, "done already")
    assert await ledger.replay_failed(archived, OK, None, audit) is None
    await ledger.audit(archived, "redelivered", {"by": "test", "event_id": "msg_1"})
    assert (await ledger.events(archived))[-1].status == "redelivered"


async def test_activity_and_operations(ledger: SqlLedger) -> None:
    task_id = await _fetch_failed(ledger, "a kite", notify_url="http://127.0.0.1:9/hook")
    activity = await ledger.task_activity(task_id)
    assert [j["state"] for j in activity["jobs"]] == ["dead"]
    assert [n["event"] for n in activity["notifications"]] == ["task.failed"]
    other, _ = await ledger.create_task(new())
    await ledger.record_outcome(other.id, OK, provider="bfl", delivery_key="d1", deadline=None)
    (job,) = await ledger.claim_jobs("w", 1, 30)
    await ledger.retry_job(job.id, "w", "origin answered 503", 30)
    snap = await ledger.ops_snapshot(ledger.now() - 3600)
    assert snap["queue_depth"] == 1 and snap["retrying"] == 1
    assert snap["callbacks"] == {"bfl": 1}
    assert snap["failures"] == {"fetch_failed": 1}
    assert snap["notifications"]["queued"]["count"] == 1  # type: ignore[index]
    (retrying,) = snap["retrying_jobs"]  # type: ignore[misc]
    assert retrying["last_error"] == "origin answered 503" and retrying["provider"] == "simulated"


def test_trigger_bodies_stay_whole_and_plain_files_split_as_before() -> None:
    body = (
        "CREATE TABLE a (x TEXT);\nCREATE TRIGGER t AFTER INSERT ON a BEGIN\n"
        "  INSERT INTO b VALUES (new.x);\n  DELETE FROM c;\nEND;\nCREATE INDEX i ON a (x);"
    )
    assert split_statements(body) == [
        "CREATE TABLE a (x TEXT)",
        "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  INSERT INTO b VALUES (new.x);\n"
        "  DELETE FROM c;\nEND",
        "CREATE INDEX i ON a (x)",
    ]
    for dialect in ("sqlite", "postgres"):
        versions = dict(migrations(dialect))
        assert len(versions[1]) == 13  # the first schema splits as it always did
        assert 3 in versions
    with pytest.raises(ValueError):
        split_statements("CREATE TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM c;")


async def test_search_covers_tasks_made_before_the_migration(tmp_path: Path) -> None:
    """Migration 003 indexes the prompts already in the ledger, not only new ones."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE receiver_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    for version, statements in migrations("sqlite"):
        if version >= 3:
            continue
        for statement in statements:
            conn.execute(statement)
        conn.execute("INSERT INTO receiver_migrations VALUES (?, 0)", (version,))
    conn.execute(
        "INSERT INTO tasks (id, provider, prompt, params, destination, metadata, status,"
        " created_at, updated_at) VALUES ('tsk_old', 'bfl', 'an old lighthouse', '{}', 'local',"
        " '{}', 'archived', 1, 1)"
    )
    conn.commit()
    conn.close()
    ledger = SqliteLedger(str(path))
    await ledger.open()
    try:
        assert await _ids(ledger, TaskFilter(text="lighthouse")) == ["tsk_old"]
    finally:
        await ledger.close()
