"""The reconciler: what no callback told us, we find out by asking.

A task with no callback within its provider's grace period is polled; poll-only providers
(APIMart) are polled on a schedule from submission with backoff. It also keeps the queue gauges
fresh and, hourly, deletes what is past its retention: delivery ids, finished jobs and
notifications, and the events of long-final tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from . import backoff, metrics, tracing
from .errors import LedgerUnavailable, NotFound, ProviderError, ReceiverError
from .ledger.base import Backlog
from .models import Reason, Task
from .runtime import Runtime

log = logging.getLogger(__name__)

# Stop polling a task that is still pending after this long and fail it.
GIVE_UP_SECONDS = 24 * 3600.0
# A resubmission is not attempted again by another replica for this long.
SUBMIT_RETRY_SECONDS = 90.0
# A task whose reconciling step crashes this many times is failed with the error.
CRASH_ATTEMPTS = 3


class Reconciler:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._stopping = asyncio.Event()
        self._last_purge = 0.0
        self._events_cutoff = 0.0
        self._providers_seen: set[str] = set()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        interval = self.rt.settings.worker.reconcile_interval
        while not self._stopping.is_set():
            try:
                await self.tick()
            except LedgerUnavailable as exc:
                log.warning("reconciler: ledger unavailable: %s", exc)
            except Exception:
                log.exception("reconciler tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def purge(self, now: float) -> None:
        """Retention, hourly: delivery ids, finished jobs and notifications, old events."""
        conf = self.rt.settings.worker
        await self.rt.ledger.purge_deliveries(now - conf.delivery_retention_days * 86400)
        events_before = now - conf.event_retention_days * 86400
        counts = await self.rt.ledger.purge_history(
            jobs_before=now - conf.job_retention_days * 86400,
            events_before=events_before,
            # Tasks before the last cutoff were done then: each pass scans one hour's worth.
            events_after=self._events_cutoff,
        )
        self._events_cutoff = events_before
        if any(counts.values()):
            log.info("retention: deleted %s", ", ".join(f"{n} {t}" for t, n in counts.items()))

    async def tick(self) -> int:
        """One pass; returns how many tasks were polled."""
        ledger = self.rt.ledger
        self.export(await ledger.backlog())
        now = self.rt.clock.now()
        if now - self._last_purge > 3600:
            await self.purge(now)
            self._last_purge = now
        tasks = await ledger.tasks_to_poll(100)
        await asyncio.gather(*(self._guarded_poll(task) for task in tasks))
        return len(tasks)

    async def _traced_poll(self, task: Task) -> None:
        attrs = {
            "receiver.task_id": task.id,
            "receiver.provider": metrics.provider_label(task.provider),
        }
        with tracing.span("receiver.poll", attrs, parent=task.traceparent):
            await self.poll(task)

    def export(self, backlog: Backlog) -> None:
        """Set the backlog gauges; a provider once seen is kept at 0 rather than dropped."""
        for state in ("queued", "leased"):
            metrics.QUEUE_DEPTH.labels(state).set(backlog.jobs.get(state, 0))
            metrics.NOTIFY_BACKLOG.labels(state).set(backlog.notifications.get(state, 0))
        metrics.OLDEST_JOB_AGE.set(backlog.oldest_due_job)
        metrics.OLDEST_NOTIFICATION.set(backlog.oldest_notification)
        names = set(self.rt.settings.providers) | set(backlog.oldest_job) | set(backlog.submitted)
        self._providers_seen |= {metrics.provider_label(n) for n in names}
        job_age: dict[str, float] = {}
        waiting: dict[str, tuple[int, float]] = {}
        for name, age in backlog.oldest_job.items():
            label = metrics.provider_label(name)
            job_age[label] = max(job_age.get(label, 0.0), age)
        for name, (count, age) in backlog.submitted.items():
            label = metrics.provider_label(name)
            before = waiting.get(label, (0, 0.0))
            waiting[label] = (before[0] + count, max(before[1], age))
        for label in self._providers_seen:
            metrics.OLDEST_UNFINISHED_JOB.labels(label).set(job_age.get(label, 0.0))
            metrics.SUBMITTED_TASKS.labels(label).set(waiting.get(label, (0, 0.0))[0])
            metrics.OLDEST_SUBMITTED.labels(label).set(waiting.get(label, (0, 0.0))[1])
            if label == "other":
                continue
            try:
                provider = self.rt.provider(label)
            except ReceiverError:  # a provider that cannot be built has no figures to show
                continue
            conf = self.rt.settings.provider(label)
            if conf.callback_grace_seconds is not None:
                grace = conf.callback_grace_seconds
            elif provider.delivers_callbacks:
                grace = provider.callback_grace
            else:
                grace = conf.poll_interval or 2.0
            metrics.PROVIDER_GRACE.labels(label).set(grace)
            metrics.PROVIDER_URL_LIFETIME.labels(label).set(provider.url_lifetime)

    async def _guarded_poll(self, task: Task) -> None:
        """One task's step; a crash on it (a bug, or an answer nothing expected) is retried
        later a few times, then parks the task as failed with the error, so one poisoned task
        never fails every pass nor holds back the others."""
        try:
            await self._traced_poll(task)
        except LedgerUnavailable:
            raise
        except Exception as exc:
            message = f"reconciling crashed: {type(exc).__name__}: {exc}"[:500]
            log.exception(
                "reconciler step crashed", extra={"task_id": task.id, "provider": task.provider}
            )
            with contextlib.suppress(ReceiverError):
                if task.poll_attempts + 1 >= CRASH_ATTEMPTS:
                    await self.rt.ledger.fail_task(
                        task.id, Reason.PROVIDER_ERROR, f"{message} (after {CRASH_ATTEMPTS} tries)"
                    )
                else:
                    await self.rt.ledger.schedule_poll(task.id, self._next(task))

    async def poll(self, task: Task) -> None:
        ledger = self.rt.ledger
        try:
            provider = self.rt.provider(task.provider)
        except NotFound:
            await ledger.schedule_poll(task.id, None)
            return
        if task.submitted_at is None and task.provider_task_id is None:
            await self.resubmit(task)
            return
        if not provider.can_poll or not task.provider_task_id:
            await ledger.schedule_poll(task.id, None)
            return
        try:
            outcome = await provider.checked_poll(task)
        except ProviderError as exc:
            metrics.POLLS.labels(task.provider, "error").inc()
            self.rt.troubles.failed("provider", task.provider, exc.message)
            (log.warning if task.poll_attempts >= 1 else log.info)(
                "poll failed: %s", exc, extra={"task_id": task.id, "provider": task.provider}
            )
            await ledger.schedule_poll(task.id, self._next(task))
            return
        except ReceiverError as exc:
            metrics.POLLS.labels(task.provider, "error").inc()
            log.info("poll gave an unreadable answer: %s", exc, extra={"task_id": task.id})
            await ledger.schedule_poll(task.id, self._next(task))
            return
        self.rt.troubles.succeeded("provider", task.provider)
        if not outcome.final:
            metrics.POLLS.labels(task.provider, "pending").inc()
            if self.rt.clock.now() - task.created_at > GIVE_UP_SECONDS:
                await ledger.fail_task(task.id, Reason.PROVIDER_ERROR, "no result after 24 hours")
            else:
                await ledger.schedule_poll(task.id, self._next(task))
            return
        metrics.POLLS.labels(task.provider, outcome.status.value).inc()
        await ledger.record_outcome(
            task.id,
            outcome,
            provider=task.provider,
            delivery_key=f"poll:{task.id}",
            deadline=provider.deadline_for(outcome, self.rt.clock.now()),
        )
        await ledger.schedule_poll(task.id, None)
        log.info(
            "poll found the task %s",
            outcome.status.value,
            extra={"task_id": task.id, "provider": task.provider},
        )

    async def resubmit(self, task: Task) -> None:
        """Submit a task whose submitter died between recording it and hearing back from the
        provider. Losing the task is worse than the one extra provider charge this can cost
        when the first POST had in fact arrived; it happens only after a crash."""
        if not await self.rt.ledger.claim_submission(task.id, SUBMIT_RETRY_SECONDS):
            return  # another replica took it
        metrics.RESUBMISSIONS.labels(task.provider).inc()
        log.warning(
            "submitting again: the first submission was interrupted",
            extra={"task_id": task.id, "provider": task.provider},
        )
        from .submit import submit

        await submit(self.rt, task)

    def _next(self, task: Task) -> float:
        conf = self.rt.settings.provider(task.provider)
        base = conf.poll_interval or 2.0
        return self.rt.clock.now() + max(base, backoff.delay(task.poll_attempts + 1, base, 60.0))
