"""PostgreSQL ledger: what several replicas share.

Transactions run on a thread pool of synchronous psycopg connections (the logic is shared
with SQLite); ``FOR UPDATE SKIP LOCKED`` hands each job to one replica; ``NOTIFY`` inside the
transaction wakes every replica's workers and event streams once it commits. Migrations run
under an advisory lock so replicas starting together apply them once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from .. import backoff
from ..errors import LedgerRefused, LedgerUnavailable
from .base import Listener
from .sql import SqlLedger, Statement, Tx, _Waiting, migrations

T = TypeVar("T")
log = logging.getLogger(__name__)
CHANNEL = "receiver"
MIGRATION_LOCK = 0x7265636569766572  # "receiver"
RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


class PostgresLedger(SqlLedger):
    dialect = "postgres"
    pipelined = True

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        super().__init__()
        self.url = url.replace("postgres://", "postgresql://", 1)
        self.pool_size = pool_size
        # Group commits in flight at once: most of the pool, two connections left for the
        # workers, the reconciler and the notifier (8 of 10 gave 0.58 x SQLite's callbacks/s
        # against 0.48 x with 2 or 4, in the same runs).
        self.group_flushers = max(1, pool_size - 2)
        self._pool: ConnectionPool[Any] | None = None
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
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self._limiter)
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise LedgerUnavailable("postgresql: " + " ".join(str(exc).split())) from exc
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
            # A value it cannot store (NUL in text, out of range): the data, not an outage.
            raise LedgerRefused(
                f"the ledger cannot record this value ({type(exc).__name__})"
            ) from exc

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

    async def _run_group(self, batch: list[_Waiting]) -> tuple[list[Any], set[str]]:
        """A group commit in one pipeline: BEGIN and every call's statement go out together
        and come back together, then the notifications and COMMIT: two round trips for the
        group, where running each call's ``fn`` took two to five per call (each a thread
        waiting for the GIL back). The statements are prepared (server-side binding, once per
        connection), so the server plans them once."""
        statements = [statement for _, _, _, statement in batch if statement is not None]
        if len(statements) < len(batch):
            return await super()._run_group(batch)

        def run() -> tuple[list[Any], set[str]]:
            pool = self._pool
            if pool is None:
                raise LedgerUnavailable("the ledger is not open")
            for attempt in range(5):
                try:
                    with pool.connection() as conn:
                        return self._pipeline(conn, batch, statements)
                except RETRYABLE:
                    if attempt == 4:
                        raise
                    time.sleep(0.01 * (attempt + 1))
            raise AssertionError("unreachable")

        return await self._thread(run)

    def _pipeline(
        self, conn: psycopg.Connection[Any], batch: list[_Waiting], statements: list[Statement[Any]]
    ) -> tuple[list[Any], set[str]]:
        # BEGIN and COMMIT are sent as statements, in autocommit mode: psycopg's own
        # transaction handling waits for a Sync after BEGIN and before COMMIT in a pipeline.
        conn.autocommit = True
        try:
            try:
                with conn.pipeline():
                    conn.execute("BEGIN")
                    tx = Tx(conn.cursor(), self.q, self.now())
                    cursors = []
                    for statement in statements:
                        cursor = psycopg.Cursor(conn, row_factory=dict_row)
                        params = {"now": tx.now, **statement.params}
                        cursor.execute(self.q[statement.name], params, prepare=True)
                        cursors.append(cursor)
                    results = []
                    for (context, _, _, _), statement, cursor in zip(
                        batch, statements, cursors, strict=True
                    ):
                        row = cursor.fetchone()  # the first one waits for them all
                        if row is None:
                            raise RuntimeError(f"{statement.name} returned no row")
                        results.append(context.run(statement.finish, row, tx))
                    for channel in sorted(tx.channels):
                        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, channel))
                    commit = conn.execute("COMMIT")
                # COMMIT of a transaction a statement aborted answers ROLLBACK, not an error.
                if commit.statusmessage != "COMMIT":
                    raise LedgerUnavailable(f"group commit ended in {commit.statusmessage}")
                return results, tx.channels
            except BaseException:
                if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
                raise
        finally:
            conn.autocommit = False

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
