"""SQLite ledger: the embedded default. WAL lets readers run beside the one writer; BEGIN
IMMEDIATE takes the write lock up front so two processes never deadlock upgrading a read."""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from ..errors import ConfigError, LedgerRefused, LedgerUnavailable
from .sql import SqlLedger, Tx, migrations

T = TypeVar("T")
BUSY_TIMEOUT_MS = 15_000


class SqliteLedger(SqlLedger):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._conn: sqlite3.Connection | None = None
        # One thread owns the connection: sqlite3 objects must not be shared across threads.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ledger")

    @classmethod
    def from_url(cls, url: str) -> SqliteLedger:
        """``sqlite:///path/to/file.db``; ``sqlite://`` and ``sqlite:///:memory:`` are in memory."""
        if url in ("sqlite://", "sqlite:///:memory:"):
            return MemoryLedger()
        path = url.removeprefix("sqlite:///")
        if path == url or not path:
            raise ConfigError("ledger_url: sqlite:/// needs a file path")
        return cls(path)

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS receiver_migrations "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM receiver_migrations")}
            for version, statements in migrations(self.dialect):
                if version in done:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO receiver_migrations VALUES (?, ?)", (version, time.time())
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def _call(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            # The caller's context goes along (request id on events), as asyncio.to_thread does.
            return await loop.run_in_executor(self._thread, contextvars.copy_context().run, fn)
        except sqlite3.OperationalError as exc:  # locked, disk I/O, cannot open: an outage
            raise LedgerUnavailable(f"sqlite: {exc}") from exc
        except sqlite3.Error as exc:  # a value it cannot bind or store: the data, not the disk
            raise LedgerRefused(
                f"the ledger cannot record this value ({type(exc).__name__})"
            ) from exc

    async def open(self) -> None:
        def fn() -> None:
            if self._conn is None:
                conn = self._connect()
                self._migrate(conn)
                self._conn = conn

        await self._call(fn)

    async def close(self) -> None:
        def fn() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._call(fn)
        self._thread.shutdown(wait=False)

    async def ping(self) -> None:
        await self._tx(lambda tx: tx.raw("SELECT 1 AS ok", {}), write=False)

    async def _run(self, fn: Callable[[Tx], T], *, write: bool = True) -> tuple[T, set[str]]:
        def run() -> tuple[T, set[str]]:
            conn = self._conn
            if conn is None:
                raise LedgerUnavailable("the ledger is not open")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                tx = Tx(conn.cursor(), self.q, self.now())
                result = fn(tx)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result, tx.channels

        return await self._call(run)


class MemoryLedger(SqliteLedger):
    """An in-memory SQLite database: the same logic with nothing on disk, for tests and
    one-off runs. Gone when the process ends."""

    def __init__(self) -> None:
        super().__init__(":memory:")

    @classmethod
    def from_url(cls, url: str) -> MemoryLedger:
        """``memory://``: nothing to configure."""
        if url != "memory://":
            raise ConfigError(f"ledger_url: {url!r}: memory:// takes no path")
        return cls()
