"""``GET /openapi.json`` and ``GET /docs``: the HTTP contract, generated from the models that
render the responses (:mod:`receiver.views`) and parse the requests (``TaskRequest``).

Each operation below names its response models by status; their JSON schemas come from
pydantic, so a field added to a view appears here by construction. Our notifications to the
application are described in the OpenAPI 3.1 ``webhooks`` section.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from .. import __version__
from ..submit import TaskRequest
from ..views import (
    AccountHookAnswer,
    CreatedTaskView,
    ErrorEnvelope,
    HealthView,
    HookAnswer,
    NotificationPayload,
    ReadyView,
    RedeliveryView,
    StatusEvent,
    TaskPage,
    TaskView,
)
from .bulk import BulkRequest, BulkResult
from .common import runtime

REF = "#/components/schemas/{model}"
ERRORS = {
    400: "Malformed body",
    401: "Bad credentials or signature",
    404: "Not found",
    409: "Not possible in the task's state",
    413: "Body too large",
    422: "A field outside its limits (named in the message)",
    502: "The provider refused or failed the request",
    503: "Ledger unavailable (or shutting down); retry",
}
API_KEY: list[dict[str, list[str]]] = [{"apiKey": []}]
TASK_READ: list[dict[str, list[str]]] = [{"apiKey": []}, {"accessToken": []}]


@dataclass(frozen=True)
class Body:
    """A response (or request) body: a model in a media type, or a plain description."""

    description: str
    model: type[BaseModel] | None = None
    media: str = "application/json"


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    summary: str
    ok: dict[int, Body]
    errors: tuple[int, ...] = ()
    security: list[dict[str, list[str]]] | None = None
    params: list[dict[str, Any]] = field(default_factory=list)
    request: type[BaseModel] | None = None


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}}


_TASK_ID = [_path("task_id")]


def _on_task(
    suffix: str, method: str, summary: str, ok: dict[int, Body], errors: tuple[int, ...]
) -> Operation:
    """A route of one task: a read also takes the task's access token, a change an API key."""
    security = TASK_READ if method == "get" else API_KEY
    return Operation(
        f"/v1/tasks/{{task_id}}{suffix}", method, summary, ok, errors, security, _TASK_ID
    )


def _hook(params: list[str], summary: str, answer: type[BaseModel]) -> Operation:
    """A provider's delivery: answered 2xx only once it is committed."""
    return Operation(
        "/v1/hooks/" + "/".join(f"{{{name}}}" for name in params),
        "post",
        summary,
        {200: Body("Accepted, or a duplicate delivery", answer)},
        (400, 401, 404, 413, 422, 503),
        None,
        [_path(name) for name in params],
    )


def _bulk(action: str, summary: str) -> Operation:
    """A bulk action by filter; a dry run first counts what it would touch."""
    return Operation(
        f"/v1/tasks/{action}",
        "post",
        f"{summary} (dry_run: count them first)",
        {
            200: Body("Dry run: how many match, as of when", BulkResult),
            202: Body("Queued", BulkResult),
        },
        (400, 401, 413, 422, 503),
        API_KEY,
        request=BulkRequest,
    )


OPERATIONS = [
    Operation(
        "/v1/tasks",
        "post",
        "Create and submit a task",
        {
            202: Body("Created and submitted", CreatedTaskView),
            200: Body("The task this Idempotency-Key made before", CreatedTaskView),
        },
        (400, 401, 413, 422, 503),
        API_KEY,
        [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            }
        ],
        TaskRequest,
    ),
    Operation(
        "/v1/tasks",
        "get",
        "List tasks, newest first",
        {200: Body("A page of tasks", TaskPage)},
        (401, 422, 503),
        API_KEY,
        [
            _query("status"),
            _query("provider"),
            _query("created_after", "number"),
            _query("created_before", "number"),
            _query("cursor"),
            _query("limit", "integer"),
        ],
    ),
    _bulk("replay", "Replay every failed task a filter matches"),
    _bulk("redeliver", "Send again the final notification of every task a filter matches"),
    _on_task("", "get", "One task", {200: Body("The task", TaskView)}, (401, 404, 503)),
    _on_task(
        "/events",
        "get",
        "Status changes as server-sent events (event: status), until the task ends",
        {200: Body("One `data:` line per change", StatusEvent, "text/event-stream")},
        (401, 404, 503),
    ),
    _on_task(
        "/replay",
        "post",
        "Archive again from the provider's current result",
        {202: Body("Queued for archiving", TaskView)},
        (401, 404, 409, 502, 503),
    ),
    _on_task(
        "/redeliver",
        "post",
        "Send the task's final notification again, as a new event",
        {202: Body("Queued", RedeliveryView)},
        (401, 409, 503),
    ),
    _hook(
        ["provider", "token"],
        "Callback for a task this service submitted (2xx only once committed)",
        HookAnswer,
    ),
    _hook(
        ["provider"],
        "Account-level webhook (tasks submitted elsewhere are adopted and archived)",
        AccountHookAnswer,
    ),
    Operation("/healthz", "get", "Liveness", {200: Body("Alive", HealthView)}),
    Operation(
        "/readyz", "get", "Readiness (ledger reachable)", {200: Body("Ready", ReadyView)}, (503,)
    ),
    Operation(
        "/metrics",
        "get",
        "Prometheus metrics",
        {200: Body("Prometheus text format", None, "text/plain")},
    ),
    Operation("/openapi.json", "get", "This document", {200: Body("OpenAPI 3.1")}),
    Operation("/docs", "get", "This document, to read", {200: Body("HTML", None, "text/html")}),
]

