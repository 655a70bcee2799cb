"""Plain data passed between the adapter families; no I/O here."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    SUBMITTED = "submitted"
    COMPLETED = "completed"
    ARCHIVED = "archived"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (Status.ARCHIVED, Status.FAILED)


class Reason(StrEnum):
    PROVIDER_ERROR = "provider_error"
    MODERATED = "moderated"
    EXPIRED = "expired"
    FETCH_FAILED = "fetch_failed"
    STORE_FAILED = "store_failed"
    # The provider answered, but no image could be read from the answer; the raw answer is kept
    # in the ledger so ``receiver replay`` can parse it again after an upgrade.
    UNPARSED_RESPONSE = "unparsed_response"


class OutcomeStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    MODERATED = "moderated"
    # Final: an answer we could not read. ``Outcome.raw`` carries it for the ledger to keep.
    UNPARSED = "unparsed"


def new_id(prefix: str = "tsk") -> str:
    """Time-ordered, unguessable: 12 hex digits of milliseconds then 16 of randomness."""
    return f"{prefix}_{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


@dataclass(frozen=True)
class ResultImage:
    """One result as the provider reports it: a URL with its deadline, or inline bytes."""

    url: str | None = None
    expires_at: float | None = None
    inline: bytes | None = None
    content_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "expires_at": self.expires_at, "content_type": self.content_type}


@dataclass(frozen=True)
class Outcome:
    """A provider's answer in one normalized form, from a callback, a poll or a response."""

    status: OutcomeStatus
    images: tuple[ResultImage, ...] = ()
    provider_task_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    cost: str | None = None
    seed: int | None = None
    model: str | None = None
    # What the provider reports about billing (Vtrix: cost, quantity, unit_price), for the sidecar.
    usage: dict[str, Any] | None = None
    # The provider's answer as received, kept by the ledger when it could not be read (UNPARSED).
    raw: bytes | None = field(default=None, repr=False)
    raw_content_type: str | None = None

    @property
    def final(self) -> bool:
        return self.status is not OutcomeStatus.PENDING

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("raw", None)
        data["status"] = self.status.value
        data["images"] = [img.to_json() for img in self.images]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            status=OutcomeStatus(data["status"]),
            images=tuple(
                ResultImage(
                    url=i.get("url"),
                    expires_at=i.get("expires_at"),
                    content_type=i.get("content_type"),
                )
                for i in data.get("images") or ()
            ),
            provider_task_id=data.get("provider_task_id"),
            error_code=data.get("error_code"),
            error_message=data.get("error_message"),
            cost=data.get("cost"),
            seed=data.get("seed"),
            model=data.get("model"),
            usage=data.get("usage"),
            raw_content_type=data.get("raw_content_type"),
        )


@dataclass(frozen=True)
class StoredObject:
    index: int
    uri: str
    sidecar_uri: str
    key: str
    sha256: str
    bytes: int
    content_type: str
    width: int | None = None
    height: int | None = None
    sidecar: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        # Shallow: the ledger serializes it at once, and asdict's deep copy of the sidecar
        # document cost more than the serialization itself.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredObject:
        return cls(**data)


@dataclass
class Task:
    id: str
    provider: str
    model: str | None
    prompt: str
    params: dict[str, Any]
    destination: str
    metadata: dict[str, Any]
    notify_url: str | None
    status: Status
    created_at: float
    updated_at: float
    provider_task_id: str | None = None
    failure_reason: str | None = None
    failure_message: str | None = None
    outcome: Outcome | None = None
    objects: list[StoredObject] = field(default_factory=list)
    submitted_at: float | None = None
    completed_at: float | None = None
    archived_at: float | None = None
    next_poll_at: float | None = None
    poll_attempts: int = 0
    idempotency_key: str | None = None
    traceparent: str | None = None  # the submission's trace, continued by later steps
    # What the provider told us about this task that later polls need (BFL: polling_url).
    provider_state: dict[str, Any] = field(default_factory=dict)
    # While archiving: the job's attempts so far, its last error and when it runs again.
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: float | None = None

    def public(self) -> dict[str, Any]:
        """The task as the API shows it (contract: GET /v1/tasks/{id}), rendered by its view
        model, which also documents it in /openapi.json."""
        from .views import TaskView

        return TaskView.of(self).model_dump(mode="json")


@dataclass(frozen=True)
class NewTask:
    provider: str
    prompt: str
    destination: str
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    notify_url: str | None = None
    id: str = field(default_factory=new_id)
    traceparent: str | None = None  # W3C trace context of the submission (tracing on)


@dataclass(frozen=True)
class Job:
    """An archive job: fetch every result of ``task_id`` and store it."""

    id: int
    task_id: str
    attempts: int
    deadline: float | None
    lease_owner: str
    lease_expires_at: float


@dataclass(frozen=True)
class Event:
    task_id: str
    seq: int
    status: str
    at: float
    data: dict[str, Any]


@dataclass(frozen=True)
class Notification:
    """One event for the application; the payload is built from the task when sent."""

    id: str  # the webhook-id, the same on every retry
    task_id: str
    event: str  # "task.archived" | "task.failed"
    url: str
    attempts: int
    created_at: float
    lease_owner: str


@dataclass(frozen=True)
class RecordResult:
    """What one callback changed: ``duplicate`` means nothing, nor does ``mismatch`` (the
    callback named another provider task than the one recorded for this task)."""

    duplicate: bool
    task: Task | None
    job_enqueued: bool = False
    mismatch: bool = False


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks a gallery page, a live stream or a bulk action covers (all fields AND).

    ``text`` is a prompt search: words, each matched as a word prefix. ``updated_before``
    pins a bulk action to the tasks its confirmation counted."""

    status: Status | None = None
    provider: str | None = None
    model: str | None = None
    destination: str | None = None
    reason: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    updated_before: float | None = None
    text: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value if self.status else None
        return {k: v for k, v in data.items() if v is not None}
