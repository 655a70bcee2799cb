"""``POST /v1/tasks/replay`` and ``POST /v1/tasks/redeliver``: bulk actions by filter.

Body: ``{"filter": {"status", "provider", "model", "destination", "reason", "since", "until",
"q", "as_of"}, "dry_run": bool}``. A dry run answers how many tasks match and ``as_of``; the
same body with that ``as_of`` and ``dry_run: false`` acts on exactly those tasks."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import ReceiverError, ValidationFailed
from ..replay import FILTER_KEYS, bulk, key_label, parse_filter
from .common import from_error, parse_object, read_body, runtime
from .tasks import _bearer, require_api_key


async def _bulk(request: Request, action: str) -> Response:
    rt = runtime(request)
    try:
        require_api_key(request)
        body = parse_object(await read_body(request, rt.settings.server.max_body_bytes))
        unknown = set(body) - {"filter", "dry_run"}
        if unknown:
            raise ValidationFailed(sorted(unknown)[0], "unknown field")
        raw_filter = body.get("filter") or {}
        if not isinstance(raw_filter, dict):
            raise ValidationFailed("filter", "must be an object")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise ValidationFailed("dry_run", "must be true or false")
        for key in raw_filter:
            if key not in FILTER_KEYS:
                raise ValidationFailed(f"filter.{key}", "unknown filter")
        where = parse_filter(raw_filter)
        result = await bulk(
            rt, action, where, actor="api:" + key_label(_bearer(request) or ""), dry_run=dry_run
        )
    except ReceiverError as exc:
        return from_error(exc)
    return JSONResponse(result.to_json(), status_code=200 if dry_run else 202)


async def bulk_replay(request: Request) -> Response:
    return await _bulk(request, "replay")


async def bulk_redeliver(request: Request) -> Response:
    return await _bulk(request, "redeliver")
