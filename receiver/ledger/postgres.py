"""PostgreSQL ledger: what several replicas share.

Transactions run on a thread pool of synchronous psycopg connections (the logic is shared
with SQLite), except group commits of callbacks, which go from the event loop over a small
async pool as one query each (see ``_run_group``); ``FOR UPDATE SKIP LOCKED`` hands each job
to one replica; ``NOTIFY`` inside the transaction wakes every replica's workers and event
streams once it commits. Migrations run under an advisory lock so replicas starting together
apply them once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from .. import backoff
from ..errors import LedgerRefused, LedgerUnavailable
from .base import Listener
from .sql import SqlLedger, Statement, Tx, Waiting, migrations

T = TypeVar("T")
log = logging.getLogger(__name__)
CHANNEL = "receiver"
MIGRATION_LOCK = 0x7265636569766572  # "receiver"
RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


INTRANS, INERROR = pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR
TUPLES_OK = pq.ExecStatus.TUPLES_OK
# Statements group commits run: prepared on each connection of the group pool.
GROUPED = ("record_deliveries", "record_outcomes")


def _prepared(name: str, sql: str) -> tuple[str, str, list[str]]:
    """A ``%(name)s`` statement as PREPARE takes it ($1, $2, ...), the EXECUTE that runs
    it with ``%s`` for the values, and the names of the values in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    prepared = re.sub(r"%\((\w+)\)s", number, sql)
    call = f"EXECUTE receiver_{name}({', '.join(['%s'] * len(names))})"
    return prepared, call, names


def _rounds(statements: list[Statement[Any]]) -> list[tuple[str, list[int]]]:
    """The statements to send for a group, in order: (name, indexes of its calls). A call
    goes in the round after the last one holding a call that touches what it touches, so
    the rows of one statement never meet and each call sees what came before it."""
    last: dict[str, int] = {}
    rounds: dict[tuple[int, str], list[int]] = {}
    for index, statement in enumerate(statements):
        number = max((last[t] + 1 for t in statement.touches if t in last), default=0)
        for touched in statement.touches:
            last[touched] = number
        rounds.setdefault((number, statement.name), []).append(index)
    return [(name, members) for (_, name), members in sorted(rounds.items())]


