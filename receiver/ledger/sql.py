"""The ledger logic both SQL backends share; each backend only says how to run a transaction.

Statements live in ``queries.sql`` (``queries_<dialect>.sql`` for one dialect's own) and
schema migrations in ``schema/<dialect>/NNN_*.sql``. The logic is synchronous and runs in
worker threads: SQLite has no async driver, and one code path for both dialects is worth more
than async I/O for a handful of small statements. The one exception is the hot path, callbacks
(``record_outcome``): on PostgreSQL a group commit of them is one query of prepared statements
sent from the event loop (``Statement``), and the same contract tests hold both versions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import json
import re
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, Protocol, TypeVar

from .. import metrics, tracing
from ..errors import LedgerRefused, LedgerUnavailable, NotFound
from ..log import REQUEST_ID
from ..models import (
    Event,
    Job,
    NewTask,
    Notification,
    Outcome,
    OutcomeStatus,
    Reason,
    RecordResult,
    Status,
    StoredObject,
    Task,
    TaskFilter,
    new_id,
)
from .base import Backlog, Ledger, Listener

T = TypeVar("T")
Row = dict[str, Any]
# A task not marked submitted this long after creation lost its submitter (a crash between
# the ledger commit and the provider's answer): the reconciler then submits it again. Longer
# than any provider request may take, so a live submitter is never doubled.
SUBMIT_LEASE_SECONDS = 90.0


def load_queries(dialect: str) -> dict[str, str]:
    """Parse ``-- name: x`` blocks and adapt placeholders to the dialect's driver: those of
    ``queries.sql`` and, where the dialect has one, of ``queries_<dialect>.sql``."""
    folder = resources.files(__package__)
    text = folder.joinpath("queries.sql").read_text()
    own = folder.joinpath(f"queries_{dialect}.sql")
    if own.is_file():
        text += "\n" + own.read_text()
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in [*text.splitlines(), "-- name: _end"]:
        match = re.match(r"--\s*name:\s*(\w+)", line)
        if match:
            if name is not None:
                queries[name] = "\n".join(lines).strip()
            name, lines = match.group(1), []
        elif name is not None and not line.startswith("--"):
            lines.append(line)
    queries.pop("_end", None)
    lock = "FOR UPDATE SKIP LOCKED" if dialect == "postgres" else ""
    out = {}
    for key, sql in queries.items():
        sql = sql.replace("{skip_locked}", lock)
        if dialect == "postgres":
            sql = re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql)
        out[key] = sql
    return out


def migrations(dialect: str) -> list[tuple[int, list[str]]]:
    """(version, statements) for every schema file, in order."""
    folder = resources.files(__package__).joinpath("schema", dialect)
    found = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        version = int(entry.name.split("_", 1)[0])
        body = "\n".join(
            line for line in entry.read_text().splitlines() if not line.lstrip().startswith("--")
        )
        found.append((version, split_statements(body)))
    return sorted(found)


def operation(fn: Callable[..., Any]) -> str:
    """The ledger method a transaction function was written in (``create_task`` for the
    closure inside ``SqlLedger.create_task``): a label from the code, never from data."""
    head = getattr(fn, "__qualname__", "").split(".<locals>", 1)[0]
    return head.rsplit(".", 1)[-1] or "other"


_DB_SYSTEM = {"sqlite": "sqlite", "postgres": "postgresql"}


@contextlib.contextmanager
def observed(dialect: str, fn: Callable[..., Any]) -> Iterator[None]:
    """Time one transaction for ``receiver_ledger_transaction_seconds`` and give it a span."""
    op = operation(fn)
    outcome = "ok"
    start = time.perf_counter()
    try:
        with tracing.child_span(
            f"ledger {op}", {"db.system": _DB_SYSTEM.get(dialect, dialect), "db.operation.name": op}
        ):
            yield
    except LedgerUnavailable:
        outcome = "unavailable"
        raise
    except BaseException:
        outcome = "error"
        raise
    finally:
        metrics.LEDGER_TX.labels(dialect, op, outcome).observe(time.perf_counter() - start)


_TRIGGER = re.compile(r"\bCREATE\s+(?:TEMP(?:ORARY)?\s+)?TRIGGER\b", re.I)
_END = re.compile(r"\s*END\b", re.I)


def split_statements(body: str) -> list[str]:
    """Split a schema file on ``;``, keeping each ``CREATE TRIGGER … BEGIN …; END`` whole
    (its body holds semicolons of its own). Other statements split exactly as before."""
    statements: list[str] = []
    trigger: str | None = None
    for piece in body.split(";"):
        if trigger is not None:
            trigger += ";" + piece
            if _END.match(piece):  # the piece after the body's last ';' starts with END
                statements.append(trigger.strip())
                trigger = None
            continue
        if _TRIGGER.search(piece):
            trigger = piece
        elif piece.strip():
            statements.append(piece.strip())
    if trigger is not None:
        raise ValueError("a CREATE TRIGGER in a schema file has no END")
    return statements


class Cursor(Protocol):
    """The part of a DB-API cursor the logic uses."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Any = ...) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Tx:
    """One transaction: named statements in, dict rows out, and the channels to wake."""

    def __init__(self, cursor: Cursor, queries: dict[str, str], now: float) -> None:
        self.cursor = cursor
        self.queries = queries
        self.now = now
        self.channels: set[str] = set()

    def _run(self, name: str, params: dict[str, Any]) -> Cursor:
        self.cursor.execute(self.queries[name], {"now": self.now, **params})
        return self.cursor

    def all(self, name: str, **params: Any) -> list[Row]:
        return [dict(row) for row in self._run(name, params).fetchall()]

    def one(self, name: str, **params: Any) -> Row | None:
        rows = self.all(name, **params)
        return rows[0] if rows else None

    def run(self, name: str, **params: Any) -> int:
        return self._run(name, params).rowcount

    def raw(self, sql: str, params: dict[str, Any]) -> list[Row]:
        self.cursor.execute(sql, params)
        return [dict(row) for row in self.cursor.fetchall()]

    def changed(self, channel: str) -> None:
        self.channels.add(channel)


