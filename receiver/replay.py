"""Replay and redeliver, one task or many: the service behind the console's buttons, the
``POST /v1/tasks/replay`` and ``/redeliver`` routes and ``receiver replay --status …``.

A bulk action first counts (``dry_run``) and answers ``as_of``; sent again with that
``as_of`` it touches only tasks that matched then (``updated_at <= as_of``), so the count a
person confirmed is the count acted on. Replay only moves tasks that are still ``failed``,
so a double click, two tabs or two replicas archive each task once. Every task touched gets
an audit entry in its event log naming the bulk action and who asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import Conflict, ReceiverError, ValidationFailed
from .models import Outcome, OutcomeStatus, Reason, Status, Task, TaskFilter, new_id
from .runtime import Runtime

log = logging.getLogger(__name__)
MAX_BULK = 10_000  # one request; narrow the filter (or repeat) beyond it
CONCURRENCY = 8  # provider polls in flight during a bulk replay
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
FILTER_KEYS = (
    "status",
    "provider",
    "model",
    "destination",
    "reason",
    "since",
    "until",
    "q",
    "as_of",
)


def key_label(key: str) -> str:
    """Who acted, for audit entries and logs: a short hash, never the key."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def parse_time(field_name: str, raw: str, now: float | None = None) -> float:
    """``1h`` / ``30m`` / ``2d`` ago, an ISO date or date-time (UTC unless it says), or epoch
    seconds."""
    text = raw.strip()
    now = time.time() if now is None else now
    match = _DURATION.match(text.lower())
    number: float | None = None
    if match:
        number = now - float(match.group(1)) * _UNITS[match.group(2)]
    else:
        with contextlib.suppress(ValueError):
            number = float(text)
    if number is not None:
        # float() takes "nan", "inf" and 1e999: each would filter silently to nothing.
        if not math.isfinite(number):
            raise ValidationFailed(field_name, "expected a finite time")
        return number
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationFailed(
            field_name, "expected a duration such as 1h or 30m, an ISO date-time, or epoch seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_filter(data: Mapping[str, Any], now: float | None = None) -> TaskFilter:
    """A TaskFilter from query parameters, a form or a JSON object (empty values ignored)."""

    def text(name: str, limit: int = 200) -> str | None:
        value = data.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str | int | float):
            raise ValidationFailed(name, "must be a string")
        value = str(value).strip()
        if len(value) > limit:
            raise ValidationFailed(name, f"at most {limit} characters")
        return value or None

    status_raw = text("status")
    try:
        status = Status(status_raw) if status_raw else None
    except ValueError:
        raise ValidationFailed("status", f"must be one of {[s.value for s in Status]}") from None
    reason = text("reason")
    if reason is not None and reason not in {r.value for r in Reason} | {"unparsed_response"}:
        raise ValidationFailed("reason", f"must be one of {[r.value for r in Reason]}")
    since, until, as_of = text("since"), text("until"), text("as_of")
    return TaskFilter(
        status=status,
        provider=text("provider"),
        model=text("model"),
        destination=text("destination"),
        reason=reason,
        created_after=parse_time("since", since, now) if since else None,
        created_before=parse_time("until", until, now) if until else None,
        updated_before=parse_time("as_of", as_of, now) if as_of else None,
        text=text("q", 500),
    )


@dataclass
class BulkResult:
    """What a bulk action matched and did; the API renders it through its view model
    (``api.bulk.BulkResult``), the console through its templates."""

    action: str
    matched: int
    as_of: float
    dry_run: bool
    bulk_id: str | None = None
    done: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


def replay_filter(where: TaskFilter) -> TaskFilter:
    """Bulk replay covers failed tasks only."""
    if where.status not in (None, Status.FAILED):
        raise ValidationFailed("status", "bulk replay covers failed tasks only")
    return _with(where, status=Status.FAILED)


def _with(where: TaskFilter, **changes: Any) -> TaskFilter:
    return dataclasses.replace(where, **changes)


