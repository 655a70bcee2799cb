"""Creating a task: validate, record, submit to the provider with our callback settings."""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import replace
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from . import netguard, tracing
from .errors import BadRequest, NotFound, ProviderError, ValidationFailed
from .models import NewTask, Reason, Task
from .providers import CallbackTarget
from .providers.base import check_outcome
from .runtime import Runtime
from .signatures import hook_token, task_secrets

log = logging.getLogger(__name__)


class TaskRequest(BaseModel):
    """Body of ``POST /v1/tasks``."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1, max_length=64)
    prompt: str = Field(min_length=1)
    model: str | None = Field(default=None, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    destination: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    notify_url: str | None = Field(default=None, max_length=2000)


def callback_url(rt: Runtime, task_id: str, provider: str) -> str:
    token = hook_token(rt.settings.secret_keys, task_id, provider)
    return f"{rt.settings.public_url}/v1/hooks/{provider}/{token}"


def validate(rt: Runtime, req: TaskRequest) -> NewTask:
    """Everything checked before any call goes out: a bad field is a 422 naming it."""
    try:
        provider = rt.provider(req.provider)
    except NotFound as exc:
        raise ValidationFailed("provider", exc.message) from None
    if req.provider not in rt.settings.providers:
        # Accepting it would only fail later, at the provider, without credentials.
        configured = ", ".join(sorted(rt.settings.providers)) or "none"
        raise ValidationFailed(
            "provider",
            f"{req.provider!r} is not configured on this server (configured: {configured}); "
            f"add a [providers.{req.provider}] section",
        )
    destination = req.destination or rt.settings.default_destination
    if destination not in rt.destinations:
        raise ValidationFailed(
            "destination", f"{destination!r} is not configured ({', '.join(rt.destinations)})"
        )
    meta_size = len(json.dumps(req.metadata))
    if meta_size > rt.settings.server.max_metadata_bytes:
        raise ValidationFailed(
            "metadata", f"{meta_size} bytes, over {rt.settings.server.max_metadata_bytes}"
        )
    notify_url = req.notify_url or rt.settings.notify.default_url
    if notify_url is not None and not notify_url.startswith(("http://", "https://")):
        raise ValidationFailed("notify_url", "must be an http(s) URL")
    if notify_url is not None:
        _check_notify_host(rt, notify_url)
    if notify_url is not None and not rt.settings.notify.secret:
        raise ValidationFailed("notify_url", "this server has no notify.secret to sign with")
    provider.validate(req.model, req.prompt, req.params)
    return NewTask(
        provider=req.provider,
        prompt=req.prompt,
        destination=destination,
        model=req.model or provider.default_model,
        params=req.params,
        metadata=req.metadata,
        notify_url=notify_url,
        traceparent=tracing.current_traceparent(),
    )


def _check_notify_host(rt: Runtime, url: str) -> None:
    """An address literal is judged now (a name is judged when sending, once resolved)."""
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL:
        raise ValidationFailed("notify_url", "is not a valid URL") from None
    if not host:
        raise ValidationFailed("notify_url", "has no host")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return
    why = netguard.refusal(ip, netguard.parse_networks(rt.settings.notify.allowed_networks))
    if why:
        raise ValidationFailed(
            "notify_url",
            f"{ip} is not a public address ({why}); notify.allowed_networks can allow it",
        )


async def create_and_submit(
    rt: Runtime, req: TaskRequest, idempotency_key: str | None = None
) -> tuple[Task, bool]:
    """Record the task, then submit it. Returns ``(task, created)``; a repeated idempotency
    key returns the first task without a second submission."""
    new = validate(rt, req)
    task, created = await rt.ledger.create_task(new, idempotency_key=idempotency_key)
    if not created:
        return task, False
    return await submit(rt, task), True


async def submit(rt: Runtime, task: Task) -> Task:
    provider = rt.provider(task.provider)
    target = None
    if provider.delivers_callbacks:
        secret = task_secrets(rt.settings.secret_keys, task.id, provider.secret_format)[0]
        target = CallbackTarget(url=callback_url(rt, task.id, task.provider), secret=secret)
    extra = {"task_id": task.id, "provider": task.provider}
    try:
        with tracing.span(
            "provider submit",
            {"receiver.provider": task.provider, "receiver.task_id": task.id},
            kind="client",
        ):
            submission = await provider.submit(task, target)
    except ProviderError as exc:
        rt.troubles.failed("provider", task.provider, exc.message)
        log.warning("submission failed: %s", exc.message, extra=extra)
        failed = await rt.ledger.fail_task(task.id, Reason.PROVIDER_ERROR, exc.message)
        return failed or task
    except Exception as exc:  # an answer the adapter could not read, or a bug: fail visibly
        log.exception("submission crashed", extra=extra)
        message = f"submission crashed: {type(exc).__name__}: {exc}"[:500]
        failed = await rt.ledger.fail_task(task.id, Reason.PROVIDER_ERROR, message)
        return failed or task
    if submission.outcome is not None:
        try:
            submission = replace(
                submission, outcome=check_outcome(submission.outcome, provider.name)
            )
        except BadRequest as exc:
            failed = await rt.ledger.fail_task(task.id, Reason.PROVIDER_ERROR, exc.message)
            return failed or task
    rt.troubles.succeeded("provider", task.provider)
    conf = rt.settings.provider(task.provider)
    if submission.outcome is not None:
        first_poll = None
    elif provider.delivers_callbacks:
        grace = conf.callback_grace_seconds
        first_poll = rt.clock.now() + (grace if grace is not None else provider.callback_grace)
    else:
        first_poll = rt.clock.now() + (conf.poll_interval or 2.0)
    updated = await rt.ledger.mark_submitted(
        task.id,
        submission.provider_task_id,
        next_poll_at=first_poll,
        provider_state=submission.state,
    )
    if submission.outcome is not None:
        result = await rt.ledger.record_outcome(
            task.id,
            submission.outcome,
            provider=task.provider,
            delivery_key=f"sync:{task.id}",
            deadline=provider.deadline_for(submission.outcome, rt.clock.now()),
        )
        updated = result.task or updated
    log.info("submitted", extra={**extra, "status": updated.status.value})
    return updated