WEBHOOKS = {
    "task.archived": "Every image of the task and its sidecars are stored",
    "task.failed": "The task ended without an archive (reason in data.failure)",
}


def _content(body: Body) -> dict[str, Any]:
    out: dict[str, Any] = {"description": body.description}
    if body.model is not None:
        out["content"] = {body.media: {"schema": {"$ref": REF.format(model=body.model.__name__)}}}
    elif body.media != "application/json":
        out["content"] = {body.media: {"schema": {"type": "string"}}}
    else:
        out["content"] = {body.media: {"schema": {"type": "object"}}}
    return out


def _operation(op: Operation) -> dict[str, Any]:
    responses = {str(code): _content(body) for code, body in op.ok.items()}
    for code in op.errors:
        responses[str(code)] = _content(Body(ERRORS[code], ErrorEnvelope))
    responses["default"] = _content(Body("Any other error", ErrorEnvelope))
    out: dict[str, Any] = {"summary": op.summary, "responses": responses}
    if op.security is not None:
        out["security"] = op.security
    if op.params:
        out["parameters"] = op.params
    if op.request is not None:
        out["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF.format(model=op.request.__name__)}}
            },
        }
    return out


def _webhook(event: str, description: str) -> dict[str, Any]:
    header = {"in": "header", "required": True, "schema": {"type": "string"}}
    return {
        "post": {
            "summary": f"{event}: {description}",
            "description": "Signed with notify.secret as Standard Webhooks define it; retried "
            "with backoff for at least 24 hours under the same webhook-id.",
            "parameters": [
                {"name": "webhook-id", **header},
                {"name": "webhook-timestamp", **header},
                {"name": "webhook-signature", **header},
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": REF.format(model=NotificationPayload.__name__)}
                    }
                },
            },
            "responses": {"2XX": {"description": "Received; any other answer is retried"}},
        }
    }


@cache
def spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once per process; it depends on code only)."""
    models: list[type[BaseModel]] = []
    for op in OPERATIONS:
        for body in op.ok.values():
            if body.model is not None and body.model not in models:
                models.append(body.model)
    models += [ErrorEnvelope, NotificationPayload]
    inputs: list[tuple[type[BaseModel], Any]] = [(m, "serialization") for m in models]
    inputs += [(TaskRequest, "validation"), (BulkRequest, "validation")]
    _, schemas = models_json_schema(inputs, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "receiver",
            "version": __version__,
            "description": "Submit image tasks to hosted FLUX-family APIs, receive their "
            "callbacks, archive every result with a JSON sidecar, and be told when it is done.",
        },
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "accessToken": {"type": "apiKey", "in": "query", "name": "access_token"},
            },
        },
        "paths": paths,
        "webhooks": {event: _webhook(event, text) for event, text in WEBHOOKS.items()},
    }


async def openapi_endpoint(request: Request) -> Response:
    return JSONResponse(spec())


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>receiver API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
</head>
<body>
<noscript>The reference needs JavaScript; the raw document is at
<a href="openapi.json">openapi.json</a>.</noscript>
<redoc spec-url="openapi.json"></redoc>
<script src="{script}"></script>
</body>
</html>
"""


async def docs_endpoint(request: Request) -> Response:
    """A Redoc page over /openapi.json; its script URL is ``server.docs_script_url``."""
    script = runtime(request).settings.server.docs_script_url
    return HTMLResponse(_PAGE.format(script=html.escape(script, quote=True)))
