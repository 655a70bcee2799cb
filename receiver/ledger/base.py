"""The ledger: the one place where shared state lives, so replicas stay stateless.

Every method that changes state runs in one transaction. Implementations: ``memory`` (in the
package, for unit tests), ``sqlite`` (the embedded default, WAL), ``postgres`` (replicas). The
same contract test class (tests/unit/ledger_contract.py) runs against each.

Driver errors are translated to :class:`receiver.errors.LedgerUnavailable` at this boundary.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..models import (
    Event,
    Job,
    NewTask,
    Notification,
    Outcome,
    Reason,
    RecordResult,
    Status,
    StoredObject,
    Task,
    TaskFilter,
)

Listener = Callable[[str], Awaitable[None] | None]


@dataclass(frozen=True)
class Backlog:
    """What is waiting, for the gauges an operator alerts on (ages in seconds)."""

    jobs: dict[str, int] = field(default_factory=dict)  # state -> unfinished archive jobs
    oldest_due_job: float = 0.0  # how long the oldest due job has waited to be claimed
    oldest_job: dict[str, float] = field(default_factory=dict)  # provider -> since enqueued
    notifications: dict[str, int] = field(default_factory=dict)  # state -> undelivered
    oldest_notification: float = 0.0
    submitted: dict[str, tuple[int, float]] = field(default_factory=dict)  # provider -> n, age


class Ledger(ABC):
    """Durable task state, delivery de-duplication, archive jobs, events and notifications."""

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> Ledger:
        """The backend for ``ledger_url`` (not yet open); ConfigError names what is wrong."""

    def now(self) -> float:
        return time.time()

    # --- life cycle ---------------------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect and apply schema migrations (idempotent; safe from several replicas)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise LedgerUnavailable unless a trivial query succeeds now."""

    # --- tasks ------------------------------------------------------------------------------

    @abstractmethod
    async def create_task(
        self, new: NewTask, *, idempotency_key: str | None = None
    ) -> tuple[Task, bool]:
        """Insert a task in status ``submitted`` with event ``submitted``.

        With an ``idempotency_key`` already used, return ``(existing_task, False)`` and change
        nothing; otherwise ``(task, True)``.
        """

    @abstractmethod
    async def mark_submitted(
        self,
        task_id: str,
        provider_task_id: str | None,
        *,
        next_poll_at: float | None,
        provider_state: dict[str, Any] | None = None,
    ) -> Task:
        """Record the provider's task id, the per-task state later polls need (``None``
        keeps what is stored), and when the reconciler should first poll."""

    @abstractmethod
    async def get_task(self, task_id: str) -> Task | None: ...

    @abstractmethod
    async def find_task(self, provider: str, provider_task_id: str) -> Task | None:
        """The task with this provider task id (for account-level webhooks and polling)."""

    @abstractmethod
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
        """Newest first; the returned cursor (opaque) continues after the last task."""

    @abstractmethod
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
        """Apply one provider outcome in one transaction.

        - ``provider_task_id`` given and the task has a different one recorded: nothing
          changes, ``RecordResult(mismatch=True)`` (the delivery is not remembered).

        - ``delivery_key`` seen before for this provider (within retention): nothing changes,
          ``RecordResult(duplicate=True, task=current)``.
        - Otherwise the delivery is remembered, and if the task is still ``submitted``:
          ``succeeded`` moves it to ``completed`` (outcome stored, inline image bytes kept,
          event ``completed``) and enqueues exactly one archive job with ``deadline``;
          ``failed``/``moderated`` move it to ``failed`` with reason ``provider_error`` /
          ``moderated`` and the provider's message, event ``failed``, notification enqueued;
          ``unparsed`` likewise with reason ``unparsed_response``, and ``outcome.raw`` kept
          (see :meth:`raw_response`).
          ``pending`` or an already-advanced task: delivery remembered, task unchanged.
        """

    @abstractmethod
    async def fail_task(self, task_id: str, reason: Reason, message: str) -> Task | None:
        """Fail a non-final task (event + notification); a final task is left as it is."""

    @abstractmethod
    async def requeue_task(self, task_id: str, outcome: Outcome, deadline: float | None) -> Task:
        """Replay: store a fresh outcome, status ``completed``, and a new archive job."""

    # --- archive jobs -------------------------------------------------------------------------

    @abstractmethod
    async def claim_jobs(self, owner: str, limit: int, lease_seconds: float) -> list[Job]:
        """Lease up to ``limit`` due jobs: queued with ``next_attempt_at <= now`` or leased with
        an expired lease. Increments ``attempts``. Never hands one job to two owners at once."""

    @abstractmethod
    async def extend_lease(self, job_id: int, owner: str, lease_seconds: float) -> bool:
        """False when the lease was lost (expired and taken by another owner)."""

    @abstractmethod
    async def finish_job(self, job_id: int, owner: str, objects: list[StoredObject]) -> Task | None:
        """Job done; task ``archived`` with its objects; event; notification enqueued.
        None (and no change) when ``owner`` no longer holds the lease."""

    @abstractmethod
    async def retry_job(self, job_id: int, owner: str, error: str, delay: float) -> None:
        """Give the job back to the queue, due after ``delay`` seconds."""

    @abstractmethod
    async def fail_job(self, job_id: int, owner: str, reason: Reason, message: str) -> Task | None:
        """Job dead; task ``failed`` with ``reason``; event; notification enqueued."""

    @abstractmethod
    async def release_jobs(self, owner: str) -> int:
        """On shutdown: give back every job ``owner`` leases, due now, attempt not counted."""

    @abstractmethod
    async def inline_image(self, task_id: str, index: int) -> bytes | None:
        """Bytes a synchronous provider returned for result ``index``, kept by record_outcome."""

    @abstractmethod
    async def raw_response(self, task_id: str) -> tuple[bytes, str | None] | None:
        """``(bytes, content type)`` of the provider answer kept for an unparsed outcome."""

    @abstractmethod
    async def queue_stats(self) -> tuple[int, float]:
        """(jobs not done or dead, age in seconds of the oldest due one or 0)."""

    async def trace_context(self, task_id: str) -> str | None:
        """The stored ``traceparent`` of the task's submission (tracing continues it)."""
        task = await self.get_task(task_id)
        return task.traceparent if task else None

    async def backlog(self) -> Backlog:
        """Unfinished work by state and its ages, in one read (the reconciler exports it)."""
        depth, age = await self.queue_stats()
        return Backlog(jobs={"queued": depth}, oldest_due_job=age)

    # --- events -------------------------------------------------------------------------------

    @abstractmethod
    async def events(self, task_id: str, after_seq: int = 0) -> list[Event]:
        """Status changes of a task in order; ``seq`` starts at 1 per task."""

    # --- reconciler -----------------------------------------------------------------------------

    @abstractmethod
    async def tasks_to_poll(self, limit: int) -> list[Task]:
        """Tasks still ``submitted`` whose ``next_poll_at`` has come."""

    @abstractmethod
    async def claim_submission(self, task_id: str, lease_seconds: float) -> bool:
        """Take over a task whose submitter died before recording the provider's answer (still
        ``submitted``, never marked submitted, due). True for exactly one caller; the task is
        then not due again for ``lease_seconds``."""

    @abstractmethod
    async def schedule_poll(self, task_id: str, next_poll_at: float | None) -> None:
        """Set the next poll time and count the attempt (None: stop polling)."""

    # --- notifications --------------------------------------------------------------------------

    @abstractmethod
    async def claim_notifications(
        self, owner: str, limit: int, lease_seconds: float
    ) -> list[Notification]: ...

    @abstractmethod
    async def finish_notification(self, notification_id: str, owner: str) -> None: ...

    @abstractmethod
    async def retry_notification(
        self, notification_id: str, owner: str, error: str, delay: float, *, give_up: bool
    ) -> None:
        """Due again after ``delay``; ``give_up`` marks it dead instead."""

    @abstractmethod
    async def redeliver(self, task_id: str) -> Notification | None:
        """Enqueue the task's final-state notification again (a new event id)."""

    # --- housekeeping ---------------------------------------------------------------------------

    @abstractmethod
    async def purge_deliveries(self, older_than: float) -> int:
        """Forget delivery keys received before ``older_than`` (retention >= 7 days)."""

    @abstractmethod
    async def purge_history(
        self, *, jobs_before: float, events_before: float, events_after: float = 0.0
    ) -> dict[str, int]:
        """Delete finished (done or dead) jobs and notifications last changed before
        ``jobs_before``, and every event of a final task last changed in
        [``events_after``, ``events_before``). The task rows stay. Counts by table."""

    # --- the console (not abstract: only the SQL ledgers implement them) ------------------

    async def search_tasks(
        self, where: TaskFilter, *, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[Task], str | None]:
        """Newest first, filtered (prompt search included); the cursor continues the list."""
        raise NotImplementedError

    async def count_tasks(self, where: TaskFilter) -> int:
        raise NotImplementedError

    async def task_ids(self, where: TaskFilter, limit: int) -> list[str]:
        """Ids of matching tasks, oldest first (bulk actions)."""
        raise NotImplementedError

    async def changed_tasks(self, where: TaskFilter, since: float, limit: int) -> list[Task]:
        """Matching tasks whose ``updated_at`` is after ``since``, oldest change first."""
        raise NotImplementedError

    async def replay_failed(
        self, task_id: str, outcome: Outcome, deadline: float | None, audit: dict[str, object]
    ) -> Task | None:
        """Like requeue_task, but only for a task still ``failed`` (None otherwise), so a bulk
        replay sent twice archives each task once; ``audit`` goes into the event."""
        raise NotImplementedError

    async def audit(self, task_id: str, kind: str, data: dict[str, object]) -> None:
        """Append an audit entry (``redelivered``) to the task's event log."""
        raise NotImplementedError

    async def task_activity(self, task_id: str) -> dict[str, list[dict[str, object]]]:
        """The task's archive jobs and notifications, as rows (the task page)."""
        raise NotImplementedError

    async def ops_snapshot(self, since: float) -> dict[str, object]:
        """Retrying jobs, callbacks and failures since ``since``, the notification backlog."""
        raise NotImplementedError

    # --- cross-replica wake-ups -----------------------------------------------------------------

    async def listen(self, listener: Listener) -> None:
        """Call ``listener(channel)`` after each commit that changes state: ``"jobs"`` when a
        job is enqueued or given back, ``"task:<id>"`` when a task changes, ``"notify"`` when a
        notification is enqueued. The ledger is the only announcer (callers never wake anyone):
        this process hears before the committing call returns; PostgreSQL also tells other
        replicas through LISTEN/NOTIFY. The default does nothing (loops also poll)."""
        return None
