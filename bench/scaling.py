"""Cost as the ledger grows: intake, claim and list with 1,000,000 tasks against an empty ledger.

The big ledger is loaded through SQL in a few statements: one archived task is made through
the ledger's own methods (created, submitted, its callback recorded, its job claimed and
finished with a real sidecar), and its rows (task, events, job, notification) are copied N
times with new ids by a recursive CTE (SQLite) or ``generate_series`` (PostgreSQL), so every
row has the size and shape of a real one and every index and trigger of the schema is kept.

Then, on the same ledger, each figure against the same run on an empty ledger:
- intake: wrk replaying signed callbacks against ``receiver serve`` (as in bench/intake.py);
- claim: archive jobs enqueued (one ``succeeded`` outcome each) then claimed 16 at a time and
  finished, through the ledger's methods in this process, per job;
- list: ``GET /v1/tasks?limit=50`` newest first, the same with ``status=archived``, and the
  second page through the cursor, per request.
The ledger's bytes per task are its size on disk over the tasks it holds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from . import intake
from .common import (
    API_KEY,
    PROVIDER,
    cpu_seconds,
    create_tasks,
    free_port,
    processes_cpu,
    receiver_config,
    start_receiver,
)

TEMPLATE_TABLES = ("tasks", "events", "jobs", "notifications")


@dataclass
class Figures:
    """One ledger (backend, size): what each operation cost."""

    backend: str
    tasks: int
    load_seconds: float = 0.0
    bytes_per_task: float = 0.0
    intake_rps: float = 0.0
    intake_cpu_us: float = 0.0
    claim_ms: float = 0.0  # wall time per job: enqueue + claim + finish
    claim_cpu_ms: float = 0.0  # CPU per job: this process (all threads) + database backends
    list_ms: dict[str, float] = field(default_factory=dict)
    list_cpu_ms: dict[str, float] = field(default_factory=dict)  # server + backends, per request


async def _template(ledger_url: str) -> str:
    """One archived task made through the ledger's own methods; its id."""
    from receiver import sidecar
    from receiver.ledger import open_ledger
    from receiver.models import NewTask, Outcome, OutcomeStatus, ResultImage, StoredObject

    ledger = open_ledger(ledger_url)
    await ledger.open()
    try:
        task, _ = await ledger.create_task(
            NewTask(
                provider=PROVIDER,
                prompt="a lighthouse on a cliff at dusk, volumetric fog, 35mm film photo",
                destination="s3",
                params={"width": 1024, "height": 1024, "steps": 28},
                metadata={"user": "u_123456", "album": "coast"},
                notify_url="https://app.example/hooks/receiver",
            )
        )
        await ledger.mark_submitted(task.id, f"sim_{task.id[4:]}", next_poll_at=None)
        url = "https://cdn.provider.example/results/abcdef/0.png?X-Amz-Signature=" + "f" * 64
        outcome = Outcome(
            OutcomeStatus.SUCCEEDED,
            images=(ResultImage(url=url, expires_at=time.time() + 3600),),
            provider_task_id=f"sim_{task.id[4:]}",
            model="sim-flux-1",
            seed=1234,
        )
        await ledger.record_outcome(
            task.id, outcome, provider=PROVIDER, delivery_key="tmpl", deadline=None
        )
        (job,) = await ledger.claim_jobs("template", 1, 60)
        stored = await ledger.get_task(task.id)
        assert stored is not None and stored.outcome is not None
        doc = sidecar.build(
            stored,
            stored.outcome,
            index=0,
            content_type="image/png",
            size=2 * 1024 * 1024,
            sha256="ab" * 32,
            width=1024,
            height=1024,
            source_url=url.split("?", 1)[0],
            archived_at=time.time(),
            default_model="sim-flux-1",
            provenance={"status": "absent", "present": False},
        )
        key = sidecar.image_key(stored, 0, "png")
        obj = StoredObject(
            index=0,
            uri=f"s3://bench/{key}",
            sidecar_uri=f"s3://bench/{sidecar.sidecar_key(key)}",
            key=key,
            sha256="ab" * 32,
            bytes=2 * 1024 * 1024,
            content_type="image/png",
            width=1024,
            height=1024,
            sidecar=doc,
        )
        await ledger.finish_job(job.id, "template", [obj])
        (note,) = await ledger.claim_notifications("template", 1, 60)
        await ledger.finish_notification(note.id, "template")
    finally:
        await ledger.close()
    return task.id


