"""Holds responses to /openapi.json: each response of a route must match the schema the
document gives for that route, method, status and content type."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from jsonschema import Draft202012Validator

from receiver.api.openapi import spec


class Drift(AssertionError):
    """A response the document does not describe."""


def _template(path: str, paths: dict[str, Any]) -> str:
    for template in paths:
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", template)
        if re.fullmatch(pattern, path):
            return template
    raise Drift(f"{path} is not in /openapi.json")


def schema_for(method: str, path: str, status: int, media: str) -> dict[str, Any] | None:
    """The JSON schema for a response (None where the body is not JSON), or Drift."""
    doc = spec()
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope", "components": doc["components"]}
    try:
        operation = doc["paths"][_template(path, doc["paths"])].get(method.lower())
        if operation is None:
            raise Drift(f"{method} {path} is not in /openapi.json")
    except Drift:
        if status in (404, 405) and media == "application/json":
            return envelope  # no such route: still the documented error envelope
        raise
    responses = operation["responses"]
    response = responses.get(str(status)) or responses.get("default")
    if response is None:
        raise Drift(f"{method} {path}: status {status} is not documented")
    content = response.get("content", {})
    if media not in content:
        raise Drift(f"{method} {path} {status}: {media} is not documented ({list(content)})")
    if media not in ("application/json", "text/event-stream"):
        return None
    return {**content[media]["schema"], "components": doc["components"]}


def check(method: str, path: str, status: int, media: str, body: bytes) -> None:
    schema = schema_for(method, path, status, media)
    if schema is None:
        return
    validator = Draft202012Validator(schema)
    if media == "text/event-stream":
        items = [
            json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")
        ]
    else:
        items = [json.loads(body)]
    for item in items:
        errors = sorted(validator.iter_errors(item), key=str)
        if errors:
            raise Drift(f"{method} {path} {status}: {errors[0].message}")


async def validate_response(response: httpx.Response) -> None:
    """An httpx response hook: every response a test receives is checked."""
    await response.aread()
    media = response.headers.get("content-type", "").split(";")[0].strip()
    request = response.request
    check(request.method, request.url.path, response.status_code, media, response.content)
