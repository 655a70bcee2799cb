"""``GET /openapi.json``: the HTTP contract, built from the same models the handlers use."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..submit import TaskRequest
from .bulk import BulkRequest, BulkResult

_ERROR = {"$ref": "#/components/schemas/Error"}
_TASK = {"$ref": "#/components/schemas/Task"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed body",
        401: "Bad credentials or signature",
        404: "Not found",
        409: "Not possible in the task's state",
        413: "Body too large",
        422: "A field outside its limits (named in the message)",
        503: "Ledger unavailable; retry",
    }
    return {str(c): _json(_ERROR, text[c]) for c in codes}


_TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
_PROVIDER = {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}}


def _q(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}}


def spec() -> dict[str, Any]:
    task_request = TaskRequest.model_json_schema()
    obj = {
        "type": "object",
        "properties": {
            "uri": {"type": "string"},
            "sidecar_uri": {"type": "string"},
            "sha256": {"type": "string"},
            "bytes": {"type": "integer"},
            "content_type": {"type": "string"},
            "width": {"type": ["integer", "null"]},
            "height": {"type": ["integer", "null"]},
            "provenance": {
                "type": ["object", "null"],
                "description": "The sidecar's provenance block (C2PA); status is one of "
                "trusted, valid, invalid, absent, unreadable, skipped",
            },
        },
    }
    task = {
        "type": "object",
        "required": ["id", "provider", "status", "objects"],
        "properties": {
            "id": {"type": "string"},
            "provider": {"type": "string"},
            "provider_task_id": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
            "prompt": {"type": "string"},
            "params": {"type": "object"},
            "destination": {"type": "string"},
            "metadata": {"type": "object"},
            "notify_url": {"type": ["string", "null"]},
            "status": {"enum": ["submitted", "completed", "archived", "failed"]},
            "failure": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "properties": {
                            "reason": {
                                "enum": [
                                    "provider_error",
                                    "moderated",
                                    "expired",
                                    "fetch_failed",
                                    "store_failed",
                                ]
                            },
                            "message": {"type": "string"},
                        },
                    },
                ]
            },
            "objects": {"type": "array", "items": {"$ref": "#/components/schemas/StoredObject"}},
            "seed": {"type": ["integer", "null"]},
            "cost": {"type": ["string", "null"]},
            "access_token": {"type": "string", "description": "Only on creation"},
            "created_at": {"type": "number"},
            "updated_at": {"type": "number"},
        },
    }
    error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    }
    bearer: list[dict[str, list[str]]] = [{"apiKey": []}]
    task_read: list[dict[str, list[str]]] = [{"apiKey": []}, {"accessToken": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "receiver", "version": __version__},
        "components": {
            "schemas": {
                "TaskRequest": task_request,
                "Task": task,
                "StoredObject": obj,
                "Error": error,
                **_bulk_schemas(),
            },
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "accessToken": {"type": "apiKey", "in": "query", "name": "access_token"},
            },
        },
        "paths": {
            "/v1/tasks": {
                "post": {
                    "summary": "Create and submit a task",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/TaskRequest"}
                            }
                        },
                    },
                    "responses": {
                        "202": _json(_TASK, "Created"),
                        "200": _json(_TASK, "The task this Idempotency-Key made"),
                        **_errors(400, 401, 413, 422),
                    },
                },
                "get": {
                    "summary": "List tasks, newest first",
                    "security": bearer,
                    "parameters": [
                        _q("status"),
                        _q("provider"),
                        _q("created_after", "number"),
                        _q("created_before", "number"),
                        _q("cursor"),
                        _q("limit", "integer"),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "tasks": {"type": "array", "items": _TASK},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            },
                            "A page of tasks",
                        ),
                        **_errors(401, 422),
                    },
                },
            },
            "/v1/tasks/replay": _bulk_path(
                "Replay every failed task a filter matches (dry_run: only count)"
            ),
            "/v1/tasks/redeliver": _bulk_path(
                "Redeliver the notifications of every ended task a filter matches"
            ),
            "/v1/tasks/{task_id}": {
                "get": {
                    "summary": "One task",
                    "security": task_read,
                    "parameters": [_TASK_ID],
                    "responses": {"200": _json(_TASK, "The task"), **_errors(401, 404)},
                }
            },
            "/v1/tasks/{task_id}/events": {
                "get": {
                    "summary": "Status changes as server-sent events",
                    "security": task_read,
                    "parameters": [_TASK_ID],
                    "responses": {"200": {"description": "text/event-stream"}, **_errors(401, 404)},
                }
            },
            "/v1/tasks/{task_id}/replay": {
                "post": {
                    "summary": "Archive again from the provider's current result",
                    "security": bearer,
                    "parameters": [_TASK_ID],
                    "responses": {"202": _json(_TASK, "Requeued"), **_errors(401, 404, 409)},
                }
            },
            "/v1/tasks/{task_id}/redeliver": {
                "post": {
                    "summary": "Send the final notification again",
                    "security": bearer,
                    "parameters": [_TASK_ID],
                    "responses": {"202": {"description": "Queued"}, **_errors(401, 404, 409)},
                }
            },
            "/v1/hooks/{provider}/{token}": {
                "post": {
                    "summary": "Callback for a task this service submitted",
                    "parameters": [
                        _PROVIDER,
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {"description": "Accepted or duplicate"},
                        **_errors(400, 401, 404, 413, 503),
                    },
                }
            },
            "/v1/hooks/{provider}": {
                "post": {
                    "summary": "Account-level webhook (tasks submitted elsewhere)",
                    "parameters": [_PROVIDER],
                    "responses": {
                        "200": {"description": "Accepted or duplicate"},
                        **_errors(400, 401, 404, 413, 503),
                    },
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "Alive"}}}
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness (ledger reachable)",
                    "responses": {"200": {"description": "Ready"}, **_errors(503)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text/plain"}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1"}},
                }
            },
        },
    }


_REF = "#/components/schemas/{model}"


def _bulk_schemas() -> dict[str, Any]:
    """BulkRequest, BulkResult and the models they use, with references into components."""
    out: dict[str, Any] = {}
    for model in (BulkRequest, BulkResult):
        schema = model.model_json_schema(ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _bulk_path(summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"apiKey": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": _REF.format(model="BulkRequest")}}
                },
            },
            "responses": {
                "200": _json({"$ref": _REF.format(model="BulkResult")}, "Dry run: the count"),
                "202": _json({"$ref": _REF.format(model="BulkResult")}, "Done"),
                **_errors(400, 401, 413, 422),
            },
        }
    }


async def openapi_endpoint(request: Request) -> Response:
    return JSONResponse(spec())
