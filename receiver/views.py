"""What the outside world sees: API responses, the error envelope, event and notification
payloads, as pydantic models.

The same models render every response (``model_dump``) and generate ``/openapi.json``
(``api/openapi.py``), so the document cannot drift from what the routes answer. Every model
forbids undeclared fields, which the schema states as ``additionalProperties: false``: a field
added to a response without its model fails the schema test.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .models import Reason, Status, Task


class View(BaseModel):
    model_config = ConfigDict(extra="forbid")


V = TypeVar("V", bound=BaseModel)


def copy_fields(view: type[V], source: object, **given: Any) -> V:
    """``view`` from the attributes of ``source`` it declares, plus what ``given`` adds."""
    taken = {name: getattr(source, name) for name in view.model_fields if name not in given}
    return view(**taken, **given)


class FailureView(View):
    reason: str = Field(
        description="provider_error, moderated, expired, fetch_failed, store_failed or "
        "unparsed_response",
        examples=[r.value for r in Reason],
    )
    message: str | None


class ObjectView(View):
    """One archived image."""

    uri: str = Field(description="Where the image is stored (s3://…, a path, a URL)")
    sidecar_uri: str = Field(description="Its JSON metadata sidecar")
    sha256: str
    bytes: int
    content_type: str
    width: int | None
    height: int | None
    provenance: dict[str, Any] | None = Field(
        description="The sidecar's provenance block (C2PA); its status is one of trusted, "
        "valid, invalid, absent, unreadable, skipped"
    )


class RetryView(View):
    """Why archiving is being retried, and when it runs again."""

    attempts: int
    last_error: str
    next_attempt_at: float | None = Field(description="Unix time, seconds")


class TaskView(View):
    """A task as ``GET /v1/tasks/{id}`` shows it.

    Names again the stored ``models.Task`` fields it publishes, on purpose: this is the
    contract (descriptions, what is required, no storage-only fields such as poll state,
    provider_state or the idempotency key), the dataclass is storage; ``of`` copies them by
    name through ``copy_fields``, so a field renamed on one side fails every API test."""

    id: str
    provider: str
    provider_task_id: str | None
    model: str | None
    prompt: str
    params: dict[str, Any]
    destination: str
    metadata: dict[str, Any]
    notify_url: str | None
    status: Status
    failure: FailureView | None = Field(description="Set when the status is failed")
    objects: list[ObjectView]
    retry: RetryView | None = Field(
        default=None, description="Set while archiving is being retried after an error"
    )
    seed: int | None
    cost: str | None = Field(description="As the provider reports it")
    created_at: float = Field(description="Unix time, seconds")
    submitted_at: float | None
    completed_at: float | None
    archived_at: float | None
    updated_at: float

    @classmethod
    def of(cls, task: Task) -> TaskView:
        return copy_fields(
            cls,
            task,
            failure=(
                FailureView(reason=task.failure_reason, message=task.failure_message)
                if task.status is Status.FAILED and task.failure_reason
                else None
            ),
            objects=[
                copy_fields(ObjectView, o, provenance=(o.sidecar or {}).get("provenance"))
                for o in task.objects
            ],
            retry=(
                RetryView(
                    attempts=task.attempts,
                    last_error=task.last_error,
                    next_attempt_at=task.next_attempt_at,
                )
                if task.last_error
                else None
            ),
            seed=task.outcome.seed if task.outcome else None,
            cost=task.outcome.cost if task.outcome else None,
        )


class CreatedTaskView(TaskView):
    """The task as ``POST /v1/tasks`` answers it, with its public access token."""

    access_token: str = Field(
        description="Short-lived, for this task's GET routes only (Bearer or ?access_token=)"
    )


class TaskPage(View):
    tasks: list[TaskView]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")


class ErrorDetail(View):
    code: str = Field(description="Stable and machine-readable, e.g. bad_signature")
    message: str


class ErrorEnvelope(View):
    """Every error, from every route."""

    error: ErrorDetail

    @classmethod
    def of(cls, code: str, message: str) -> ErrorEnvelope:
        return cls(error=ErrorDetail(code=code, message=message))


class HookAnswer(View):
    status: Literal["accepted", "duplicate"] = Field(
        description="duplicate: this delivery was recorded before; nothing changed"
    )


class AccountHookAnswer(HookAnswer):
    task_id: str = Field(description="Our task for the provider's task (adopted if new)")


class RedeliveryView(View):
    event_id: str = Field(description="The new notification's webhook-id")
    url: str


class HealthView(View):
    status: Literal["ok"]
    probe: str | None = Field(
        default=None,
        description="With ?probe=NONCE: an HMAC of the nonce under the first secret key, so "
        "`receiver check` can tell that public_url reaches a server with its configuration",
    )


class ReadyView(View):
    status: Literal["ready", "degraded"] = Field(
        description="degraded: still serving, but a destination or provider has been failing"
    )
    reasons: list[str] | None = None


class StatusEvent(BaseModel):
    """The data of one ``status`` server-sent event; the event's own fields (reason, message,
    objects, images) follow the status."""

    model_config = ConfigDict(extra="allow")

    task_id: str
    status: str
    at: float


class NotifiedObject(View):
    index: int
    uri: str
    sidecar_uri: str
    sha256: str
    bytes: int
    content_type: str
    presigned_url: str | None = Field(description="A time-limited GET link, where possible")
    sidecar: dict[str, Any] | None = Field(description="The JSON sidecar's content")


class NotifiedTask(TaskView):
    objects: list[NotifiedObject]  # type: ignore[assignment]


class NotificationPayload(View):
    """The body of our signed (Standard Webhooks) POST to the task's ``notify_url``."""

    id: str = Field(description="Also the webhook-id header; the same on every retry")
    type: Literal["task.archived", "task.failed"]
    timestamp: int
    data: NotifiedTask