async def current_outcome(rt: Runtime, task: Task) -> Outcome:
    """What to archive again: the answer kept when it could not be read, parsed anew (after an
    upgrade); else the provider's answer now; else the outcome recorded. Conflict when there is
    none of these; a failed read raises as the provider adapter does."""
    provider = rt.provider(task.provider)
    kept = (
        await rt.ledger.raw_response(task.id)
        if task.failure_reason == Reason.UNPARSED_RESPONSE
        else None
    )
    reread = provider.reparse(kept[0], kept[1], task) if kept is not None else None
    if reread is not None:
        return reread
    if provider.can_poll and task.provider_task_id:
        return await provider.checked_poll(task)
    if task.outcome is not None:
        return task.outcome
    raise Conflict("the provider cannot be asked again and no result is recorded")


async def replay_task(rt: Runtime, task: Task, audit: dict[str, object]) -> str | None:
    """Queue a failed task for archiving again from the provider's current result; None when
    done, else why not (the task is left as it was)."""
    try:
        outcome = await current_outcome(rt, task)
    except Conflict as exc:
        return exc.message
    except ReceiverError as exc:
        return f"the provider could not be asked: {exc.message or exc.code}"
    if outcome.status is not OutcomeStatus.SUCCEEDED or not outcome.images:
        return f"the provider reports the task {outcome.status.value}"
    deadline = rt.provider(task.provider).deadline_for(outcome, rt.clock.now())
    done = await rt.ledger.replay_failed(task.id, outcome, deadline, audit)
    return None if done is not None else "no longer failed"


async def bulk(
    rt: Runtime,
    action: str,
    where: TaskFilter,
    *,
    actor: str,
    dry_run: bool,
) -> BulkResult:
    """Count (dry run) or act on every task ``where`` matches, up to MAX_BULK."""
    if action == "replay":
        where = replay_filter(where)
    elif action == "redeliver":
        if where.status not in (None, Status.ARCHIVED, Status.FAILED):
            raise ValidationFailed("status", "only archived or failed tasks can be redelivered")
    else:
        raise ValidationFailed("action", "must be replay or redeliver")
    as_of = where.updated_before if where.updated_before is not None else rt.ledger.now()
    where = _with(where, updated_before=as_of)
    matched = await rt.ledger.count_tasks(where)
    result = BulkResult(action=action, matched=matched, as_of=as_of, dry_run=dry_run)
    if dry_run:
        return result
    if matched > MAX_BULK:
        raise ValidationFailed("filter", f"matches {matched} tasks; at most {MAX_BULK} at once")
    result.bulk_id = new_id("blk")
    audit: dict[str, object] = {"by": actor, "bulk": result.bulk_id, "filter": where.to_json()}
    ids = await rt.ledger.task_ids(where, MAX_BULK)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(task_id: str) -> None:
        async with gate:
            task = await rt.ledger.get_task(task_id)
            if task is None:
                why: str | None = "gone"
            elif action == "replay":
                why = await replay_task(rt, task, audit)
            else:
                why = await redeliver_task(rt, task, audit)
        if why is None:
            result.done += 1
        else:
            result.skipped.append({"id": task_id, "reason": why})

    await asyncio.gather(*(one(i) for i in ids))  # the ledger wakes workers and notifier
    log.info(
        "bulk %s: %d of %d tasks, %d skipped",
        action,
        result.done,
        matched,
        len(result.skipped),
        extra={"bulk_id": result.bulk_id, "actor": actor},
    )
    return result


async def redeliver_task(rt: Runtime, task: Task, audit: dict[str, object]) -> str | None:
    if not task.status.final:
        return "the task has not ended"
    note = await rt.ledger.redeliver(task.id)
    if note is None:
        return "the task has no notify_url"
    await rt.ledger.audit(task.id, "redelivered", {**audit, "event_id": note.id})
    return None
