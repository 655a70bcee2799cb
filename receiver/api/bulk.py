"""``POST /v1/tasks/replay`` and ``POST /v1/tasks/redeliver``: bulk actions by filter.

A dry run answers how many tasks match and ``as_of``; the same body with that ``as_of`` and
``dry_run: false`` acts on exactly those tasks (see :mod:`receiver.replay`). The models below
validate the body and describe it in ``/openapi.json``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.requests import Request
from starlette.responses import Response

from ..replay import bulk, key_label, parse_filter
from ..views import copy_fields
from .common import read_model, render, runtime
from .tasks import _bearer, require_api_key


class BulkFilter(BaseModel):
    """Which tasks: every field given must match (all optional)."""

    model_config = ConfigDict(extra="forbid")

    status: str | None = Field(default=None, description="submitted, completed, archived or failed")
    provider: str | None = None
    model: str | None = None
    destination: str | None = None
    reason: str | None = Field(default=None, description="failure reason, e.g. fetch_failed")
    since: str | None = Field(
        default=None, description="created since: 1h, 30m, ISO date-time, epoch"
    )
    until: str | None = Field(default=None, description="created before (same forms)")
    q: str | None = Field(default=None, description="words in the prompt (word prefixes)")
    as_of: str | float | None = Field(
        default=None, description="the dry run's as_of: only tasks unchanged since the count"
    )


class BulkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filter: BulkFilter = BulkFilter()
    dry_run: StrictBool = Field(default=False, description="only count the tasks")


class SkippedTask(BaseModel):
    id: str
    reason: str


class BulkResult(BaseModel):
    action: str
    bulk_id: str | None = Field(description="names the action in each task's event log")
    dry_run: bool
    matched: int = Field(description="tasks the filter matches (as of as_of)")
    as_of: float
    done: int = Field(description="tasks queued again (0 on a dry run)")
    skipped: int
    skipped_tasks: list[SkippedTask] = Field(description="the first 100 skipped, and why")


async def _bulk(request: Request, action: str) -> Response:
    rt = runtime(request)
    require_api_key(request)
    req = await read_model(request, BulkRequest)
    where = parse_filter(req.filter.model_dump(exclude_none=True))
    result = await bulk(
        rt, action, where, actor="api:" + key_label(_bearer(request) or ""), dry_run=req.dry_run
    )
    view = copy_fields(
        BulkResult, result, skipped=len(result.skipped), skipped_tasks=result.skipped[:100]
    )
    return render(view, 200 if req.dry_run else 202)


async def bulk_replay(request: Request) -> Response:
    """Replay every failed task the filter matches."""
    return await _bulk(request, "replay")


async def bulk_redeliver(request: Request) -> Response:
    """Send the final notification again for every ended task the filter matches."""
    return await _bulk(request, "redeliver")
