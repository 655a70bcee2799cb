"""Archive workers: claim jobs under a lease, fetch every result, store image then sidecar.

Crash safety comes from the lease: a job whose worker died is claimed again when its lease
runs out, and create-only writes make the second attempt harmless. On shutdown the worker stops
claiming, lets running jobs finish within the grace period, and gives back the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from . import backoff, metrics, provenance, sidecar, tracing
from .destinations.base import Destination
from .errors import (
    AlreadyExists,
    FetchError,
    FetchExpired,
    FetchRefused,
    LedgerUnavailable,
    ProviderError,
    ReceiverError,
    StoreError,
)
from .fetch import Fetched
from .models import Job, Outcome, OutcomeStatus, Reason, StoredObject, Task
from .runtime import Runtime

log = logging.getLogger(__name__)
IMAGES_AT_ONCE = 4  # of one task, fetched and stored together
# A job that crashes this many times parks its task as failed instead of retrying forever.
CRASH_ATTEMPTS = 3


class Worker:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.conf = runtime.settings.worker
        self.inflight: dict[int, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._wake: asyncio.Event | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        wake = self.rt.changes.subscribe("jobs")
        self._wake = wake
        try:
            while not self._stopping.is_set():
                # Cleared before claiming, so a wake-up that comes during the claim is kept.
                wake.clear()
                free = self.conf.concurrency - len(self.inflight)
                claimed: list[Job] = []
                if free > 0:
                    try:
                        claimed = await self.rt.ledger.claim_jobs(
                            self.rt.owner, free, self.conf.lease_seconds
                        )
                    except LedgerUnavailable as exc:
                        log.warning("cannot claim jobs: %s", exc)
                for job in claimed:
                    self.inflight[job.id] = asyncio.create_task(self._guarded(job))
                if claimed and len(claimed) == free:
                    await asyncio.sleep(0)  # more may be due: claim again at once
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        _first(wake.wait(), self._stopping.wait()), self.conf.poll_interval
                    )
        finally:
            self.rt.changes.unsubscribe("jobs", wake)
            await self._drain()

    async def _drain(self) -> None:
        if self.inflight:
            _, pending = await asyncio.wait(
                list(self.inflight.values()), timeout=self.conf.shutdown_grace_seconds
            )
            for job in pending:
                job.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(ReceiverError):
            given = await self.rt.ledger.release_jobs(self.rt.owner)
            if given:
                log.info("gave back %d unfinished jobs", given)

    async def _guarded(self, job: Job) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(job))
        try:
            await self.process(job)
        except asyncio.CancelledError:
            raise
        except LedgerUnavailable as exc:
            log.warning("ledger unavailable during job %s: %s", job.id, exc)
        except Exception as exc:
            log.exception("job crashed", extra={"job_id": job.id, "task_id": job.task_id})
            with contextlib.suppress(ReceiverError):
                await self._crashed(job, exc)
        finally:
            heartbeat.cancel()
            self.inflight.pop(job.id, None)
            if self._wake is not None:
                self._wake.set()  # a slot is free: claim again now, not at the next poll

    async def _crashed(self, job: Job, exc: Exception) -> None:
        """A job that crashes (a bug, or data nothing expected) is retried with backoff a few
        times, then its task is parked as failed with the error: one poisoned task must not
        loop forever or hold a worker slot every few seconds."""
        message = f"archive step crashed: {type(exc).__name__}: {exc}"[:500]
        if job.attempts >= min(CRASH_ATTEMPTS, self.conf.max_attempts):
            task = await self.rt.ledger.get_task(job.task_id)
            if task is not None:
                await self._give_up(
                    job, task, Reason.STORE_FAILED, f"{message} (after {job.attempts} attempts)"
                )
            return
        delay = backoff.delay(
            job.attempts, self.conf.retry_base_seconds, self.conf.retry_max_seconds
        )
        await self.rt.ledger.retry_job(job.id, self.rt.owner, message, delay)

    async def _heartbeat(self, job: Job) -> None:
        interval = max(0.2, self.conf.lease_seconds / 3)
        while True:
            await self.rt.clock.sleep(interval)
            with contextlib.suppress(ReceiverError):
                await self.rt.ledger.extend_lease(job.id, self.rt.owner, self.conf.lease_seconds)

    async def process(self, job: Job) -> None:
        ledger = self.rt.ledger
        task = await ledger.get_task(job.task_id)
        if task is None or task.outcome is None:
            await ledger.fail_job(job.id, self.rt.owner, Reason.FETCH_FAILED, "task has no result")
            return
        attrs = {
            "receiver.task_id": task.id,
            "receiver.provider": metrics.provider_label(task.provider),
            "receiver.destination": task.destination,
            "receiver.job_attempt": job.attempts,
        }
        with tracing.span("receiver.archive", attrs, parent=task.traceparent):
            await self._process(job, task)

    async def _process(self, job: Job, task: Task) -> None:
        ledger = self.rt.ledger
        extra = {"task_id": task.id, "provider": task.provider, "job_id": job.id}
        outcome = task.outcome
        assert outcome is not None  # checked by process()
        refreshed = False
        while True:
            try:
                objects = await self.archive(task, outcome)
            except FetchExpired as exc:
                if not refreshed:
                    fresh = await self._refresh(task)
                    if fresh is not None:
                        outcome, refreshed = fresh, True
                        continue
                await self._give_up(job, task, Reason.EXPIRED, str(exc))
                return
            except FetchRefused as exc:
                await self._give_up(job, task, Reason.FETCH_FAILED, str(exc))
                return
            except FetchError as exc:
                await self._retry_or_fail(job, Reason.FETCH_FAILED, str(exc))
                return
            except StoreError as exc:
                self.rt.troubles.failed("destination", task.destination, str(exc))
                if exc.permanent:
                    await self._give_up(job, task, Reason.STORE_FAILED, str(exc))
                else:
                    await self._retry_or_fail(job, Reason.STORE_FAILED, str(exc))
                return
            break
        self.rt.troubles.succeeded("destination", task.destination)
        done = await ledger.finish_job(job.id, self.rt.owner, objects)
        if done is None:
            log.info("lease lost before finishing; another worker owns the job", extra=extra)
            return
        metrics.JOB_OUTCOMES.labels("archived").inc()
        if task.completed_at:
            metrics.ARCHIVE_LATENCY.observe(max(0.0, self.rt.clock.now() - task.completed_at))
        log.info("archived %d images", len(objects), extra={**extra, "status": "archived"})

    async def _refresh(self, task: Task) -> Outcome | None:
        """Ask the provider for fresh result URLs, where it can give them."""
        provider = self.rt.provider(task.provider)
        if not provider.can_poll or not task.provider_task_id:
            return None
        try:
            fresh = await provider.checked_poll(task)
        except ProviderError as exc:
            log.info("refresh by polling failed: %s", exc, extra={"task_id": task.id})
            return None
        if fresh.status is OutcomeStatus.SUCCEEDED and fresh.images:
            return fresh
        return None

    async def _give_up(self, job: Job, task: Task, reason: Reason, message: str) -> None:
        metrics.JOB_OUTCOMES.labels(reason.value).inc()
        log.warning(
            "task failed: %s",
            message,
            extra={"task_id": task.id, "provider": task.provider, "reason": reason.value},
        )
        await self.rt.ledger.fail_job(job.id, self.rt.owner, reason, message)

    async def _retry_or_fail(self, job: Job, reason: Reason, message: str) -> None:
        delay = backoff.delay(
            job.attempts, self.conf.retry_base_seconds, self.conf.retry_max_seconds
        )
        now = self.rt.clock.now()
        if job.deadline is not None and now + delay >= job.deadline:
            final = Reason.EXPIRED if reason is Reason.FETCH_FAILED else reason
            task = await self.rt.ledger.get_task(job.task_id)
            if task is not None:
                await self._give_up(job, task, final, f"{message} (result URL deadline reached)")
            return
        if job.attempts >= self.conf.max_attempts:
            task = await self.rt.ledger.get_task(job.task_id)
            if task is not None:
                await self._give_up(job, task, reason, f"{message} (after {job.attempts} attempts)")
            return
        metrics.JOB_OUTCOMES.labels("retry").inc()
        # The first retry is routine; from the second on, something is wrong and persisting.
        (log.warning if job.attempts > 1 else log.info)(
            "retrying in %.1fs (attempt %d): %s",
            delay,
            job.attempts,
            message,
            extra={"task_id": job.task_id},
        )
        await self.rt.ledger.retry_job(job.id, self.rt.owner, message, delay)

    async def archive(self, task: Task, outcome: Outcome) -> list[StoredObject]:
        """Fetch and store every result; safe to repeat (create-only writes). A task's images
        (a Mynth task can return 20) go a few at a time; the first failure stops the rest."""
        dest = self.rt.destination(task.destination)
        provider_model = self.rt.provider(task.provider).default_model
        images = list(enumerate(outcome.images))
        if len(images) == 1:
            index, image = images[0]
            return [await self._archive_one(dest, task, outcome, index, image.url, provider_model)]
        limit = asyncio.Semaphore(IMAGES_AT_ONCE)

        async def one(index: int, url: str | None) -> StoredObject:
            async with limit:
                return await self._archive_one(dest, task, outcome, index, url, provider_model)

        try:
            async with asyncio.TaskGroup() as group:
                running = [group.create_task(one(i, image.url)) for i, image in images]
        except BaseExceptionGroup as failed:
            raise _first_error(failed) from None
        return [t.result() for t in running]

    async def _archive_one(
        self,
        dest: Destination,
        task: Task,
        outcome: Outcome,
        index: int,
        url: str | None,
        provider_model: str | None,
    ) -> StoredObject:
        """One image, then its sidecars: the JSON sidecar's presence marks a complete pair."""
        fetched = await self._fetch(task, index, url)
        try:
            key = sidecar.image_key(task, index, fetched.ext)
            meta = {"task-id": task.id, "sha256": fetched.sha256}
            # AlreadyExists: an earlier attempt stored it; same task, same bytes.
            uri = await self._put(
                dest,
                "image",
                key,
                fetched.body(),
                size=fetched.size,
                content_type=fetched.content_type,
                metadata=meta,
                sha256=fetched.sha256,
            )
            # After the image is durable, so a slow or hostile manifest cannot delay that.
            claims = await provenance.read(
                fetched.file, fetched.content_type, self.rt.settings.provenance
            )
            doc = sidecar.build(
                task,
                outcome,
                index=index,
                **fetched.facts(),
                archived_at=self.rt.clock.now(),
                default_model=provider_model,
                provenance=claims,
            )
            if self.rt.settings.provenance.xmp_sidecar:
                # Before the JSON sidecar: the JSON one is written last and so still means
                # the image and all its sidecars are complete.
                xmp_key, xmp = sidecar.xmp_key(key), sidecar.xmp(doc)
                await self._put_doc(dest, "xmp", xmp_key, xmp, "application/rdf+xml", task.id)
            side_key, body = sidecar.sidecar_key(key), sidecar.dumps(doc)
            # AlreadyExists: the pair was already complete.
            side_uri = await self._put_doc(
                dest, "sidecar", side_key, body, "application/json", task.id
            )
            metrics.ARCHIVED_BYTES.labels(dest.name).inc(fetched.size)
            metrics.ARCHIVED_OBJECTS.labels(dest.name).inc()
            return StoredObject(
                index=index,
                uri=uri,
                sidecar_uri=side_uri,
                key=key,
                sha256=fetched.sha256,
                bytes=fetched.size,
                content_type=fetched.content_type,
                width=fetched.width,
                height=fetched.height,
                sidecar=doc,
            )
        finally:
            fetched.close()

    async def _put_doc(
        self, dest: Destination, kind: str, key: str, body: bytes, content_type: str, task_id: str
    ) -> str:
        """A sidecar document, tagged with its task."""
        return await self._put(
            dest,
            kind,
            key,
            body,
            size=len(body),
            content_type=content_type,
            metadata={"task-id": task_id},
        )

    async def _put(self, dest: Destination, kind: str, key: str, body: Any, **kw: Any) -> str:
        """One create-only write, timed and traced; an object already there is success."""
        outcome = "error"
        start = time.perf_counter()
        attrs = {"receiver.destination": dest.name, "receiver.kind": kind}
        try:
            with tracing.span(f"store {kind}", attrs, kind="client") as span:
                try:
                    uri = await dest.put(key, body, **kw)
                    outcome = "ok"
                except AlreadyExists:
                    outcome = "exists"
                    uri = dest.uri(key)
                span.set("receiver.outcome", outcome)
                span.set("receiver.bytes", kw["size"])
        finally:
            metrics.STORE_SECONDS.labels(dest.name, kind, outcome).observe(
                time.perf_counter() - start
            )
        if outcome == "ok":
            metrics.STORE_BYTES.labels(dest.name, kind).inc(kw["size"])
        return uri

    async def _fetch(self, task: Task, index: int, url: str | None) -> Fetched:
        """One result downloaded (or read from the ledger when inline), timed and traced."""
        provider = metrics.provider_label(task.provider)
        outcome = "error"
        start = time.perf_counter()
        attrs = {"receiver.provider": provider, "receiver.index": index}
        try:
            with tracing.span("fetch", attrs, kind="client") as span:
                try:
                    fetched = await self._download(task, index, url)
                except FetchExpired:
                    outcome = "expired"
                    raise
                except FetchRefused:
                    outcome = "refused"
                    raise
                outcome = "ok"
                span.set("receiver.bytes", fetched.size)
                span.set("receiver.content_type", fetched.content_type)
        finally:
            metrics.FETCH_SECONDS.labels(provider, task.destination, outcome).observe(
                time.perf_counter() - start
            )
        metrics.FETCH_BYTES.labels(provider, task.destination).inc(fetched.size)
        return fetched

    async def _download(self, task: Task, index: int, url: str | None) -> Fetched:
        if url is None:
            data = await self.rt.ledger.inline_image(task.id, index)
            if data is None:
                raise FetchRefused(f"result {index} has neither a URL nor inline bytes")
            return await self.rt.fetcher.fetch_bytes(data, f"inline:{task.provider}")
        return await self.rt.fetcher.fetch(url)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real failure in a task group's exceptions (not the cancellations it caused),
    so the caller's handling by error type still applies."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


async def _first(*aws: object) -> None:
    tasks = [asyncio.ensure_future(aw) for aw in aws]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
