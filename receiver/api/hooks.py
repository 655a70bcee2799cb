"""Callback intake. 2xx only after the delivery and its job are committed."""

from __future__ import annotations

import hashlib
import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import metrics
from ..errors import BadRequest, NotFound, ReceiverError, SignatureError
from ..models import NewTask
from ..signatures import task_secrets, verify_hook_token
from .common import from_error, read_body, runtime

log = logging.getLogger("receiver.hooks")


async def task_hook(request: Request) -> Response:
    """``POST /v1/hooks/{provider}/{token}``: a callback for a task we submitted."""
    rt = runtime(request)
    name = request.path_params["provider"]
    try:
        provider = rt.provider(name)
    except NotFound as exc:
        return from_error(exc)
    try:
        task_id = verify_hook_token(rt.settings.secret_keys, request.path_params["token"], name)
        body = await read_body(request, rt.settings.server.max_body_bytes)
        secrets = task_secrets(rt.settings.secret_keys, task_id, provider.secret_format)
        await provider.verify_callback(request.headers, body, secrets)
        callback = provider.parse_callback(request.headers, body)
        delivery_key = callback.delivery_key or "body:" + hashlib.sha256(body).hexdigest()
        result = await rt.ledger.record_outcome(
            task_id,
            callback.outcome,
            provider=name,
            delivery_key=delivery_key,
            deadline=provider.deadline_for(callback.outcome, time.time()),
        )
        if result.task is None:
            raise NotFound("no such task")
    except SignatureError as exc:
        metrics.VERIFY_FAILURES.labels(name, exc.cause).inc()
        metrics.DELIVERIES.labels(name, "refused").inc()
        log.info("callback refused: %s", exc.message, extra={"provider": name})
        return from_error(exc)
    except ReceiverError as exc:
        metrics.DELIVERIES.labels(name, exc.code).inc()
        log.info("callback not accepted: %s", exc.message, extra={"provider": name})
        return from_error(exc)
    if result.duplicate:
        metrics.DELIVERIES.labels(name, "duplicate").inc()
        return JSONResponse({"status": "duplicate"})
    metrics.DELIVERIES.labels(name, "accepted").inc()
    if result.job_enqueued:
        rt.changes.notify("jobs")
    rt.changes.notify(f"task:{task_id}")
    if result.task.status.final:
        rt.changes.notify("notify")
    log.info(
        "callback accepted (%s)",
        callback.outcome.status.value,
        extra={"task_id": task_id, "provider": name},
    )
    return JSONResponse({"status": "accepted"})


async def account_hook(request: Request) -> Response:
    """``POST /v1/hooks/{provider}``: an account-level webhook, verified with the provider's
    configured secret. Tasks submitted elsewhere are adopted so their results are archived."""
    rt = runtime(request)
    name = request.path_params["provider"]
    try:
        provider = rt.provider(name)
        body = await read_body(request, rt.settings.server.max_body_bytes)
        await provider.verify_account_webhook(request.headers, body)
        callback = provider.parse_callback(request.headers, body)
        if not callback.provider_task_id:
            raise BadRequest("webhook names no task")
        task = await rt.ledger.find_task(name, callback.provider_task_id)
        if task is None:
            new = NewTask(
                provider=name,
                prompt="(submitted elsewhere)",
                destination=rt.settings.default_destination,
                model=callback.outcome.model,
                metadata={"source": "account_webhook"},
                notify_url=rt.settings.notify.default_url,
            )
            task, _ = await rt.ledger.create_task(
                new, idempotency_key=f"adopt:{name}:{callback.provider_task_id}"
            )
            await rt.ledger.mark_submitted(task.id, callback.provider_task_id, next_poll_at=None)
        delivery_key = callback.delivery_key or "body:" + hashlib.sha256(body).hexdigest()
        result = await rt.ledger.record_outcome(
            task.id,
            callback.outcome,
            provider=name,
            delivery_key=delivery_key,
            deadline=provider.deadline_for(callback.outcome, time.time()),
        )
    except SignatureError as exc:
        metrics.VERIFY_FAILURES.labels(name, exc.cause).inc()
        metrics.DELIVERIES.labels(name, "refused").inc()
        return from_error(exc)
    except ReceiverError as exc:
        metrics.DELIVERIES.labels(name, exc.code).inc()
        return from_error(exc)
    outcome = "duplicate" if result.duplicate else "accepted"
    metrics.DELIVERIES.labels(name, outcome).inc()
    if result.job_enqueued:
        rt.changes.notify("jobs")
    return JSONResponse({"status": outcome, "task_id": task.id})
