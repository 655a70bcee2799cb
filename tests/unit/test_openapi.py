"""/openapi.json is generated from the models that render responses; these tests make drift
between the two fail. Every response test_api.py receives is also checked against it (its
client's response hook), so a route answering something undocumented fails there."""

from __future__ import annotations

import json

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from receiver.api.openapi import spec
from receiver.app import create_app, routes
from receiver.models import Reason, StoredObject
from receiver.notify import build_payload
from receiver.testing import MemoryRuntime, memory_runtime

from .openapi_check import Drift, check, validate_response

pytestmark = pytest.mark.anyio


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = spec()
    assert doc["openapi"] == "3.1.0"
    validate_openapi(doc)  # type: ignore[arg-type]


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    served = {(r.path, m.lower()) for r in routes() for m in (r.methods or ()) if m != "HEAD"}
    documented = {(path, method) for path, ops in spec()["paths"].items() for method in ops}
    assert served == documented


def test_task_schema_has_every_field_the_api_returns() -> None:
    task = spec()["components"]["schemas"]["TaskView"]
    assert {"submitted_at", "completed_at", "archived_at"} <= set(task["required"])
    assert task["additionalProperties"] is False


def test_the_checker_catches_drift() -> None:
    """The response hook is not vacuous: an undeclared field, a missing one, a wrong type
    and an undocumented status each fail."""
    ok = json.dumps({"status": "ok"}).encode()
    check("GET", "/healthz", 200, "application/json", ok)
    for body in ({"status": "ok", "extra": 1}, {}, {"status": 1}):
        with pytest.raises(Drift):
            check("GET", "/healthz", 200, "application/json", json.dumps(body).encode())
    with pytest.raises(Drift):
        check("GET", "/healthz", 200, "text/html", b"<p>ok</p>")
    error = json.dumps({"error": {"code": "x"}}).encode()  # no message
    with pytest.raises(Drift):
        check("GET", "/v1/tasks/t", 404, "application/json", error)


async def test_openapi_and_docs_are_served(rt: MemoryRuntime) -> None:
    app = create_app(rt.settings, runtime=rt, background=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", event_hooks={"response": [validate_response]}
    ) as api:
        assert (await api.get("/openapi.json")).json() == json.loads(json.dumps(spec()))
        page = await api.get("/docs")
    assert page.headers["content-type"].startswith("text/html")
    assert 'spec-url="openapi.json"' in page.text
    assert f'src="{rt.settings.server.docs_script_url}"' in page.text


async def test_docs_script_url_is_configurable_and_escaped() -> None:
    async with memory_runtime(server={"docs_script_url": '/static/redoc.js?a=1&b="2"'}) as rt:
        app = create_app(rt.settings, runtime=rt, background=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as api:
            page = (await api.get("/docs")).text
    assert 'src="/static/redoc.js?a=1&amp;b=&quot;2&quot;"' in page


@pytest.mark.parametrize("event", ["task.archived", "task.failed"])
async def test_notification_payloads_match_the_webhooks_section(
    rt: MemoryRuntime, event: str
) -> None:
    doc = spec()
    body = doc["webhooks"][event]["post"]["requestBody"]["content"]["application/json"]
    validator = Draft202012Validator({**body["schema"], "components": doc["components"]})
    task = await rt.completed_task(["https://cdn.example/0.png"])
    if event == "task.archived":
        (job,) = await rt.ledger.claim_jobs("w", 1, 60)
        obj = StoredObject(0, "memory://l/k", "memory://l/k.json", "k", "00", 1, "image/png")
        done = await rt.ledger.finish_job(job.id, "w", [obj])
    else:
        done = await rt.ledger.fail_task(task.id, Reason.EXPIRED, "late")
    assert done is not None
    payload = await build_payload(rt, done, event, "msg_1")
    assert list(validator.iter_errors(payload)) == []
    del payload["data"]["objects"]
    assert list(validator.iter_errors(payload))  # and the schema does bind
