"""Callback intake: verify, parse, de-duplicate and record a provider's delivery.

The HTTP handlers in ``api/hooks.py`` only read the request and answer; everything a delivery
means happens here, so it runs the same under a test as behind uvicorn. Nothing is announced
from here: the ledger wakes workers, event streams and the notifier once it has committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from . import log as receiver_log
from . import metrics, tracing
from .confirm import confirmed_outcome
from .errors import BadRequest, NotFound, ReceiverError, SignatureError
from .models import NewTask, Task
from .providers import Callback, Provider
from .runtime import Runtime
from .signatures import task_secrets, verify_hook_token

log = logging.getLogger(__name__)

# Reads the request body, refusing one larger than the given cap (PayloadTooLarge).
BodyReader = Callable[[int], Awaitable[bytes]]


@dataclass(frozen=True)
class Accepted:
    """What a committed delivery did: ``duplicate`` means it had been recorded before."""

    status: Literal["accepted", "duplicate"]
    task_id: str
    # False when an unsigned callback could not be confirmed by reading the task yet (nothing
    # recorded; the reconciler reads the task soon). The provider is answered 2xx either way.
    confirmed: bool = True


class _counted:
    """Count a refused delivery by its error code (the provider's name is a known one). A
    class, not a generator context: it wraps every callback."""

    __slots__ = ("provider",)

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        provider = self.provider
        if isinstance(exc, SignatureError):
            metrics.VERIFY_FAILURES.labels(provider, exc.cause).inc()
            metrics.DELIVERIES.labels(provider, "refused").inc()
            log.info("callback refused: %s", exc.message, extra={"provider": provider})
        elif isinstance(exc, ReceiverError):
            metrics.DELIVERIES.labels(provider, exc.code).inc()
            log.info("callback not accepted: %s", exc.message, extra={"provider": provider})


def _delivery_key(callback: Callback, body: bytes) -> str:
    return callback.delivery_key or "body:" + hashlib.sha256(body).hexdigest()


async def _record(
    rt: Runtime,
    provider: Provider,
    task_id: str,
    callback: Callback,
    body: bytes,
    *,
    bound: bool = False,
) -> Accepted:
    """Record the delivery; with ``bound`` the callback must also speak of the provider task
    we submitted, or of none (a validly signed callback for another request is refused: fal
    signs per account, not per task), checked in the same transaction."""
    result = await rt.ledger.record_outcome(
        task_id,
        callback.outcome,
        provider=provider.name,
        delivery_key=_delivery_key(callback, body),
        deadline=provider.deadline_for(callback.outcome, rt.clock.now()),
        provider_task_id=callback.provider_task_id if bound else None,
    )
    if result.mismatch:
        raise SignatureError(
            f"{provider.name}: the callback is for another provider task than this URL's",
            cause="mismatch",
        )
    if result.task is None:
        raise NotFound("no such task")
    status: Literal["accepted", "duplicate"] = "duplicate" if result.duplicate else "accepted"
    metrics.delivered(provider.name, status).inc()
    return Accepted(status, task_id)


async def accept_callback(
    rt: Runtime, provider_name: str, token: str, headers: Mapping[str, str], read: BodyReader
) -> Accepted:
    """A callback for a task we submitted: the URL token names the task, the provider's own
    signature (where it signs) is checked with that task's secrets, then the outcome is
    recorded. Returns only once the ledger has committed it."""
    provider = rt.provider(provider_name)  # an unknown name is 404 and not counted
    # Traced as part of the task's own trace (its context is stored at submission), linked
    # to the HTTP request's span: the read is made only when tracing is on.
    parent = None
    if tracing.enabled():
        with contextlib.suppress(ReceiverError):
            task_id = verify_hook_token(rt.settings.secret_keys, token, provider.name)
            parent = await rt.ledger.trace_context(task_id)
    attrs = {"receiver.provider": provider.name}
    with tracing.span("receiver.callback", attrs, parent=parent), _counted(provider.name):
        task_id = verify_hook_token(rt.settings.secret_keys, token, provider.name)
        body = await read(rt.settings.server.max_body_bytes)
        with tracing.span("receiver.verify_callback", attrs):
            secrets = task_secrets(rt.settings.secret_keys, task_id, provider.secret_format)
            await provider.verify_callback(headers, body, secrets)
        if provider.confirm_by_read:
            # Unsigned: the body is only a hint; what is recorded is what the API says.
            confirmed = await _confirmed(rt, provider, task_id, headers, body)
            if confirmed is None:
                metrics.DELIVERIES.labels(provider.name, "unconfirmed").inc()
                return Accepted("accepted", task_id, confirmed=False)
            callback = confirmed
        else:
            callback = provider.read_callback(headers, body)
        accepted = await _record(rt, provider, task_id, callback, body, bound=True)
    _log_delivery(accepted, provider.name, callback.outcome.status.value)
    return accepted


def _log_delivery(accepted: Accepted, provider: str, outcome: str) -> None:
    """What a delivery did, on the request's access line (one line per callback), else on a
    line of its own (``callback accepted (succeeded)``)."""
    fields = {
        "task_id": accepted.task_id,
        "provider": provider,
        "delivery": accepted.status,
        "status": outcome,
    }
    if not receiver_log.on_access_line(**fields):
        log.info("callback %s (%s)", accepted.status, outcome, extra=fields)


async def _confirmed(
    rt: Runtime, provider: Provider, task_id: str, headers: Mapping[str, str], body: bytes
) -> Callback | None:
    """The callback with its outcome replaced by a read of the task (see receiver.confirm);
    a body we cannot parse is still a reason to read."""
    try:
        claimed: Callback | None = provider.read_callback(headers, body)
    except BadRequest:
        claimed = None
    outcome = await confirmed_outcome(rt, provider, task_id, claimed.outcome if claimed else None)
    if outcome is None:
        return None
    return Callback(
        delivery_key=claimed.delivery_key if claimed else "",  # "": keyed on the body
        outcome=outcome,
        provider_task_id=outcome.provider_task_id,
    )


async def accept_account_webhook(
    rt: Runtime, provider_name: str, headers: Mapping[str, str], read: BodyReader
) -> Accepted:
    """An account-level webhook, verified with the provider's configured secret. A task
    submitted elsewhere is adopted, so its results are archived like our own."""
    provider = rt.provider(provider_name)
    if type(provider).verify_account_webhook is Provider.verify_account_webhook:
        raise NotFound(f"{provider.name} has no account-level webhooks")  # body left unread
    with _counted(provider.name):
        body = await read(rt.settings.server.max_body_bytes)
        await provider.verify_account_webhook(headers, body)
        callback = provider.read_callback(headers, body)
        if not callback.provider_task_id:
            raise BadRequest("webhook names no task")
        task = await adopt(rt, provider.name, callback)
        accepted = await _record(rt, provider, task.id, callback, body)
    _log_delivery(accepted, provider.name, callback.outcome.status.value)
    return accepted


async def adopt(rt: Runtime, provider: str, callback: Callback) -> Task:
    """The task with this provider task id, recorded now if it was submitted elsewhere."""
    assert callback.provider_task_id is not None
    task = await rt.ledger.find_task(provider, callback.provider_task_id)
    if task is not None:
        return task
    new = NewTask(
        provider=provider,
        prompt="(submitted elsewhere)",
        destination=rt.settings.default_destination,
        model=callback.outcome.model,
        metadata={"source": "account_webhook"},
        notify_url=rt.settings.notify.default_url,
    )
    task, _ = await rt.ledger.create_task(
        new, idempotency_key=f"adopt:{provider}:{callback.provider_task_id}"
    )
    await rt.ledger.mark_submitted(task.id, callback.provider_task_id, next_poll_at=None)
    return task