def _copy_sql(dialect: str, table: str, columns: list[str], row: dict[str, Any]) -> str:
    """INSERT … SELECT that copies ``row`` once per number ``i`` with its ids renumbered."""
    if dialect == "sqlite":
        ident = "printf('tsk_0%027x', i)"
        msg = "printf('msg_0%027x', i)"
        value = ":{}"
    else:
        ident = "'tsk_0' || lpad(to_hex(i), 27, '0')"
        msg = "'msg_0' || lpad(to_hex(i), 27, '0')"
        value = "%({})s"
    exprs = []
    for col in columns:
        if (table == "tasks" and col == "id") or col == "task_id":
            exprs.append(ident)
        elif table == "notifications" and col == "id":
            exprs.append(msg)
        elif table == "tasks" and col in ("idempotency_key", "provider_task_id"):
            exprs.append(f"'{col[:3]}_' || {ident}")
        elif table == "tasks" and col in ("created_at", "updated_at", "completed_at"):
            # Spread over the past 90 days, oldest first like real ids.
            exprs.append(f"{value.format(col)} - 7776000 + i * 7.776")
        else:
            exprs.append(value.format(col))
    names = ", ".join(columns)
    select = ", ".join(exprs)
    if dialect == "sqlite":
        return (
            "WITH RECURSIVE n(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM n WHERE i < :hi) "
            f"INSERT INTO {table} ({names}) SELECT {select} FROM n"
        )
    return (
        f"INSERT INTO {table} ({names}) SELECT {select} "
        "FROM generate_series(CAST(%(lo)s AS integer), CAST(%(hi)s AS integer)) AS i"
    )


def load_sqlite(path: Path, count: int) -> float:
    """``count`` copies of a real archived task into a migrated SQLite ledger; seconds."""
    asyncio.run(_template(f"sqlite:///{path}"))
    start = time.monotonic()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")  # a bulk load; the measurements run normally
        rows = {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t}")] for t in TEMPLATE_TABLES}
        conn.execute("BEGIN")
        step = 100_000
        for lo in range(1, count + 1, step):
            hi = min(count, lo + step - 1)
            for table in TEMPLATE_TABLES:
                for row in rows[table]:
                    columns = [c for c in row if not (table == "jobs" and c == "id")]
                    sql = _copy_sql("sqlite", table, columns, row)
                    conn.execute(sql, {**{c: row[c] for c in columns}, "lo": lo, "hi": hi})
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return time.monotonic() - start


def load_postgres(url: str, count: int) -> float:
    import psycopg
    from psycopg.rows import dict_row

    asyncio.run(_template(url))
    start = time.monotonic()
    with psycopg.connect(url, row_factory=dict_row) as conn:
        conn.execute("SET synchronous_commit = off")
        rows = {t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in TEMPLATE_TABLES}
        step = 250_000
        for lo in range(1, count + 1, step):
            hi = min(count, lo + step - 1)
            with conn.transaction():
                for table in TEMPLATE_TABLES:
                    for row in rows[table]:
                        columns = [c for c in row if not (table == "jobs" and c == "id")]
                        sql = _copy_sql("postgres", table, columns, row)
                        conn.execute(sql, {**{c: row[c] for c in columns}, "lo": lo, "hi": hi})
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return time.monotonic() - start


def sqlite_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        p = Path(f"{path}{suffix}")
        if p.exists():
            total += p.stat().st_size
    return total