# Group commits in flight at once, each with a connection of the group pool. Two, not one:
# a group waiting on a row lock or its WAL flush does not hold up the next; not more, as
# smaller groups cost more per callback on both sides (wrk intake, pending callbacks, on
# this 2-core machine, callbacks/s, medians of 6: 1 -> 2,480, 2 -> 2,305, 3 -> 2,178; with
# 4 and 8 lower still).
GROUP_CONNECTIONS = 2


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """psycopg's errors as the ledger's: an outage, or a value it cannot store."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
        raise LedgerUnavailable("postgresql: " + " ".join(str(exc).split())) from exc
    except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
        # A value it cannot store (NUL in text, out of range): the data, not an outage.
        raise LedgerRefused(f"the ledger cannot record this value ({type(exc).__name__})") from exc


class PostgresLedger(SqlLedger):
    dialect = "postgres"
    grouped_statements = True

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        super().__init__()
        self.url = url.replace("postgres://", "postgresql://", 1)
        self.pool_size = pool_size
        # Group commits in flight at once, each on a connection of its own pool, driven from
        # the event loop (see _run_group).
        self.group_flushers = GROUP_CONNECTIONS
        self._pool: ConnectionPool[Any] | None = None
        self._group_pool: AsyncConnectionPool[Any] | None = None
        # name: (the statement for PREPARE, its EXECUTE with %s for values, their names)
        self._group_statements = {name: _prepared(name, self.q[name]) for name in GROUPED}
        self._limiter = anyio.CapacityLimiter(pool_size)
        self._listen_task: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresLedger:
        """``postgresql://user@host:port/database`` (``postgres://`` also). ImportError when
        the drivers (the ``[postgres]`` extra) are missing, even if this module loaded."""
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401

        return cls(url)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # Client-side binding: NULL parameters need no type inference.
        conn.cursor_factory = psycopg.ClientCursor
        conn.row_factory = dict_row  # type: ignore[assignment]

    async def _thread(self, fn: Callable[[], T]) -> T:
        with _translated():
            return await anyio.to_thread.run_sync(fn, limiter=self._limiter)

    async def open(self) -> None:
        def fn() -> None:
            # A direct connection first: a refused or unknown server fails at once and
            # clearly, where the pool would wait out its timeout.
            with psycopg.connect(self.url, connect_timeout=5, row_factory=dict_row) as conn:
                self._migrate(conn)
            pool: ConnectionPool[Any] = ConnectionPool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                configure=self._configure,
                timeout=10.0,
                open=False,
            )
            pool.open(wait=True, timeout=10.0)
            self._pool = pool

        if self._pool is None:
            await self._thread(fn)
        if self._group_pool is None:
            group_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self.url,
                min_size=1,
                max_size=self.group_flushers,
                # BEGIN and COMMIT are sent as statements (see _execute_group).
                kwargs={"autocommit": True},
                configure=self._prepare,
                timeout=10.0,
                open=False,
            )
            with _translated():
                await group_pool.open(wait=True, timeout=10.0)
            self._group_pool = group_pool

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS receiver_migrations "
                "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            rows = conn.execute("SELECT version FROM receiver_migrations").fetchall()
            done = {r["version"] for r in rows}
            for version, statements in migrations(self.dialect):
                if version in done:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO receiver_migrations VALUES (%s, %s)", (version, time.time())
                )

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(BaseException):
                await self._listen_task
            self._listen_task = None
        group_pool, self._group_pool = self._group_pool, None
        if group_pool is not None:
            await group_pool.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await anyio.to_thread.run_sync(pool.close)

    async def ping(self) -> None:
        await self._tx(lambda tx: tx.raw("SELECT 1 AS ok", {}), write=False)

    async def _run(self, fn: Callable[[Tx], T], *, write: bool = True) -> tuple[T, set[str]]:
        def run() -> tuple[T, set[str]]:
            pool = self._pool
            if pool is None:
                raise LedgerUnavailable("the ledger is not open")
            for attempt in range(5):
                try:
                    with pool.connection() as conn, conn.transaction():
                        tx = Tx(conn.cursor(), self.q, self.now())
                        result = fn(tx)
                        for channel in sorted(tx.channels):
                            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, channel))
                        return result, tx.channels
                except RETRYABLE:
                    if attempt == 4:
                        raise
                    time.sleep(0.01 * (attempt + 1))
            raise AssertionError("unreachable")

        # The caller wakes this process at once; other replicas hear through LISTEN (so may
        # this one, a second time: a wake-up is idempotent).
        return await self._thread(run)

    async def _run_group(self, batch: list[Waiting]) -> tuple[list[Any], set[str]]:
        """A group commit as one query from the event loop: BEGIN, a prepared set-based
        statement for the group's pending outcomes and one for its final ones (more only
        when calls touch the same task or delivery key) and COMMIT, sent at once and
        answered at once: one round trip, one wait and a result per statement to read.
        Running each call's ``fn`` on the thread pool took two to five round trips per
        call, each a thread waiting for the GIL back from the busy event loop. A group that
        fails is tried again call by call through ``fn`` (_commit_group)."""
        statements = [statement for _, _, _, statement in batch if statement is not None]
        group_pool = self._group_pool
        if len(statements) < len(batch) or group_pool is None:
            return await super()._run_group(batch)
        with _translated():
            for attempt in range(5):
                try:
                    async with group_pool.connection() as conn:
                        rows = await self._execute_group(conn, statements)
                    break
                except RETRYABLE:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.01 * (attempt + 1))
                except pg_errors.FeatureNotSupported:
                    # "cached plan must not change result type": another replica's migration
                    # changed a table under the prepared statements. _execute_group closed
                    # the connection; a new one prepares them anew.
                    if attempt == 4:
                        raise
        channels: set[str] = set()
        results = [
            statement.finish(row, channels) for statement, row in zip(statements, rows, strict=True)
        ]
        return results, channels

    async def _prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """A new group connection: the statements it runs, prepared (planned once)."""
        for name, (prepared, _, _) in self._group_statements.items():
            await conn.execute(f"PREPARE receiver_{name} AS {prepared}")

    async def _execute_group(
        self, conn: psycopg.AsyncConnection[Any], statements: list[Statement[Any]]
    ) -> list[dict[str, Any]]:
        """One transaction in one simple query; a row per call, in the calls' order, once
        COMMIT has answered. The values are bound here (as literals), the plans are the
        connection's prepared ones."""
        rounds = _rounds(statements)
        cursor = psycopg.AsyncClientCursor(conn, row_factory=dict_row)
        shared = {"now": self.now(), "channel": CHANNEL}
        parts = ["BEGIN"]
        for name, members in rounds:
            _, call, names = self._group_statements[name]
            batch = "[" + ",".join(statements[i].values for i in members) + "]"
            params = {**shared, "batch": batch}
            parts.append(cursor.mogrify(call, [params[n] for n in names]))
        parts.append("COMMIT")
        try:
            await cursor.execute(";\n".join(parts))
        except pg_errors.FeatureNotSupported:
            await conn.close()  # its prepared statements are stale (see _run_group)
            raise
        except BaseException:
            if conn.info.transaction_status in (INTRANS, INERROR):
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
            raise
        rows: list[dict[str, Any] | None] = [None] * len(statements)
        for _, members in rounds:
            cursor.nextset()  # the first result is BEGIN's
            found = await cursor.fetchall()
            if len(found) != len(members):
                raise RuntimeError("a grouped statement returned a row count of its own")
            for index, row in zip(members, found, strict=True):
                rows[index] = row
        cursor.nextset()
        # The server stops at an error, which is raised above; but this is what committed.
        if cursor.statusmessage != "COMMIT":
            raise LedgerUnavailable(f"a group commit ended in {cursor.statusmessage}")
        return [row for row in rows if row is not None]

    async def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)
        if self._listen_task is None:
            self._listen_task = asyncio.create_task(self._listen_loop())

    async def _listen_loop(self) -> None:
        attempt = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    attempt = 0
                    async for note in conn.notifies():
                        await self._wake([note.payload])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection dropped: reconnect, workers still poll
                attempt += 1
                log.warning("LISTEN connection lost: %s", exc)
                await asyncio.sleep(max(0.2, backoff.delay(attempt, 0.5, 10.0)))
