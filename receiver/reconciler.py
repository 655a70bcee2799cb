"""The reconciler: what no callback told us, we find out by asking.

A task with no callback within its provider's grace period is polled; poll-only providers
(APIMart) are polled on a schedule from submission with backoff. It also keeps the queue gauges
fresh and forgets delivery ids past their retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from . import backoff, metrics
from .errors import LedgerUnavailable, NotFound, ProviderError, ReceiverError
from .models import Reason, Task
from .runtime import Runtime

log = logging.getLogger(__name__)

# Stop polling a task that is still pending after this long and fail it.
GIVE_UP_SECONDS = 24 * 3600.0
# A resubmission is not attempted again by another replica for this long.
SUBMIT_RETRY_SECONDS = 90.0


class Reconciler:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._stopping = asyncio.Event()
        self._last_purge = 0.0

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

    async def tick(self) -> int:
        """One pass; returns how many tasks were polled."""
        ledger = self.rt.ledger
        depth, age = await ledger.queue_stats()
        metrics.QUEUE_DEPTH.set(depth)
        metrics.OLDEST_JOB_AGE.set(age)
        now = self.rt.clock.now()
        if now - self._last_purge > 3600:
            retention = self.rt.settings.worker.delivery_retention_days * 86400
            await ledger.purge_deliveries(now - retention)
            self._last_purge = now
        tasks = await ledger.tasks_to_poll(100)
        await asyncio.gather(*(self.poll(task) for task in tasks))
        return len(tasks)

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
            outcome = await provider.poll(task)
        except ProviderError as exc:
            metrics.POLLS.labels(task.provider, "error").inc()
            log.info("poll failed: %s", exc, extra={"task_id": task.id, "provider": task.provider})
            await ledger.schedule_poll(task.id, self._next(task))
            return
        except ReceiverError as exc:
            metrics.POLLS.labels(task.provider, "error").inc()
            log.info("poll gave an unreadable answer: %s", exc, extra={"task_id": task.id})
            await ledger.schedule_poll(task.id, self._next(task))
            return
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
