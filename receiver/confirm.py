"""Confirm-by-read: where nothing signs a provider's callbacks, the callback is only a hint.

A per-task callback whose provider cannot be verified cryptographically (Vtrix; Mynth's
per-request custom URLs) is authenticated by the task-bound token in its URL, but its *content*
is not trusted: the outcome that gets recorded and archived is the one the provider's own API
returns when the task is read. A forged body with a stolen token can then cause one read and
nothing else. Turned on or off per provider with ``confirm_by_read``.
"""

from __future__ import annotations

import logging

from .errors import NotFound, ReceiverError
from .models import Outcome, Status
from .providers import Provider
from .runtime import Runtime

log = logging.getLogger(__name__)

# When the read fails or still shows the task unfinished, the reconciler reads it this soon.
RETRY_SECONDS = 2.0


async def confirmed_outcome(
    rt: Runtime, provider: Provider, task_id: str, claimed: Outcome | None
) -> Outcome | None:
    """The task's outcome as the provider's API reports it now, or None when there is nothing to
    record yet (the task is not submitted, is already past ``submitted``, the read failed or
    shows it unfinished); in the unfinished and failed cases the reconciler reads it soon."""
    task = await rt.ledger.get_task(task_id)
    if task is None:
        raise NotFound("no such task")
    extra = {"task_id": task_id, "provider": provider.name}
    if task.status is not Status.SUBMITTED or not task.provider_task_id:
        # Already recorded, or our own submission has not been recorded yet (the reconciler
        # reads it after the callback grace period in that case).
        return None
    if (
        claimed is not None
        and claimed.provider_task_id
        and claimed.provider_task_id != task.provider_task_id
    ):
        log.warning(
            "callback names provider task %s, ours is %s; reading ours",
            claimed.provider_task_id,
            task.provider_task_id,
            extra=extra,
        )
    try:
        outcome = await provider.checked_poll(task)
    except ReceiverError as exc:
        log.info("confirming the callback by a read failed: %s", exc, extra=extra)
        await rt.ledger.schedule_poll(task_id, rt.clock.now() + RETRY_SECONDS)
        return None
    if not outcome.final:
        await rt.ledger.schedule_poll(task_id, rt.clock.now() + RETRY_SECONDS)
        return None
    if claimed is not None and claimed.final and claimed.status is not outcome.status:
        log.warning(
            "callback claimed %s, the provider's API says %s",
            claimed.status.value,
            outcome.status.value,
            extra=extra,
        )
    return outcome
