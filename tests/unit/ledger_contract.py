"""One contract for every ledger backend; each backend's test module subclasses it and
provides a ``ledger`` fixture (opened, empty)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from receiver.ledger import Ledger
from receiver.models import (
    NewTask,
    Outcome,
    OutcomeStatus,
    Reason,
    RecordResult,
    ResultImage,
    Status,
    StoredObject,
)

pytestmark = pytest.mark.anyio

OK = Outcome(
    status=OutcomeStatus.SUCCEEDED,
    images=(ResultImage(url="https://cdn.example/a.png", expires_at=time.time() + 600),),
    provider_task_id="p-1",
    seed=7,
)


def new(**kw: object) -> NewTask:
    base: dict[str, object] = {"provider": "simulated", "prompt": "a fox", "destination": "local"}
    base.update(kw)
    return NewTask(**base)  # type: ignore[arg-type]


def obj(task_id: str, index: int = 0) -> StoredObject:
    return StoredObject(
        index=index,
        uri=f"s3://b/{task_id}/{index}.png",
        sidecar_uri=f"s3://b/{task_id}/{index}.png.json",
        key=f"{task_id}/{index}.png",
        sha256="ab" * 32,
        bytes=10,
        content_type="image/png",
        width=1,
        height=1,
    )


class LedgerContract:
    async def test_create_and_get(self, ledger: Ledger) -> None:
        task, created = await ledger.create_task(new(metadata={"user": "u1"}, params={"w": 64}))
        assert created and task.status is Status.SUBMITTED
        got = await ledger.get_task(task.id)
        assert got is not None
        assert got.metadata == {"user": "u1"} and got.params == {"w": 64}
        assert await ledger.get_task("tsk_missing") is None
        events = await ledger.events(task.id)
        assert [e.status for e in events] == ["submitted"] and events[0].seq == 1

    async def test_idempotency_key_returns_the_first_task(self, ledger: Ledger) -> None:
        first, created = await ledger.create_task(new(), idempotency_key="k1")
        again, created_again = await ledger.create_task(new(prompt="other"), idempotency_key="k1")
        assert created and not created_again
        assert again.id == first.id and again.prompt == "a fox"
        _, third = await ledger.create_task(new(), idempotency_key="k2")
        assert third

    async def test_mark_submitted_and_find(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new())
        marked = await ledger.mark_submitted(task.id, "prov-9", next_poll_at=123.0)
        assert marked.provider_task_id == "prov-9" and marked.next_poll_at == 123.0
        found = await ledger.find_task("simulated", "prov-9")
        assert found is not None and found.id == task.id
        assert await ledger.find_task("other", "prov-9") is None

    async def test_provider_state_is_kept_with_the_task(self, ledger: Ledger) -> None:
        """BFL's polling_url must survive a restart and reach every replica: it lives in the
        ledger. A later mark without state keeps what is stored."""
        task, _ = await ledger.create_task(new())
        assert task.provider_state == {}
        state = {"polling_url": "https://api.eu.bfl.ai/v1/get_result?id=p-9"}
        marked = await ledger.mark_submitted(task.id, "p-9", next_poll_at=1.0, provider_state=state)
        assert marked.provider_state == state
        got = await ledger.get_task(task.id)
        assert got is not None and got.provider_state == state
        (polled,) = await ledger.tasks_to_poll(10)
        assert polled.provider_state == state
        again = await ledger.mark_submitted(task.id, None, next_poll_at=2.0)
        assert again.provider_state == state and again.provider_task_id == "p-9"

    async def test_unparsed_answer_fails_the_task_and_keeps_the_raw_bytes(
        self, ledger: Ledger
    ) -> None:
        task, _ = await ledger.create_task(new())
        raw = b'{"artifact": {"kind": "mystery", "blob": 7}}'
        res = await ledger.record_outcome(
            task.id,
            Outcome(
                status=OutcomeStatus.UNPARSED,
                error_message="no image found in the answer",
                raw=raw,
                raw_content_type="application/json",
            ),
            provider="s",
            delivery_key="sync:1",
            deadline=None,
        )
        assert res.task is not None and res.task.status is Status.FAILED
        assert res.task.failure_reason == Reason.UNPARSED_RESPONSE.value == "unparsed_response"
        assert await ledger.raw_response(task.id) == (raw, "application/json")
        assert await ledger.raw_response("tsk_other") is None
        assert await ledger.claim_jobs("w", 5, 30) == []
        replayed = await ledger.requeue_task(task.id, OK, None)
        assert replayed.status is Status.COMPLETED

    async def test_success_enqueues_exactly_one_job_and_duplicates_change_nothing(
        self, ledger: Ledger
    ) -> None:
        task, _ = await ledger.create_task(new())
        deadline = time.time() + 600
        first = await ledger.record_outcome(
            task.id, OK, provider="simulated", delivery_key="d1", deadline=deadline
        )
        assert not first.duplicate and first.job_enqueued
        assert first.task is not None and first.task.status is Status.COMPLETED
        dup = await ledger.record_outcome(
            task.id, OK, provider="simulated", delivery_key="d1", deadline=deadline
        )
        assert dup.duplicate and not dup.job_enqueued
        other_key = await ledger.record_outcome(
            task.id, OK, provider="simulated", delivery_key="d2", deadline=deadline
        )
        assert not other_key.duplicate and not other_key.job_enqueued
        jobs = await ledger.claim_jobs("w1", 10, 30)
        assert len(jobs) == 1 and jobs[0].task_id == task.id and jobs[0].attempts == 1
        assert jobs[0].deadline == pytest.approx(deadline)
        stored = await ledger.get_task(task.id)
        assert stored is not None and stored.outcome is not None
        assert stored.outcome.seed == 7 and stored.outcome.images[0].url == OK.images[0].url

    async def test_concurrent_duplicate_deliveries_enqueue_once(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new())
        results = await asyncio.gather(
            *(
                ledger.record_outcome(
                    task.id, OK, provider="simulated", delivery_key=f"k{i % 3}", deadline=None
                )
                for i in range(12)
            )
        )
        assert sum(r.job_enqueued for r in results) == 1
        assert sum(not r.duplicate for r in results) == 3
        assert len(await ledger.claim_jobs("w", 50, 30)) == 1

    async def test_an_outcome_for_another_provider_task_changes_nothing(
        self, ledger: Ledger
    ) -> None:
        task, _ = await ledger.create_task(new())
        await ledger.mark_submitted(task.id, "p-1", next_poll_at=None)
        other = await ledger.record_outcome(
            task.id, OK, provider="s", delivery_key="k", deadline=None, provider_task_id="p-2"
        )
        assert other.mismatch and not other.job_enqueued
        mine = await ledger.record_outcome(
            task.id, OK, provider="s", delivery_key="k", deadline=None, provider_task_id="p-1"
        )
        assert not mine.mismatch and not mine.duplicate and mine.job_enqueued  # key not kept

    async def test_callbacks_arriving_together_share_a_commit(self, ledger: Ledger) -> None:
        """Group commit: concurrent outcomes take fewer transactions than callers, each caller
        gets its own answer, and each event keeps its own caller's request id."""
        from receiver.ledger.sql import SqlLedger
        from receiver.log import REQUEST_ID

        assert isinstance(ledger, SqlLedger)
        tasks = [(await ledger.create_task(new()))[0] for _ in range(16)]
        commits = 0
        run_group = ledger._run_group

        async def counted(batch: Any) -> Any:
            nonlocal commits
            commits += 1
            return await run_group(batch)

        ledger._run_group = counted  # type: ignore[method-assign]

        async def deliver(i: int) -> RecordResult:
            REQUEST_ID.set(f"req-{i}")  # each gather task has a context of its own
            return await ledger.record_outcome(
                tasks[i].id, OK, provider="simulated", delivery_key=f"g{i}", deadline=None
            )

        results = await asyncio.gather(*(deliver(i) for i in range(16)))
        ledger._run_group = run_group  # type: ignore[method-assign]
        assert commits < 16
        assert [r.task.id for r in results if r.task] == [t.id for t in tasks]
        assert all(r.job_enqueued and not r.duplicate for r in results)
        for i, task in enumerate(tasks):
            completed = [e for e in await ledger.events(task.id) if e.status == "completed"]
            assert [e.data.get("request_id") for e in completed] == [f"req-{i}"]
        assert len(await ledger.claim_jobs("w", 50, 30)) == 16

    async def test_a_call_right_after_a_group_commit_is_not_left_waiting(
        self, ledger: Ledger
    ) -> None:
        """The caller a group commit answers may call again at once, before the flusher's
        task has been cleaned up: that call must start a commit of its own."""
        first, _ = await ledger.create_task(new())
        second, _ = await ledger.create_task(new())
        for task in (first, second):
            async with asyncio.timeout(30):  # a guard only: answered at once, or never
                # In this task, not a new one: the call must come before anything else runs.
                result = await ledger.record_outcome(
                    task.id, OK, provider="s", delivery_key=task.id, deadline=None
                )
            assert result.job_enqueued

    async def test_a_group_gives_each_callback_its_own_answer(self, ledger: Ledger) -> None:
        """One group commit holding every kind of callback: a duplicate, one for a missing
        task, one for another provider task, a pending one, a success, a failure, two
        successes for one task and one delivery key twice. Each gets the answer it would get
        alone, in arrival order, from one commit that did not fall back to one transaction
        per call; nothing else is lost or doubled."""
        from receiver.ledger.sql import SqlLedger

        assert isinstance(ledger, SqlLedger)
        pending = Outcome(status=OutcomeStatus.PENDING)
        failure = Outcome(
            status=OutcomeStatus.FAILED, error_code="E9", raw=b"no", provider_task_id="p"
        )
        dup, _ = await ledger.create_task(new())
        await ledger.record_outcome(
            dup.id, pending, provider="s", delivery_key="seen", deadline=None
        )
        other, _ = await ledger.create_task(new())
        await ledger.mark_submitted(other.id, "p-1", next_poll_at=None)
        done, _ = await ledger.create_task(new())
        failing, _ = await ledger.create_task(new(notify_url="https://app.example/hook"))
        waiting, _ = await ledger.create_task(new())
        twice, _ = await ledger.create_task(new())
        keyed, _ = await ledger.create_task(new())

        groups: list[int] = []
        errors: list[BaseException] = []
        run_group = ledger._run_group

        async def watched(batch: Any) -> Any:
            groups.append(len(batch))
            try:
                return await run_group(batch)
            except BaseException as exc:  # the group would be retried call by call
                errors.append(exc)
                raise

        ledger._run_group = watched  # type: ignore[method-assign]
        try:
            calls = [
                (dup.id, pending, "seen", None),
                ("tsk_missing", OK, "gone", None),
                (other.id, OK, "theirs", "p-2"),
                (waiting.id, pending, "w", None),
                (done.id, OK, "ok", None),
                (failing.id, failure, "bad", None),
                (twice.id, OK, "first", None),
                (twice.id, OK, "second", None),
                (keyed.id, pending, "same", None),
                (keyed.id, pending, "same", None),
            ]
            results = await asyncio.gather(
                *(
                    ledger.record_outcome(
                        task_id,
                        outcome,
                        provider="s",
                        delivery_key=key,
                        deadline=None,
                        provider_task_id=ptid,
                    )
                    for task_id, outcome, key, ptid in calls
                )
            )
        finally:
            ledger._run_group = run_group  # type: ignore[method-assign]
        assert groups == [len(calls)] and errors == []
        (
            r_dup,
            r_missing,
            r_other,
            r_waiting,
            r_done,
            r_failing,
            r_first,
            r_second,
            r_key1,
            r_key2,
        ) = results
        assert r_dup.duplicate and r_dup.task is not None and r_dup.task.id == dup.id
        assert r_missing.task is None and not r_missing.duplicate
        assert r_other.mismatch and not r_other.duplicate and not r_other.job_enqueued
        assert not r_waiting.duplicate and r_waiting.task is not None
        assert r_waiting.task.status is Status.SUBMITTED
        assert r_done.job_enqueued and r_done.task is not None
        assert r_done.task.status is Status.COMPLETED and r_done.task.outcome is not None
        assert r_failing.task is not None and r_failing.task.status is Status.FAILED
        assert r_failing.task.failure_reason == "provider_error"
        assert r_failing.task.failure_message == "E9"
        assert r_first.job_enqueued and not r_first.duplicate
        assert not r_second.job_enqueued and not r_second.duplicate
        assert r_second.task is not None and r_second.task.status is Status.COMPLETED
        assert (r_key1.duplicate, r_key2.duplicate) == (False, True)
        # What was kept: a job each for the two completions, one notification, the raw
        # answer of the failure, one completion event per task, nothing for the others.
        jobs = await ledger.claim_jobs("w", 50, 30)
        assert sorted(j.task_id for j in jobs) == sorted([done.id, twice.id])
        notes = await ledger.claim_notifications("n", 10, 30)
        assert [(n.task_id, n.event) for n in notes] == [(failing.id, "task.failed")]
        assert await ledger.raw_response(failing.id) == (b"no", None)
        for task in (done, twice):
            assert [e.status for e in await ledger.events(task.id)] == ["submitted", "completed"]
        assert [e.status for e in await ledger.events(failing.id)] == ["submitted", "failed"]
        for task in (dup, other, waiting, keyed):
            stored = await ledger.get_task(task.id)
            assert stored is not None and stored.status is Status.SUBMITTED
        # The refused callbacks' keys were not kept: the right callback is still news.
        mine = await ledger.record_outcome(
            other.id, OK, provider="s", delivery_key="theirs", deadline=None, provider_task_id="p-1"
        )
        assert mine.job_enqueued and not mine.duplicate
        assert await ledger.get_task("tsk_missing") is None

    async def test_one_failing_call_does_not_fail_its_group(self, ledger: Ledger) -> None:
        from receiver.ledger.sql import SqlLedger

        assert isinstance(ledger, SqlLedger)
        good, _ = await ledger.create_task(new())
        other, _ = await ledger.create_task(new())

        def broken(tx: Any) -> None:
            tx.run("insert_event", task_id=good.id, status="x", data=None)  # NOT NULL: refused

        async def call_broken() -> None:
            await ledger._grouped(broken)

        outcomes = await asyncio.gather(
            ledger.record_outcome(good.id, OK, provider="s", delivery_key="a", deadline=None),
            call_broken(),
            ledger.record_outcome(other.id, OK, provider="s", delivery_key="b", deadline=None),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], Exception)
        for result in (outcomes[0], outcomes[2]):
            assert isinstance(result, RecordResult) and result.job_enqueued
        assert len(await ledger.claim_jobs("w", 50, 30)) == 2

    async def test_failure_and_moderation(self, ledger: Ledger) -> None:
        a, _ = await ledger.create_task(new(notify_url="https://app.example/hook"))
        b, _ = await ledger.create_task(new())
        res = await ledger.record_outcome(
            a.id,
            Outcome(status=OutcomeStatus.MODERATED, error_message="flagged"),
            provider="simulated",
            delivery_key=None,
            deadline=None,
        )
        assert res.task is not None and res.task.status is Status.FAILED
        assert res.task.failure_reason == "moderated" and res.task.failure_message == "flagged"
        res = await ledger.record_outcome(
            b.id,
            Outcome(status=OutcomeStatus.FAILED, error_code="E1"),
            provider="simulated",
            delivery_key=None,
            deadline=None,
        )
        assert res.task is not None and res.task.failure_reason == "provider_error"
        notes = await ledger.claim_notifications("n", 10, 30)
        assert [(n.task_id, n.event) for n in notes] == [(a.id, "task.failed")]
        assert await ledger.claim_jobs("w", 10, 30) == []

    async def test_pending_outcome_changes_nothing(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new())
        res = await ledger.record_outcome(
            task.id,
            Outcome(status=OutcomeStatus.PENDING),
            provider="simulated",
            delivery_key="p",
            deadline=None,
        )
        assert res.task is not None and res.task.status is Status.SUBMITTED
        assert not res.job_enqueued

    async def test_finish_job_archives_and_notifies(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new(notify_url="https://app.example/hook"))
        await ledger.record_outcome(task.id, OK, provider="s", delivery_key=None, deadline=None)
        (job,) = await ledger.claim_jobs("w1", 5, 30)
        assert await ledger.finish_job(job.id, "intruder", [obj(task.id)]) is None
        done = await ledger.finish_job(job.id, "w1", [obj(task.id)])
        assert done is not None and done.status is Status.ARCHIVED
        assert done.objects[0].uri == obj(task.id).uri and done.archived_at
        assert [e.status for e in await ledger.events(task.id)] == [
            "submitted",
            "completed",
            "archived",
        ]
        assert [e.seq for e in await ledger.events(task.id, after_seq=1)] == [2, 3]
        (note,) = await ledger.claim_notifications("n1", 10, 30)
        assert note.event == "task.archived" and note.url == "https://app.example/hook"
        assert await ledger.claim_notifications("n2", 10, 30) == []
        await ledger.finish_notification(note.id, "n1")
        again = await ledger.redeliver(task.id)
        assert again is not None and again.id != note.id and again.event == "task.archived"

    async def test_lease_runs_out_and_another_worker_takes_the_job(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new())
        await ledger.record_outcome(task.id, OK, provider="s", delivery_key=None, deadline=None)
        (job,) = await ledger.claim_jobs("w1", 5, 0.2)
        assert await ledger.claim_jobs("w2", 5, 30) == []
        await asyncio.sleep(0.3)
        (taken,) = await ledger.claim_jobs("w2", 5, 30)
        assert taken.id == job.id and taken.attempts == 2 and taken.lease_owner == "w2"
        assert not await ledger.extend_lease(job.id, "w1", 30)
        assert await ledger.extend_lease(job.id, "w2", 30)
        assert await ledger.finish_job(job.id, "w1", [obj(task.id)]) is None
        assert await ledger.finish_job(job.id, "w2", [obj(task.id)]) is not None

    async def test_retry_then_dead(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new())
        await ledger.record_outcome(task.id, OK, provider="s", delivery_key=None, deadline=None)
        (job,) = await ledger.claim_jobs("w", 5, 30)
        await ledger.retry_job(job.id, "w", "boom", 0.2)
        assert await ledger.claim_jobs("w", 5, 30) == []
        depth, _ = await ledger.queue_stats()
        assert depth == 1
        await asyncio.sleep(0.25)
        (again,) = await ledger.claim_jobs("w", 5, 30)
        assert again.attempts == 2
        failed = await ledger.fail_job(again.id, "w", Reason.FETCH_FAILED, "gone")
        assert failed is not None and failed.status is Status.FAILED
        assert failed.failure_reason == "fetch_failed"
        assert await ledger.queue_stats() == (0, 0.0)

    async def test_release_gives_jobs_back_without_counting(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new())
        await ledger.record_outcome(task.id, OK, provider="s", delivery_key=None, deadline=None)
        await ledger.claim_jobs("w", 5, 300)
        assert await ledger.release_jobs("w") == 1
        (job,) = await ledger.claim_jobs("w2", 5, 30)
        assert job.attempts == 1

    async def test_concurrent_claims_never_share_a_job(self, ledger: Ledger) -> None:
        for _ in range(20):
            task, _ = await ledger.create_task(new())
            await ledger.record_outcome(task.id, OK, provider="s", delivery_key=None, deadline=None)
        batches = await asyncio.gather(*(ledger.claim_jobs(f"w{i}", 3, 30) for i in range(10)))
        ids = [job.id for batch in batches for job in batch]
        assert len(ids) == len(set(ids)) == 20

    async def test_fail_task_leaves_final_tasks_alone(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new())
        failed = await ledger.fail_task(task.id, Reason.PROVIDER_ERROR, "rejected")
        assert failed is not None and failed.status is Status.FAILED
        again = await ledger.fail_task(task.id, Reason.EXPIRED, "late")
        assert again is not None and again.failure_reason == "provider_error"

    async def test_requeue_replays_a_failed_task(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new())
        await ledger.record_outcome(task.id, OK, provider="s", delivery_key=None, deadline=None)
        (job,) = await ledger.claim_jobs("w", 5, 30)
        await ledger.fail_job(job.id, "w", Reason.EXPIRED, "late")
        replayed = await ledger.requeue_task(task.id, OK, None)
        assert replayed.status is Status.COMPLETED and replayed.failure_reason is None
        (job2,) = await ledger.claim_jobs("w", 5, 30)
        assert job2.id != job.id

    async def test_inline_images_are_kept(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new())
        inline = Outcome(
            status=OutcomeStatus.SUCCEEDED,
            images=(ResultImage(inline=b"\x89PNG\r\n\x1a\nrest", content_type="image/png"),),
        )
        await ledger.record_outcome(task.id, inline, provider="s", delivery_key=None, deadline=None)
        assert await ledger.inline_image(task.id, 0) == b"\x89PNG\r\n\x1a\nrest"
        assert await ledger.inline_image(task.id, 1) is None

    async def test_success_without_images_fails(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new())
        res = await ledger.record_outcome(
            task.id,
            Outcome(status=OutcomeStatus.SUCCEEDED),
            provider="s",
            delivery_key=None,
            deadline=None,
        )
        assert res.task is not None and res.task.status is Status.FAILED

    async def test_list_tasks_pages_newest_first(self, ledger: Ledger) -> None:
        ids = []
        for i in range(5):
            task, _ = await ledger.create_task(new(provider="a" if i % 2 else "b"))
            ids.append(task.id)
            await asyncio.sleep(0.002)
        page, cursor = await ledger.list_tasks(limit=2)
        assert [t.id for t in page] == ids[::-1][:2] and cursor
        page2, cursor2 = await ledger.list_tasks(limit=2, cursor=cursor)
        assert [t.id for t in page2] == ids[::-1][2:4]
        page3, cursor3 = await ledger.list_tasks(limit=2, cursor=cursor2)
        assert [t.id for t in page3] == ids[:1] and cursor3 is None
        only_a, _ = await ledger.list_tasks(provider="a")
        assert {t.id for t in only_a} == {ids[1], ids[3]}
        failed, _ = await ledger.list_tasks(status=Status.FAILED)
        assert failed == []

    async def test_polling_schedule(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new())
        await ledger.mark_submitted(task.id, "p", next_poll_at=time.time() - 1)
        due = await ledger.tasks_to_poll(10)
        assert [t.id for t in due] == [task.id]
        await ledger.schedule_poll(task.id, time.time() + 60)
        assert await ledger.tasks_to_poll(10) == []
        got = await ledger.get_task(task.id)
        assert got is not None and got.poll_attempts == 1

    async def test_interrupted_submission_is_claimed_once(self, ledger: Ledger) -> None:
        from receiver.ledger import sql

        task, _ = await ledger.create_task(new())
        assert task.next_poll_at is not None and task.submitted_at is None
        assert task.next_poll_at >= task.created_at + sql.SUBMIT_LEASE_SECONDS - 1
        assert not await ledger.claim_submission(task.id, 60)  # its submitter may be alive
        assert await ledger.tasks_to_poll(10) == []
        await ledger.schedule_poll(task.id, time.time() - 1)  # as if the lease ran out
        assert [t.id for t in await ledger.tasks_to_poll(10)] == [task.id]
        claims = await asyncio.gather(*(ledger.claim_submission(task.id, 60) for _ in range(5)))
        assert claims.count(True) == 1
        assert await ledger.tasks_to_poll(10) == []
        done = await ledger.mark_submitted(task.id, "p", next_poll_at=None)
        assert not await ledger.claim_submission(done.id, 60)

    async def test_notification_retry_and_give_up(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new(notify_url="https://app.example/h"))
        await ledger.fail_task(task.id, Reason.PROVIDER_ERROR, "x")
        (note,) = await ledger.claim_notifications("n", 5, 30)
        await ledger.retry_notification(note.id, "n", "500", 0, give_up=False)
        (again,) = await ledger.claim_notifications("n", 5, 30)
        assert again.id == note.id and again.attempts == 2
        await ledger.retry_notification(note.id, "n", "500", 0, give_up=True)
        assert await ledger.claim_notifications("n", 5, 30) == []

    async def test_purge_deliveries_forgets_old_keys(self, ledger: Ledger) -> None:
        task, _ = await ledger.create_task(new())
        pending = Outcome(status=OutcomeStatus.PENDING)
        await ledger.record_outcome(
            task.id, pending, provider="s", delivery_key="old", deadline=None
        )
        assert await ledger.purge_deliveries(time.time() - 3600) == 0
        assert await ledger.purge_deliveries(time.time() + 1) == 1
        res = await ledger.record_outcome(
            task.id, pending, provider="s", delivery_key="old", deadline=None
        )
        assert not res.duplicate

    async def test_purge_history_keeps_tasks_and_anything_live(self, ledger: Ledger) -> None:
        hook = "https://app.example/hook"
        done, _ = await ledger.create_task(new(notify_url=hook))
        failed, _ = await ledger.create_task(new())
        live, _ = await ledger.create_task(new())
        for task, key in ((done, "d"), (live, "l")):
            await ledger.record_outcome(task.id, OK, provider="s", delivery_key=key, deadline=None)
        await ledger.fail_task(failed.id, Reason.PROVIDER_ERROR, "boom")
        jobs = {j.task_id: j for j in await ledger.claim_jobs("w1", 5, 30)}
        await ledger.finish_job(jobs[done.id].id, "w1", [obj(done.id)])
        (note,) = await ledger.claim_notifications("n1", 5, 30)
        await ledger.finish_notification(note.id, "n1")

        past = time.time() - 3600
        nothing = await ledger.purge_history(jobs_before=past, events_before=past)
        assert nothing == {"jobs": 0, "notifications": 0, "events": 0}
        soon = time.time() + 1
        counts = await ledger.purge_history(jobs_before=soon, events_before=soon)
        assert counts["jobs"] == 1 and counts["notifications"] == 1
        assert counts["events"] == len(["submitted", "completed", "archived"]) + 2
        for task in (done, failed, live):
            assert await ledger.get_task(task.id) is not None  # tasks are kept
        assert await ledger.events(done.id) == [] and await ledger.events(failed.id) == []
        assert [e.status for e in await ledger.events(live.id)] == ["submitted", "completed"]
        assert await ledger.extend_lease(jobs[live.id].id, "w1", 30)  # the live job is there
        again = await ledger.purge_history(jobs_before=soon, events_before=soon)
        assert again == {"jobs": 0, "notifications": 0, "events": 0}

    async def test_listeners_hear_every_change_before_the_call_returns(
        self, ledger: Ledger
    ) -> None:
        """The ledger is the one announcer: callers never wake anyone themselves, so each
        change must be heard in this process by the time the committing call returns."""
        heard: list[str] = []
        await ledger.listen(heard.append)
        task, _ = await ledger.create_task(new(notify_url="http://app.example/hook"))
        assert f"task:{task.id}" in heard
        heard.clear()
        await ledger.record_outcome(task.id, OK, provider="s", delivery_key=None, deadline=None)
        assert {"jobs", f"task:{task.id}"} <= set(heard)
        heard.clear()
        (job,) = await ledger.claim_jobs("w1", 5, 30)
        await ledger.retry_job(job.id, "w1", "again", 0)
        assert "jobs" in heard
        heard.clear()
        (job,) = await ledger.claim_jobs("w1", 5, 30)
        await ledger.finish_job(job.id, "w1", [])
        assert {f"task:{task.id}", "notify"} <= set(heard)
        heard.clear()
        assert await ledger.redeliver(task.id) is not None
        assert "notify" in heard
        heard.clear()
        await ledger.requeue_task(task.id, OK, None)
        assert {"jobs", f"task:{task.id}"} <= set(heard)
        other, _ = await ledger.create_task(new(notify_url="http://app.example/hook"))
        heard.clear()
        await ledger.fail_task(other.id, Reason.PROVIDER_ERROR, "no")
        assert {f"task:{other.id}", "notify"} <= set(heard)

    async def test_ping(self, ledger: Ledger) -> None:
        await ledger.ping()

    async def test_trace_context_is_kept_with_the_task(self, ledger: Ledger) -> None:
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        task, _ = await ledger.create_task(new(traceparent=traceparent))
        assert (await ledger.get_task(task.id)).traceparent == traceparent  # type: ignore[union-attr]
        assert await ledger.trace_context(task.id) == traceparent
        untraced, _ = await ledger.create_task(new())
        assert await ledger.trace_context(untraced.id) is None
        assert await ledger.trace_context("tsk_missing") is None

    async def test_backlog_counts_what_waits_by_state_and_provider(self, ledger: Ledger) -> None:
        empty = await ledger.backlog()
        assert empty.jobs == {} and empty.submitted == {} and empty.notifications == {}
        waiting, _ = await ledger.create_task(new(provider="bfl"))
        done, _ = await ledger.create_task(new(notify_url="https://app.example/h"))
        queued, _ = await ledger.create_task(new())
        for task in (done, queued):
            await ledger.record_outcome(task.id, OK, provider="s", delivery_key=None, deadline=None)
        jobs = await ledger.claim_jobs("w", 1, 300)
        assert [j.task_id for j in jobs] == [done.id]
        await ledger.finish_job(jobs[0].id, "w", [obj(done.id)])
        await ledger.record_outcome(queued.id, OK, provider="s", delivery_key="x", deadline=None)
        backlog = await ledger.backlog()
        assert backlog.jobs == {"queued": 1}
        assert set(backlog.oldest_job) == {"simulated"} and backlog.oldest_job["simulated"] >= 0
        assert backlog.submitted == {"bfl": (1, backlog.submitted["bfl"][1])}
        assert backlog.notifications == {"queued": 1} and backlog.oldest_notification >= 0
        assert len(await ledger.claim_jobs("w", 5, 300)) == 1
        assert (await ledger.backlog()).jobs == {"leased": 1}
        assert waiting.status is Status.SUBMITTED