def postgres_bytes(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


async def _claim_cost(ledger_url: str, jobs: int, database: str | None) -> tuple[float, float]:
    """Wall milliseconds per job: the outcome that enqueues it, its claim (16 at a time, as
    a worker with 16 slots does) and its finish, through the ledger's methods."""
    from receiver.ledger import open_ledger
    from receiver.models import Outcome, OutcomeStatus, ResultImage, StoredObject

    made = await create_tasks(ledger_url, jobs, "local")
    ledger = open_ledger(ledger_url)
    await ledger.open()
    try:
        start = time.perf_counter()
        cpu0 = time.process_time() + _backends(database)
        for task_id, ptid in made:
            outcome = Outcome(
                OutcomeStatus.SUCCEEDED,
                images=(ResultImage(url="https://cdn.example/x.png", expires_at=None),),
                provider_task_id=ptid,
            )
            await ledger.record_outcome(
                task_id, outcome, provider=PROVIDER, delivery_key=f"c{task_id}", deadline=None
            )
        done = 0
        while done < jobs:
            claimed = await ledger.claim_jobs("bench", 16, 60)
            if not claimed:
                raise RuntimeError(f"claim found nothing after {done} of {jobs} jobs")
            for job in claimed:
                obj = StoredObject(
                    index=0,
                    uri=f"file:///x/{job.task_id}.png",
                    sidecar_uri=f"file:///x/{job.task_id}.png.json",
                    key=f"{job.task_id}.png",
                    sha256="cd" * 32,
                    bytes=1,
                    content_type="image/png",
                    width=1,
                    height=1,
                )
                await ledger.finish_job(job.id, "bench", [obj])
            done += len(claimed)
        cpu = time.process_time() + _backends(database) - cpu0
        return (time.perf_counter() - start) / jobs * 1000, cpu / jobs * 1000
    finally:
        await ledger.close()


def _backends(database: str | None) -> float:
    """CPU seconds of the PostgreSQL backends serving ``database`` (0 for SQLite)."""
    return processes_cpu(f" {database} ") if database else 0.0


def _list_cost(
    base: str, requests: int, pid: int, database: str | None
) -> tuple[dict[str, float], dict[str, float]]:
    """Per ``GET /v1/tasks`` request of three kinds: median milliseconds, and the server's
    (plus the database backends') CPU milliseconds."""
    headers = {"authorization": f"Bearer {API_KEY}"}
    out: dict[str, float] = {}
    cpu: dict[str, float] = {}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        first = client.get("/v1/tasks", params={"limit": 50})
        first.raise_for_status()
        cursor = first.json().get("next_cursor")
        kinds: dict[str, dict[str, Any]] = {
            "newest 50": {"limit": 50},
            "archived, newest 50": {"limit": 50, "status": "archived"},
            "second page": {"limit": 50, "cursor": cursor} if cursor else {"limit": 50},
        }
        for name, params in kinds.items():
            times = []
            cpu0 = cpu_seconds(pid) + _backends(database)
            for _ in range(requests):
                t0 = time.perf_counter()
                r = client.get("/v1/tasks", params=params)
                times.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
            out[name] = statistics.median(times)
            cpu[name] = (cpu_seconds(pid) + _backends(database) - cpu0) / requests * 1000
    return out, cpu


def measure(
    backend: str,
    ledger_url: str,
    tmp: Path,
    tasks: int,
    opt: intake.IntakeOptions,
    database: str | None = None,
) -> Figures:
    """Intake, list and claim on an already loaded (or empty) ledger."""
    fig = Figures(backend, tasks)
    port = free_port()
    conf = receiver_config(tmp, port, ledger_url=ledger_url)
    conf["worker"]["poll_interval"] = 3600.0  # the bench claims jobs itself, not the server
    made = asyncio.run(create_tasks(ledger_url, opt.tasks, "local"))
    child = start_receiver(tmp, f"scaling-{backend}-{tasks}", conf, port)
    base = f"http://127.0.0.1:{port}"
    try:
        result = intake._measure(f"scaling-{backend}", base, child, tmp, made, opt, None, database)
        fig.intake_rps = result.rps
        fig.intake_cpu_us = result.cpu_us
        fig.list_ms, fig.list_cpu_ms = _list_cost(base, 100, child.pid, database)
    finally:
        child.stop()
    fig.claim_ms, fig.claim_cpu_ms = asyncio.run(_claim_cost(ledger_url, 400, database))
    return fig


# Bump when the loaded rows change shape. A newer schema does not need a new load: opening
# the ledger applies the new migrations to it, as an upgrade of a real deployment does.
CACHE_VERSION = "v1"
# The "empty" ledger: the same archived rows, just enough that every list page is full (with
# none, a page of 50 archived tasks would be compared with a page of one).
SMALL = 200


def cached_sqlite(cache: Path, count: int) -> tuple[Path, float]:
    """The loaded SQLite ledger from the cache, loading it first if missing: (path, load
    seconds, 0 when it was already there)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"ledger-{count}-sqlite-{CACHE_VERSION}.db"
    if path.exists():
        return path, 0.0
    loading = path.with_suffix(".loading")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{loading}{suffix}").unlink(missing_ok=True)
    seconds = load_sqlite(loading, count)
    conn = sqlite3.connect(loading)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    loading.rename(path)
    return path, seconds


def cached_postgres(dsn: str, count: int) -> tuple[str, str, float]:
    """The loaded PostgreSQL ledger (a database kept between runs): (url, name, seconds)."""
    import psycopg

    name = f"receiver_bench_ledger_{count}_{CACHE_VERSION}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    base = dsn.rsplit("/", 1)[0]
    if found:
        return f"{base}/{name}", name, 0.0
    loading = name + "_loading"
    url = intake.scratch_database(dsn, loading, create=True)
    seconds = load_postgres(url, count)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{loading}" RENAME TO "{name}"')
    return f"{base}/{name}", name, seconds


def run(
    tmp: Path, opt: intake.IntakeOptions, pg_dsn: str | None, big: int, cache: Path
) -> dict[str, Any]:
    """Empty and ``big`` ledgers, SQLite then PostgreSQL. The big ones are kept in ``cache``
    (SQLite) or as a database (PostgreSQL) between runs: loading a million tasks takes
    minutes; the figures are taken on top of it."""
    results: dict[str, Any] = {"big": big, "small": SMALL, "figures": []}
    small = tmp / "scaling-small.db"
    load_sqlite(small, SMALL)
    results["figures"].append(measure("SQLite", f"sqlite:///{small}", tmp, SMALL, opt))
    path, load = cached_sqlite(cache, big)
    fig = measure("SQLite", f"sqlite:///{path}", tmp, big, opt)
    fig.load_seconds = load
    fig.bytes_per_task = sqlite_bytes(path) / big
    results["figures"].append(fig)
    if pg_dsn:
        name = "receiver_bench_scaling_small"
        url = intake.scratch_database(pg_dsn, name, create=True)
        try:
            load_postgres(url, SMALL)
            results["figures"].append(measure("PostgreSQL", url, tmp, SMALL, opt, name))
        finally:
            intake.scratch_database(pg_dsn, name, create=False)
        url, name, load = cached_postgres(pg_dsn, big)
        fig = measure("PostgreSQL", url, tmp, big, opt, name)
        fig.load_seconds = load
        fig.bytes_per_task = postgres_bytes(url) / big
        results["figures"].append(fig)
    return results