def _task(row: Row) -> Task:
    return Task(
        id=row["id"],
        provider=row["provider"],
        model=row["model"],
        prompt=row["prompt"],
        params=json.loads(row["params"]),
        destination=row["destination"],
        metadata=json.loads(row["metadata"]),
        notify_url=row["notify_url"],
        status=Status(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        provider_task_id=row["provider_task_id"],
        failure_reason=row["failure_reason"],
        failure_message=row["failure_message"],
        outcome=Outcome.from_json(json.loads(row["outcome"])) if row["outcome"] else None,
        objects=[StoredObject.from_json(o) for o in json.loads(row["objects"] or "[]")],
        submitted_at=row["submitted_at"],
        completed_at=row["completed_at"],
        archived_at=row["archived_at"],
        next_poll_at=row["next_poll_at"],
        poll_attempts=row["poll_attempts"],
        idempotency_key=row["idempotency_key"],
        traceparent=row.get("traceparent"),
        provider_state=json.loads(row["provider_state"]) if row.get("provider_state") else {},
    )


GROUP_MAX = 64  # calls sharing one group commit at most
PURGE_BATCH = 5000  # rows (events: tasks) deleted per retention transaction


@dataclass(frozen=True)
class Statement(Generic[T]):
    """A grouped call as one row of a set-based statement that decides everything the
    call's ``fn`` would, for a backend that sends a whole group at once (PostgreSQL): the
    statement's name, the call's input as a JSON object (made in the caller's context), what
    it touches (calls sharing any of these go to separate statements, in order, so each
    sees what the one before it did), and how its result row becomes the call's result,
    adding the channels to wake to the set it is given."""

    name: str
    values: str
    touches: tuple[str, ...]
    finish: Callable[[Row, set[str]], T]


Waiting = tuple[
    contextvars.Context, Callable[["Tx"], Any], "asyncio.Future[Any]", "Statement[Any] | None"
]


def _within(context: contextvars.Context, fn: Callable[[Tx], T]) -> Callable[[Tx], T]:
    def run(tx: Tx) -> T:
        return context.run(fn, tx)

    return run


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a group member's error as seen, for a caller that went away before it came."""
    if not future.cancelled():
        future.exception()


_FAILURE = {
    OutcomeStatus.MODERATED: Reason.MODERATED,
    OutcomeStatus.UNPARSED: Reason.UNPARSED_RESPONSE,
}


def _verdict(outcome: Outcome) -> tuple[str, Reason | None, str | None]:
    """What an outcome does to a submitted task: ``none`` (pending), ``complete``, or
    ``fail`` with the reason and message recorded."""
    if not outcome.final:
        return "none", None, None
    if outcome.status is OutcomeStatus.SUCCEEDED:
        if outcome.images:
            return "complete", None, None
        return "fail", Reason.PROVIDER_ERROR, "the provider reported success without images"
    reason = _FAILURE.get(outcome.status, Reason.PROVIDER_ERROR)
    return "fail", reason, outcome.error_message or outcome.error_code or reason.value


def _event_data(data: dict[str, Any]) -> str:
    """An event's data as stored, with the HTTP request that caused it, for the operator."""
    request_id = REQUEST_ID.get()
    if request_id is not None:
        data = {**data, "request_id": request_id}
    return _dumps(data)


def _dumps(value: Any) -> str:
    """Strict: a NaN or Infinity would be written as invalid JSON that PostgreSQL refuses and
    every later reader chokes on."""
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (ValueError, TypeError) as exc:
        raise LedgerRefused(f"cannot record a value that is not valid JSON: {exc}") from None


class SqlLedger(Ledger):
    dialect: str
    # Group commits in flight at once: SQLite has one writer; PostgreSQL overlaps several so
    # one group's round trips do not hold up the next.
    group_flushers = 1
    # Whether grouped calls also come as a ``Statement`` (see ``_run_group``).
    grouped_statements = False

    def __init__(self) -> None:
        self.q = load_queries(self.dialect)
        self._listeners: list[Listener] = []
        self._group: list[Waiting] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._next_flusher: asyncio.Task[None] | None = None  # started, has taken nothing yet

    @abstractmethod
    async def _run(self, fn: Callable[[Tx], T], *, write: bool = True) -> tuple[T, set[str]]:
        """Run ``fn`` in one transaction and commit: its result and the channels to wake."""

    async def _tx(self, fn: Callable[[Tx], T], *, write: bool = True) -> T:
        """Run ``fn`` in one transaction, commit, then wake listeners on ``tx.channels``."""
        with observed(self.dialect, fn):
            result, channels = await self._run(fn, write=write)
        await self._wake(channels)
        return result

    async def _grouped(self, fn: Callable[[Tx], T], statement: Statement[T] | None = None) -> T:
        """Group commit: like ``_tx``, but calls that arrive while a transaction is being
        committed share the next one (each ``fn`` in its caller's context), and every caller
        returns only after that commit. One commit, one thread hop and, on PostgreSQL, one
        WAL flush per group instead of per call. If the shared transaction fails, each call
        is retried in a transaction of its own, so one bad call cannot fail the others.
        ``statement`` is the same call as one statement, for a backend that sends those."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self._group.append((contextvars.copy_context(), fn, future, statement))
        waiting = self._next_flusher
        # A flusher that has not run yet takes this call too: another would find nothing.
        if len(self._flushers) < self.group_flushers and (waiting is None or waiting.done()):
            self._next_flusher = asyncio.create_task(self._flush_groups())
            self._flushers.add(self._next_flusher)
        with observed(self.dialect, fn):
            # Shielded: a caller that goes away does not take the others' commit with it.
            result: T = await asyncio.shield(future)
        return result

    async def _flush_groups(self) -> None:
        me = asyncio.current_task()
        if self._next_flusher is me:
            self._next_flusher = None
        try:
            while self._group:
                batch, self._group = self._group[:GROUP_MAX], self._group[GROUP_MAX:]
                try:
                    await self._commit_group(batch)
                except BaseException as exc:
                    for _, _, future, _ in batch:
                        if not future.done():
                            future.set_exception(
                                LedgerUnavailable(f"group commit stopped: {exc!r}")
                            )
                    raise
        finally:
            # At once, with no await since the queue was last seen empty: a call that comes
            # after this starts a flusher of its own. (A done callback would run later, and
            # a call queued in between would wait for the next caller.)
            self._flushers.discard(me)  # type: ignore[arg-type]

    async def _run_group(self, batch: list[Waiting]) -> tuple[list[Any], set[str]]:
        """Run a group's calls in one transaction and commit: their results and the channels
        to wake. Here each ``fn`` in turn; a backend may send the statements instead."""

        def together(tx: Tx) -> list[Any]:
            return [context.run(fn, tx) for context, fn, _, _ in batch]

        return await self._run(together)

    async def _commit_group(self, batch: list[Waiting]) -> None:
        try:
            results, channels = await self._run_group(batch)
        except Exception as exc:
            if len(batch) == 1:
                batch[0][2].set_exception(exc)
                return
            for context, fn, future, _ in batch:  # find the one that failed: each on its own
                try:
                    result, alone = await self._run(_within(context, fn))
                except Exception as error:
                    future.set_exception(error)
                    continue
                await self._wake(alone)
                future.set_result(result)
            return
        await self._wake(channels)
        for (_, _, future, _), result in zip(batch, results, strict=True):
            future.set_result(result)

    async def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def _wake(self, channels: Iterable[str]) -> None:
        for channel in channels:
            for listener in self._listeners:
                result = listener(channel)
                if result is not None:
                    await result

    # --- helpers used inside a transaction -------------------------------------------------

    def _event(self, tx: Tx, task_id: str, status: str, data: dict[str, Any]) -> None:
        tx.run("insert_event", task_id=task_id, status=status, data=_event_data(data))
        tx.changed(f"task:{task_id}")

    def _notification(self, tx: Tx, task_id: str, event: str) -> None:
        if tx.one("insert_notification", nid=new_id("msg"), task_id=task_id, event=event):
            tx.changed("notify")

    def _enqueue(self, tx: Tx, task_id: str, deadline: float | None) -> None:
        tx.run("insert_job", task_id=task_id, deadline=deadline)
        tx.changed("jobs")

    def _fail(
        self, tx: Tx, task_id: str, reason: Reason, message: str, outcome: Outcome | None = None
    ) -> Task | None:
        row = tx.one(
            "fail_task",
            id=task_id,
            reason=reason.value,
            message=message,
            outcome=_dumps(outcome.to_json()) if outcome else None,
        )
        if row is None:
            return None
        tx.run("kill_queued_jobs", task_id=task_id, error=message)
        self._event(tx, task_id, "failed", {"reason": reason.value, "message": message})
        self._notification(tx, task_id, "task.failed")
        return _task(row)

    def _get(self, tx: Tx, task_id: str) -> Task | None:
        row = tx.one("get_task", id=task_id)
        return _task(row) if row else None

    # --- tasks -------------------------------------------------------------------------------

    async def create_task(
        self, new: NewTask, *, idempotency_key: str | None = None
    ) -> tuple[Task, bool]:
        def fn(tx: Tx) -> tuple[Task, bool]:
            inserted = tx.one(
                "insert_task",
                id=new.id,
                provider=new.provider,
                model=new.model,
                prompt=new.prompt,
                params=_dumps(new.params),
                destination=new.destination,
                metadata=_dumps(new.metadata),
                notify_url=new.notify_url,
                idempotency_key=idempotency_key,
                submit_by=tx.now + SUBMIT_LEASE_SECONDS,
                traceparent=new.traceparent,
            )
            if inserted is None:
                row = tx.one("task_by_key", key=idempotency_key)
                if row is None:  # the id itself collided: vanishingly rare, never silent
                    raise RuntimeError(f"task id {new.id} already exists")
                return _task(row), False
            self._event(tx, new.id, "submitted", {"provider": new.provider})
            task = self._get(tx, new.id)
            assert task is not None
            return task, True

        return await self._tx(fn)

    async def mark_submitted(
        self,
        task_id: str,
        provider_task_id: str | None,
        *,
        next_poll_at: float | None,
        provider_state: dict[str, Any] | None = None,
    ) -> Task:
        def fn(tx: Tx) -> Task:
            row = tx.one(
                "mark_submitted",
                id=task_id,
                provider_task_id=provider_task_id,
                next_poll_at=next_poll_at,
                provider_state=_dumps(provider_state) if provider_state else None,
            )
            if row is None:
                raise NotFound(f"no task {task_id}")
            return _task(row)

        return await self._tx(fn)

    async def get_task(self, task_id: str) -> Task | None:
        def fn(tx: Tx) -> Task | None:
            task = self._get(tx, task_id)
            if task is not None and task.status is Status.COMPLETED:
                job = tx.one("job_of_task", id=task_id)
                if job is not None and job["state"] in ("queued", "leased"):
                    task.attempts = int(job["attempts"])
                    task.last_error = job["last_error"]
                    task.next_attempt_at = job["next_attempt_at"] if job["last_error"] else None
            return task

        return await self._tx(fn, write=False)

    async def find_task(self, provider: str, provider_task_id: str) -> Task | None:
        def fn(tx: Tx) -> Task | None:
            row = tx.one("find_task", provider=provider, provider_task_id=provider_task_id)
            return _task(row) if row else None

        return await self._tx(fn, write=False)

    async def list_tasks(
        self,
        *,
        status: Status | None = None,
        provider: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Task], str | None]:
        where: list[str] = []
        params: dict[str, Any] = {}
        mark = "%({})s" if self.dialect == "postgres" else ":{}"
        for column, op, value in (
            ("status", "=", status.value if status else None),
            ("provider", "=", provider),
            ("created_at", ">=", created_after),
            ("created_at", "<", created_before),
            ("id", "<", cursor),
        ):
            if value is not None:
                name = f"p{len(params)}"
                where.append(f"{column} {op} {mark.format(name)}")
                params[name] = value
        sql = "SELECT * FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY id DESC LIMIT {int(limit) + 1}"

        def fn(tx: Tx) -> list[Row]:
            return tx.raw(sql, params)

        rows = await self._tx(fn, write=False)
        tasks = [_task(r) for r in rows[:limit]]
        more = len(rows) > limit
        return tasks, (tasks[-1].id if more and tasks else None)

    async def record_outcome(
        self,
        task_id: str,
        outcome: Outcome,
        *,
        provider: str,
        delivery_key: str | None,
        deadline: float | None,
        provider_task_id: str | None = None,
    ) -> RecordResult:
        action, reason, message = _verdict(outcome)

        def fn(tx: Tx) -> RecordResult:
            task = self._get(tx, task_id)
            if task is None:
                return RecordResult(duplicate=False, task=None)
            known = task.provider_task_id
            if provider_task_id is not None and known is not None and known != provider_task_id:
                return RecordResult(duplicate=False, task=task, mismatch=True)
            if delivery_key is not None:
                fresh = tx.one(
                    "insert_delivery", provider=provider, key=delivery_key, task_id=task_id
                )
                if fresh is None:
                    return RecordResult(duplicate=True, task=task)
            if action == "none" or task.status is not Status.SUBMITTED:
                return RecordResult(duplicate=False, task=task)
            if action == "complete":
                row = tx.one(
                    "complete_task",
                    id=task_id,
                    outcome=_dumps(outcome.to_json()),
                    provider_task_id=outcome.provider_task_id,
                )
                if row is None:
                    return RecordResult(duplicate=False, task=self._get(tx, task_id))
                for index, image in enumerate(outcome.images):
                    if image.inline is not None:
                        tx.run("insert_inline", task_id=task_id, idx=index, data=image.inline)
                self._event(tx, task_id, "completed", {"images": len(outcome.images)})
                self._enqueue(tx, task_id, deadline)
                return RecordResult(duplicate=False, task=_task(row), job_enqueued=True)
            assert reason is not None and message is not None
            if outcome.raw is not None and outcome.status is not OutcomeStatus.SUCCEEDED:
                tx.run(
                    "insert_raw",
                    task_id=task_id,
                    content_type=outcome.raw_content_type,
                    data=outcome.raw,
                )
            failed = self._fail(tx, task_id, reason, message, outcome)
            return RecordResult(duplicate=False, task=failed or self._get(tx, task_id))

        statement = None
        if self.grouped_statements:
            statement = self._outcome_statement(
                task_id,
                outcome,
                provider=provider,
                delivery_key=delivery_key,
                deadline=deadline,
                provider_task_id=provider_task_id,
            )
        return await self._grouped(fn, statement)

    def _outcome_statement(
        self,
        task_id: str,
        outcome: Outcome,
        *,
        provider: str,
        delivery_key: str | None,
        deadline: float | None,
        provider_task_id: str | None,
    ) -> Statement[RecordResult] | None:
        """``record_outcome`` as a row of ``record_outcomes`` (``record_deliveries`` for a
        pending outcome; queries_postgres.sql), which decides as ``fn`` above does. What
        Python computes for it (JSON, an event's data with its request id, a notification
        id) is made here, in the caller's context. None when the outcome cannot be stored:
        ``fn`` then says so, and only where it would store it."""
        action, reason, message = _verdict(outcome)
        values: dict[str, Any] = {
            "id": task_id,
            "provider": provider,
            "key": delivery_key,
            "provider_task_id": provider_task_id,
            "action": action,
        }
        try:
            if action != "none":
                if action == "complete":
                    event = _event_data({"images": len(outcome.images)})
                    inline = [
                        {"idx": index, "data": base64.b64encode(image.inline).decode()}
                        for index, image in enumerate(outcome.images)
                        if image.inline is not None
                    ]
                else:
                    assert reason is not None
                    event = _event_data({"reason": reason.value, "message": message})
                    inline = []
                raw = (
                    outcome.raw
                    if action == "fail" and outcome.status is not OutcomeStatus.SUCCEEDED
                    else None
                )
                values |= {
                    "outcome": _dumps(outcome.to_json()),
                    "outcome_task_id": outcome.provider_task_id,
                    "reason": reason.value if reason else None,
                    "message": message,
                    "raw": base64.b64encode(raw).decode() if raw is not None else None,
                    "raw_content_type": outcome.raw_content_type,
                    "inline": inline,
                    "event": event,
                    "deadline": deadline,
                    "nid": new_id("msg") if action == "fail" else None,
                }
            encoded = _dumps(values)
        except LedgerRefused:
            return None

        def finish(row: Row, channels: set[str]) -> RecordResult:
            if not row["found"]:
                return RecordResult(duplicate=False, task=None)
            task = _task(row)
            if not row["allowed"]:
                return RecordResult(duplicate=False, task=task, mismatch=True)
            if delivery_key is not None and not row["fresh"]:
                return RecordResult(duplicate=True, task=task)
            if not row["changed"]:  # pending, or the task is no longer submitted
                return RecordResult(duplicate=False, task=task)
            channels.add(f"task:{task_id}")
            if action == "complete":
                channels.add("jobs")
                return RecordResult(duplicate=False, task=task, job_enqueued=True)
            if row["notified"]:
                channels.add("notify")
            return RecordResult(duplicate=False, task=task)

        touches = (
            (f"task:{task_id}",)
            if delivery_key is None
            else (f"task:{task_id}", f"delivery:{provider}:{delivery_key}")
        )
        name = "record_deliveries" if action == "none" else "record_outcomes"
        return Statement(name, encoded, touches, finish)

    async def fail_task(self, task_id: str, reason: Reason, message: str) -> Task | None:
        def fn(tx: Tx) -> Task | None:
            return self._fail(tx, task_id, reason, message) or self._get(tx, task_id)

        return await self._tx(fn)

    async def requeue_task(self, task_id: str, outcome: Outcome, deadline: float | None) -> Task:
        def fn(tx: Tx) -> Task:
            row = tx.one("requeue_task", id=task_id, outcome=_dumps(outcome.to_json()))
            if row is None:
                raise NotFound(f"no task {task_id}")
            tx.run("kill_queued_jobs", task_id=task_id, error="replaced by a replay")
            for index, image in enumerate(outcome.images):
                if image.inline is not None:
                    tx.run("insert_inline", task_id=task_id, idx=index, data=image.inline)
            self._event(tx, task_id, "completed", {"images": len(outcome.images), "replay": True})
            self._enqueue(tx, task_id, deadline)
            return _task(row)

        return await self._tx(fn)

    # --- archive jobs -----------------------------------------------------------------------

    async def claim_jobs(self, owner: str, limit: int, lease_seconds: float) -> list[Job]:
        def fn(tx: Tx) -> list[Job]:
            rows = tx.all("claim_jobs", owner=owner, until=tx.now + lease_seconds, limit=limit)
            return sorted((Job(**r) for r in rows), key=lambda j: j.id)

        return await self._tx(fn)

    async def extend_lease(self, job_id: int, owner: str, lease_seconds: float) -> bool:
        def fn(tx: Tx) -> bool:
            return (
                tx.one("extend_lease", id=job_id, owner=owner, until=tx.now + lease_seconds)
                is not None
            )

        return await self._tx(fn)

    async def finish_job(self, job_id: int, owner: str, objects: list[StoredObject]) -> Task | None:
        def fn(tx: Tx) -> Task | None:
            ended = tx.one("end_job", id=job_id, owner=owner, state="done", error=None)
            if ended is None:
                return None
            task_id = ended["task_id"]
            row = tx.one("archive_task", id=task_id, objects=_dumps([o.to_json() for o in objects]))
            if row is None:
                return self._get(tx, task_id)
            self._event(tx, task_id, "archived", {"objects": [o.uri for o in objects]})
            self._notification(tx, task_id, "task.archived")
            return _task(row)

        return await self._tx(fn)

    async def retry_job(self, job_id: int, owner: str, error: str, delay: float) -> None:
        def fn(tx: Tx) -> None:
            tx.run("retry_job", id=job_id, owner=owner, error=error, due=tx.now + delay)
            tx.changed("jobs")

        await self._tx(fn)

    async def fail_job(self, job_id: int, owner: str, reason: Reason, message: str) -> Task | None:
        def fn(tx: Tx) -> Task | None:
            ended = tx.one("end_job", id=job_id, owner=owner, state="dead", error=message)
            if ended is None:
                return None
            return self._fail(tx, ended["task_id"], reason, message) or self._get(
                tx, ended["task_id"]
            )

        return await self._tx(fn)

    async def release_jobs(self, owner: str) -> int:
        def fn(tx: Tx) -> int:
            count = tx.run("release_jobs", owner=owner)
            if count:
                tx.changed("jobs")
            return count

        return await self._tx(fn)

    async def inline_image(self, task_id: str, index: int) -> bytes | None:
        def fn(tx: Tx) -> bytes | None:
            row = tx.one("inline_image", task_id=task_id, idx=index)
            return bytes(row["data"]) if row else None

        return await self._tx(fn, write=False)

    async def raw_response(self, task_id: str) -> tuple[bytes, str | None] | None:
        def fn(tx: Tx) -> tuple[bytes, str | None] | None:
            row = tx.one("raw_response", task_id=task_id)
            return (bytes(row["data"]), row["content_type"]) if row else None

        return await self._tx(fn, write=False)

    async def queue_stats(self) -> tuple[int, float]:
        def fn(tx: Tx) -> tuple[int, float]:
            row = tx.one("queue_depth") or {}
            oldest = row.get("oldest")
            return int(row.get("depth") or 0), (max(0.0, tx.now - oldest) if oldest else 0.0)

        return await self._tx(fn, write=False)

    async def backlog(self) -> Backlog:
        def fn(tx: Tx) -> Backlog:
            jobs: dict[str, int] = {}
            oldest_job: dict[str, float] = {}
            due: list[float] = []
            for r in tx.all("backlog_jobs"):
                jobs[r["state"]] = jobs.get(r["state"], 0) + int(r["n"])
                age = max(0.0, tx.now - float(r["oldest"]))
                oldest_job[r["provider"]] = max(oldest_job.get(r["provider"], 0.0), age)
                if r["due"] is not None:
                    due.append(float(r["due"]))
            notes = {r["state"]: r for r in tx.all("backlog_notifications")}
            submitted = {
                r["provider"]: (int(r["n"]), max(0.0, tx.now - float(r["oldest"])))
                for r in tx.all("backlog_submitted")
            }
            oldest_note = min((float(r["oldest"]) for r in notes.values()), default=None)
            return Backlog(
                jobs=jobs,
                oldest_due_job=max(0.0, tx.now - min(due)) if due else 0.0,
                oldest_job=oldest_job,
                notifications={state: int(r["n"]) for state, r in notes.items()},
                oldest_notification=(
                    max(0.0, tx.now - oldest_note) if oldest_note is not None else 0.0
                ),
                submitted=submitted,
            )

        return await self._tx(fn, write=False)

    # --- events, polling, notifications ----------------------------------------------------

    async def events(self, task_id: str, after_seq: int = 0) -> list[Event]:
        # A client's cursor (Last-Event-ID, ?after=) beyond a 64-bit column means "nothing new".
        after_seq = max(0, min(after_seq, 2**63 - 1))

        def fn(tx: Tx) -> list[Event]:
            return [
                Event(r["task_id"], r["seq"], r["status"], r["at"], json.loads(r["data"]))
                for r in tx.all("events", task_id=task_id, after=after_seq)
            ]

        return await self._tx(fn, write=False)

    async def tasks_to_poll(self, limit: int) -> list[Task]:
        def fn(tx: Tx) -> list[Task]:
            return [_task(r) for r in tx.all("tasks_to_poll", limit=limit)]

        return await self._tx(fn, write=False)

    async def claim_submission(self, task_id: str, lease_seconds: float) -> bool:
        def fn(tx: Tx) -> bool:
            return tx.one("claim_submission", id=task_id, until=tx.now + lease_seconds) is not None

        return await self._tx(fn)

    async def schedule_poll(self, task_id: str, next_poll_at: float | None) -> None:
        await self._tx(lambda tx: tx.run("schedule_poll", id=task_id, next_poll_at=next_poll_at))

    async def claim_notifications(
        self, owner: str, limit: int, lease_seconds: float
    ) -> list[Notification]:
        def fn(tx: Tx) -> list[Notification]:
            rows = tx.all(
                "claim_notifications", owner=owner, until=tx.now + lease_seconds, limit=limit
            )
            return [Notification(**r) for r in rows]

        return await self._tx(fn)

    async def finish_notification(self, notification_id: str, owner: str) -> None:
        await self._tx(lambda tx: tx.run("finish_notification", id=notification_id, owner=owner))

    async def retry_notification(
        self, notification_id: str, owner: str, error: str, delay: float, *, give_up: bool
    ) -> None:
        def fn(tx: Tx) -> None:
            tx.run(
                "retry_notification",
                id=notification_id,
                owner=owner,
                error=error,
                due=tx.now + delay,
                state="dead" if give_up else "queued",
            )

        await self._tx(fn)

    async def redeliver(self, task_id: str) -> Notification | None:
        def fn(tx: Tx) -> Notification | None:
            task = self._get(tx, task_id)
            if task is None or not task.status.final or not task.notify_url:
                return None
            event = "task.archived" if task.status is Status.ARCHIVED else "task.failed"
            row = tx.one("insert_notification", nid=new_id("msg"), task_id=task_id, event=event)
            if row is None:
                return None
            tx.changed("notify")
            return Notification(lease_owner="", **row)

        return await self._tx(fn)

    async def purge_deliveries(self, older_than: float) -> int:
        return await self._tx(lambda tx: tx.run("purge_deliveries", before=older_than))

    async def purge_history(
        self, *, jobs_before: float, events_before: float, events_after: float = 0.0
    ) -> dict[str, int]:
        counts = {"jobs": 0, "notifications": 0, "events": 0}
        plan: list[tuple[str, str, dict[str, float]]] = [
            ("jobs", "purge_jobs", {"before": jobs_before}),
            ("notifications", "purge_notifications", {"before": jobs_before}),
            ("events", "purge_events", {"before": events_before, "after": events_after}),
        ]

        def batch(query: str, params: dict[str, float]) -> Callable[[Tx], int]:
            def step(tx: Tx) -> int:
                return tx.run(query, batch=PURGE_BATCH, **params)

            return step

        for table, query, params in plan:
            # Small transactions, so intake and workers never wait behind a long delete.
            while True:
                done = await self._tx(batch(query, params))
                counts[table] += done
                if done == 0 or (table != "events" and done < PURGE_BATCH):
                    break
        return counts

    # --- the console ---------------------------------------------------------------------------

    def _filter_sql(self, where: TaskFilter) -> tuple[list[str], dict[str, Any]]:
        """SQL conditions and parameters for ``where`` in this dialect."""
        mark = "%({})s" if self.dialect == "postgres" else ":{}"
        clauses: list[str] = []
        params: dict[str, Any] = {}

        def add(sql: str, value: Any) -> None:
            name = f"f{len(params)}"
            clauses.append(sql.format(mark.format(name)))
            params[name] = value

        for column, op, value in (
            ("status", "=", where.status.value if where.status else None),
            ("provider", "=", where.provider),
            ("model", "=", where.model),
            ("destination", "=", where.destination),
            ("failure_reason", "=", where.reason),
            ("created_at", ">=", where.created_after),
            ("created_at", "<", where.created_before),
            ("updated_at", "<=", where.updated_before),
        ):
            if value is not None:
                add(f"{column} {op} {{}}", value)
        words = search_words(where.text)
        if words and self.dialect == "postgres":
            add(
                "to_tsvector('simple', translate(prompt, '<>', '  ')) @@ to_tsquery('simple', {})",
                " & ".join(f"{w}:*" for w in words),
            )
        elif words:
            add(
                "id IN (SELECT task_id FROM tasks_fts WHERE tasks_fts MATCH {})",
                " ".join(f'"{w}"*' for w in words),
            )
        return clauses, params

    async def search_tasks(
        self, where: TaskFilter, *, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[Task], str | None]:
        clauses, params = self._filter_sql(where)
        if cursor is not None:
            clauses.append("id < " + ("%(cursor)s" if self.dialect == "postgres" else ":cursor"))
            params["cursor"] = cursor
        sql = "SELECT * FROM tasks"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += f" ORDER BY id DESC LIMIT {int(limit) + 1}"
        rows = await self._tx(lambda tx: tx.raw(sql, params), write=False)
        tasks = [_task(r) for r in rows[:limit]]
        return tasks, (tasks[-1].id if len(rows) > limit and tasks else None)

    async def count_tasks(self, where: TaskFilter) -> int:
        clauses, params = self._filter_sql(where)
        sql = "SELECT COUNT(*) AS n FROM tasks"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        rows = await self._tx(lambda tx: tx.raw(sql, params), write=False)
        return int(rows[0]["n"])

    async def task_ids(self, where: TaskFilter, limit: int) -> list[str]:
        clauses, params = self._filter_sql(where)
        sql = "SELECT id FROM tasks"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += f" ORDER BY id LIMIT {int(limit)}"
        rows = await self._tx(lambda tx: tx.raw(sql, params), write=False)
        return [str(r["id"]) for r in rows]

    async def changed_tasks(self, where: TaskFilter, since: float, limit: int) -> list[Task]:
        clauses, params = self._filter_sql(where)
        clauses.append("updated_at > " + ("%(since)s" if self.dialect == "postgres" else ":since"))
        params["since"] = since
        sql = (
            "SELECT * FROM tasks WHERE "
            + " AND ".join(clauses)
            + f" ORDER BY updated_at LIMIT {int(limit)}"
        )
        rows = await self._tx(lambda tx: tx.raw(sql, params), write=False)
        return [_task(r) for r in rows]

    async def replay_failed(
        self, task_id: str, outcome: Outcome, deadline: float | None, audit: dict[str, object]
    ) -> Task | None:
        def fn(tx: Tx) -> Task | None:
            row = tx.one("requeue_failed_task", id=task_id, outcome=_dumps(outcome.to_json()))
            if row is None:
                return None
            tx.run("kill_queued_jobs", task_id=task_id, error="replaced by a replay")
            for index, image in enumerate(outcome.images):
                if image.inline is not None:  # a kept answer parsed again (unparsed_response)
                    tx.run("insert_inline", task_id=task_id, idx=index, data=image.inline)
            self._event(
                tx,
                task_id,
                "completed",
                {"images": len(outcome.images), "replay": True, **audit},
            )
            self._enqueue(tx, task_id, deadline)
            return _task(row)

        return await self._tx(fn)

    async def audit(self, task_id: str, kind: str, data: dict[str, object]) -> None:
        await self._tx(lambda tx: self._event(tx, task_id, kind, dict(data)))

    async def task_activity(self, task_id: str) -> dict[str, list[dict[str, object]]]:
        def fn(tx: Tx) -> dict[str, list[dict[str, object]]]:
            return {
                "jobs": tx.all("task_jobs", task_id=task_id),
                "notifications": tx.all("task_notifications", task_id=task_id),
            }

        return await self._tx(fn, write=False)

    async def ops_snapshot(self, since: float) -> dict[str, object]:
        def fn(tx: Tx) -> dict[str, object]:
            depth = tx.one("queue_depth") or {}
            oldest = depth.get("oldest")
            count = tx.one("retrying_count") or {}
            return {
                "queue_depth": int(depth.get("depth") or 0),
                "oldest_job_age": max(0.0, tx.now - oldest) if oldest else 0.0,
                "retrying": int(count.get("n") or 0),
                "retrying_jobs": tx.all("retrying_jobs", limit=50),
                "callbacks": {
                    r["provider"]: int(r["n"]) for r in tx.all("deliveries_since", since=since)
                },
                "failures": {
                    str(r["reason"]): int(r["n"]) for r in tx.all("failures_since", since=since)
                },
                "notifications": {
                    r["state"]: {"count": int(r["n"]), "oldest": r["oldest"]}
                    for r in tx.all("notification_backlog")
                },
            }

        return await self._tx(fn, write=False)


_WORD = re.compile(r"\w+")


def search_words(text: str | None) -> list[str]:
    """The words of a prompt search (at most 8), lower case; punctuation and quotes are
    dropped, so nothing in the text reaches the FTS5 / tsquery syntax."""
    return _WORD.findall(text.lower())[:8] if text else []
