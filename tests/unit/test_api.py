"""The HTTP API in one process: httpx.ASGITransport against create_app(background=False) on
receiver.testing's in-memory runtime. Every route, its errors as JSON envelopes, and callback
intake (signed, duplicate, refused, adopted from an account webhook)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Match

from receiver.api import common
from receiver.api.common import read_body
from receiver.app import create_app, routes
from receiver.errors import LedgerUnavailable, RequestTimeout
from receiver.models import NewTask, Reason, Status, StoredObject
from receiver.signatures import standard_sign
from receiver.testing import API_KEY, MemoryRuntime, memory_runtime, memory_settings

from .openapi_check import validate_response

pytestmark = pytest.mark.anyio

AUTH = {"authorization": f"Bearer {API_KEY}"}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MYNTH_SECRET = "whsec_" + "bXludGgtYWNjb3VudC1zZWNyZXQtZm9yLXRlc3Rz"


def client_for(rt: MemoryRuntime) -> httpx.AsyncClient:
    """A client on the app in process; every response it gets is held to /openapi.json."""
    app = create_app(rt.settings, runtime=rt, background=False)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=rt.settings.public_url,
        event_hooks={"response": [validate_response]},
    )


@pytest.fixture
async def api(rt: MemoryRuntime) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(rt) as client:
        yield client


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    code: str = body["error"]["code"]
    return code


# --- POST /v1/tasks ---------------------------------------------------------------------------


async def test_create_submits_with_our_callback_and_answers_202(
    rt: MemoryRuntime, api: httpx.AsyncClient
) -> None:
    response = await api.post(
        "/v1/tasks",
        json={"provider": "simulated", "prompt": "a fox", "params": {"count": 2}},
        headers=AUTH,
    )
    assert response.status_code == 202
    task = response.json()
    assert task["status"] == "submitted" and task["provider_task_id"] == "sim-1"
    assert task["access_token"] and task["model"] == "sim-flux-1"
    (sent,) = rt.api.submitted
    assert sent["webhook_url"].startswith(f"{rt.settings.public_url}/v1/hooks/simulated/")
    assert sent["webhook_secret"].startswith("whsec_") and sent["count"] == 2
    stored = await rt.ledger.get_task(task["id"])
    assert stored is not None and stored.next_poll_at == pytest.approx(rt.clock.now() + 60)


async def test_create_with_the_same_idempotency_key_submits_once(
    rt: MemoryRuntime, api: httpx.AsyncClient
) -> None:
    body = {"provider": "simulated", "prompt": "a fox"}
    headers = {**AUTH, "idempotency-key": "order-1"}
    first = await api.post("/v1/tasks", json=body, headers=headers)
    second = await api.post("/v1/tasks", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"] and len(rt.api.submitted) == 1


async def test_provider_refusing_the_submission_fails_the_task(
    rt: MemoryRuntime, api: httpx.AsyncClient
) -> None:
    rt.api.down = True
    response = await api.post(
        "/v1/tasks", json={"provider": "simulated", "prompt": "a fox"}, headers=AUTH
    )
    assert response.status_code == 202
    task = response.json()
    assert task["status"] == "failed" and task["failure"]["reason"] == "provider_error"


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        ({"provider": "simulated", "prompt": "x"}, {}, 401, "unauthorized"),
        ({"provider": "simulated", "prompt": "x"}, {"authorization": "Bearer no"}, 401, None),
        (b"{not json", AUTH, 400, "bad_request"),
        (b"[1, 2]", AUTH, 400, "bad_request"),
        ({"prompt": "x"}, AUTH, 422, "validation_failed"),
        ({"provider": "simulated", "prompt": "x", "colour": 1}, AUTH, 422, None),
        ({"provider": "nope", "prompt": "x"}, AUTH, 422, None),
        ({"provider": "simulated", "prompt": "x", "destination": "elsewhere"}, AUTH, 422, None),
        ({"provider": "simulated", "prompt": "x", "params": {"count": 99}}, AUTH, 422, None),
        ({"provider": "simulated", "prompt": "x", "notify_url": "ftp://a"}, AUTH, 422, None),
        ({"provider": "simulated", "prompt": "x", "metadata": {"k": "v" * 20000}}, AUTH, 422, None),
        (
            {"provider": "simulated", "prompt": "x"},
            {**AUTH, "idempotency-key": "k" * 201},
            422,
            None,
        ),
    ],
)
async def test_create_refuses_bad_requests_with_an_error_envelope(
    api: httpx.AsyncClient,
    rt: MemoryRuntime,
    body: Any,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await api.post("/v1/tasks", content=content, headers=headers)
    assert response.status_code == status
    assert error_code(response) == (code or error_code(response))
    assert rt.api.submitted == []


async def test_notify_url_needs_a_signing_secret() -> None:
    async with memory_runtime(notify={"secret": None}) as rt, client_for(rt) as api:
        response = await api.post(
            "/v1/tasks",
            json={"provider": "simulated", "prompt": "x", "notify_url": "https://app.example/h"},
            headers=AUTH,
        )
        assert (
            response.status_code == 422 and "notify.secret" in response.json()["error"]["message"]
        )


async def test_oversized_body_is_413_before_it_is_read(api: httpx.AsyncClient) -> None:
    big = b"{" + b" " * (1024 * 1024 + 1) + b"}"
    response = await api.post("/v1/tasks", content=big, headers=AUTH)
    assert response.status_code == 413 and error_code(response) == "payload_too_large"


# --- GET /v1/tasks/{id}, /v1/tasks ------------------------------------------------------------


async def test_task_is_readable_with_the_api_key_or_its_access_token(
    api: httpx.AsyncClient,
) -> None:
    created = (
        await api.post("/v1/tasks", json={"provider": "simulated", "prompt": "a"}, headers=AUTH)
    ).json()
    path = f"/v1/tasks/{created['id']}"
    token = created["access_token"]
    assert (await api.get(path, headers=AUTH)).json()["id"] == created["id"]
    assert (await api.get(path, headers={"authorization": f"Bearer {token}"})).status_code == 200
    assert (await api.get(path, params={"access_token": token})).status_code == 200
    assert (await api.get(path)).status_code == 401
    other = (
        await api.post("/v1/tasks", json={"provider": "simulated", "prompt": "b"}, headers=AUTH)
    ).json()
    wrong = await api.get(f"/v1/tasks/{other['id']}", params={"access_token": token})
    assert wrong.status_code == 401  # a token opens its own task only
    missing = await api.get("/v1/tasks/tsk_nope", headers=AUTH)
    assert missing.status_code == 404 and error_code(missing) == "not_found"


async def test_list_filters_and_pages(rt: MemoryRuntime, api: httpx.AsyncClient) -> None:
    for prompt in ("a", "b", "c"):
        await api.post("/v1/tasks", json={"provider": "simulated", "prompt": prompt}, headers=AUTH)
    page = (await api.get("/v1/tasks", params={"limit": 2}, headers=AUTH)).json()
    assert len(page["tasks"]) == 2 and page["next_cursor"]
    rest = (await api.get("/v1/tasks", params={"cursor": page["next_cursor"]}, headers=AUTH)).json()
    assert len(rest["tasks"]) == 1 and rest["next_cursor"] is None
    failed = await api.get(
        "/v1/tasks",
        params={"status": "failed", "provider": "simulated", "created_after": 0},
        headers=AUTH,
    )
    assert failed.json()["tasks"] == []
    assert (await api.get("/v1/tasks", params={"status": "lost"}, headers=AUTH)).status_code == 422
    assert (await api.get("/v1/tasks", params={"limit": "x"}, headers=AUTH)).status_code == 422
    assert (await api.get("/v1/tasks")).status_code == 401


# --- replay and redeliver ---------------------------------------------------------------------


async def test_replay_asks_the_provider_again_and_queues_a_new_job(
    rt: MemoryRuntime, api: httpx.AsyncClient
) -> None:
    task = await rt.completed_task(["https://cdn.example/old.png"])
    (old,) = await rt.ledger.claim_jobs("w", 1, 60)
    rt.api.answer(task.provider_task_id or "", "succeeded", ["https://cdn.example/new.png"])
    response = await api.post(f"/v1/tasks/{task.id}/replay", headers=AUTH)
    assert response.status_code == 202 and response.json()["status"] == "completed"
    (job,) = await rt.ledger.claim_jobs("w2", 1, 60)
    assert job.id != old.id
    replayed = await rt.ledger.get_task(task.id)
    assert replayed is not None and replayed.outcome is not None
    assert replayed.outcome.images[0].url == "https://cdn.example/new.png"


async def test_replay_refusals(rt: MemoryRuntime, api: httpx.AsyncClient) -> None:
    pending = await rt.submitted_task()
    response = await api.post(f"/v1/tasks/{pending.id}/replay", headers=AUTH)
    assert response.status_code == 409 and "pending" in response.json()["error"]["message"]
    unknown, _ = await rt.ledger.create_task(
        NewTask(provider="simulated", prompt="x", destination="local")
    )
    response = await api.post(f"/v1/tasks/{unknown.id}/replay", headers=AUTH)
    assert response.status_code == 409  # never reached the provider, nothing recorded
    assert (await api.post("/v1/tasks/tsk_nope/replay", headers=AUTH)).status_code == 404
    rt.api.down = True
    response = await api.post(f"/v1/tasks/{pending.id}/replay", headers=AUTH)
    assert response.status_code == 502 and error_code(response) == "provider_error"


async def test_redeliver_enqueues_the_final_notification_again(
    rt: MemoryRuntime, api: httpx.AsyncClient
) -> None:
    task = await rt.completed_task(["https://cdn.example/0.png"])
    assert (await api.post(f"/v1/tasks/{task.id}/redeliver", headers=AUTH)).status_code == 409
    (job,) = await rt.ledger.claim_jobs("w", 1, 60)
    obj = StoredObject(0, "memory://local/k", "memory://local/k.json", "k", "00", 1, "image/png")
    await rt.ledger.finish_job(job.id, "w", [obj])
    response = await api.post(f"/v1/tasks/{task.id}/redeliver", headers=AUTH)
    assert response.status_code == 202
    assert response.json()["url"] == "https://app.example/hooks/receiver"
    notes = await rt.ledger.claim_notifications("n", 5, 60)
    assert {n.id for n in notes} >= {response.json()["event_id"]} and len(notes) == 2


# --- events -----------------------------------------------------------------------------------


async def test_events_stream_every_change_until_the_end(
    rt: MemoryRuntime, api: httpx.AsyncClient
) -> None:
    task = await rt.completed_task(["https://cdn.example/0.png"])
    await rt.ledger.fail_task(task.id, Reason.EXPIRED, "late")
    async with api.stream("GET", f"/v1/tasks/{task.id}/events", headers=AUTH) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join([chunk async for chunk in response.aiter_text()])
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert [e["status"] for e in events] == ["submitted", "completed", "failed"]
    assert events[-1]["reason"] == "expired"
    async with api.stream(
        "GET", f"/v1/tasks/{task.id}/events", headers={**AUTH, "last-event-id": "2"}
    ) as response:
        text = "".join([chunk async for chunk in response.aiter_text()])
    assert "event: status" in text and text.count("data: ") == 1
    async with api.stream(
        "GET", f"/v1/tasks/{task.id}/events", headers={**AUTH, "last-event-id": "x"}
    ) as response:
        text = "".join([chunk async for chunk in response.aiter_text()])
    assert text.count("data: ") == 3
    assert (await api.get("/v1/tasks/tsk_nope/events", headers=AUTH)).status_code == 404


# --- callbacks --------------------------------------------------------------------------------


def sim_body(task_id: str, status: str = "succeeded") -> dict[str, Any]:
    return {
        "id": task_id,
        "status": status,
        "images": [{"url": "https://cdn.example/r/0.png", "expires_at": None}],
    }


async def test_signed_callback_is_accepted_once_then_duplicate(
    rt: MemoryRuntime, api: httpx.AsyncClient
) -> None:
    task = await rt.submitted_task()
    path, headers, body = rt.callback(task, sim_body(task.provider_task_id or ""))
    first = await api.post(path, content=body, headers=headers)
    assert first.status_code == 200 and first.json() == {"status": "accepted"}
    again = await api.post(path, content=body, headers=headers)
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}
    found = await rt.ledger.get_task(task.id)
    assert found is not None and found.status is Status.COMPLETED
    assert len(await rt.ledger.claim_jobs("w", 5, 60)) == 1


async def test_callbacks_that_fail_verification_are_refused(
    rt: MemoryRuntime, api: httpx.AsyncClient
) -> None:
    task = await rt.submitted_task()
    path, headers, body = rt.callback(task, sim_body(task.provider_task_id or ""))
    forged = await api.post(path, content=body.replace(b"succeeded", b"failed___"), headers=headers)
    assert forged.status_code == 401 and error_code(forged) == "bad_signature"
    bad_token = await api.post(path[:-3] + "xyz", content=body, headers=headers)
    assert bad_token.status_code == 401
    other_provider = path.replace("/simulated/", "/bfl/")
    assert (await api.post(other_provider, content=body, headers=headers)).status_code == 401
    unknown = await api.post(path.replace("/simulated/", "/nobody/"), content=body)
    assert unknown.status_code == 404
    found = await rt.ledger.get_task(task.id)
    assert found is not None and found.status is Status.SUBMITTED


async def test_malformed_and_oversized_callbacks(rt: MemoryRuntime, api: httpx.AsyncClient) -> None:
    task = await rt.submitted_task()
    path, headers, body = rt.callback(task, {"status": "weird"})
    assert (await api.post(path, content=body, headers=headers)).status_code == 400
    huge = b"x" * (rt.settings.server.max_body_bytes + 1)
    response = await api.post(path, content=huge, headers=headers)
    assert response.status_code == 413


async def test_callback_for_a_task_that_is_gone_is_404(
    rt: MemoryRuntime, api: httpx.AsyncClient
) -> None:
    task = await rt.submitted_task()
    ghost = type(task)(**{**task.__dict__, "id": "tsk_never_recorded"})
    path, headers, body = rt.callback(ghost, sim_body("p"))
    assert (await api.post(path, content=body, headers=headers)).status_code == 404


async def test_ledger_outage_answers_503_so_the_provider_retries(
    rt: MemoryRuntime, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = await rt.submitted_task()
    path, headers, body = rt.callback(task, sim_body(task.provider_task_id or ""))

    async def down(*args: object, **kwargs: object) -> None:
        raise LedgerUnavailable("disk full")

    monkeypatch.setattr(rt.ledger, "record_outcome", down)
    response = await api.post(path, content=body, headers=headers)
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert error_code(response) == "ledger_unavailable"


def mynth_account_delivery(secret: str, msg_id: str = "msg_acct_1") -> tuple[bytes, dict[str, str]]:
    body = (FIXTURES / "mynth" / "webhook_standard_completed.json").read_bytes()
    ts = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": standard_sign(secret, msg_id, ts, body),
    }
    return body, headers


async def test_account_webhook_adopts_a_task_submitted_elsewhere() -> None:
    async with memory_runtime(providers={"mynth": {"webhook_secret": MYNTH_SECRET}}) as rt:
        async with client_for(rt) as api:
            body, headers = mynth_account_delivery(MYNTH_SECRET)
            first = await api.post("/v1/hooks/mynth", content=body, headers=headers)
            assert first.status_code == 200 and first.json()["status"] == "accepted"
            again = await api.post("/v1/hooks/mynth", content=body, headers=headers)
            assert again.json() == {"status": "duplicate", "task_id": first.json()["task_id"]}
            task = await rt.ledger.get_task(first.json()["task_id"])
            assert task is not None and task.status is Status.COMPLETED
            assert task.provider_task_id == "tsk_01jx8m2q9v4c7d3e5f6g7h8j9k"
            assert task.metadata == {"source": "account_webhook"}
            forged, bad = mynth_account_delivery("whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==")
            refused = await api.post("/v1/hooks/mynth", content=forged, headers=bad)
            assert refused.status_code == 401
            nameless = json.dumps({"id": "evt_1", "type": "x", "data": {}}).encode()
            _, headers = mynth_account_delivery(MYNTH_SECRET)
            response = await api.post("/v1/hooks/mynth", content=nameless, headers=headers)
            assert response.status_code in (400, 401)


async def test_account_webhook_for_a_provider_without_them_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/hooks/simulated", content=b"{}")
    assert response.status_code == 404 and error_code(response) == "not_found"


# --- operations and the app's own errors --------------------------------------------------------


async def test_health_readiness_metrics_and_unknown_routes(
    rt: MemoryRuntime, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await api.get("/readyz")).json() == {"status": "ready"}
    assert "receiver_deliveries_total" in (await api.get("/metrics")).text
    missing = await api.get("/nowhere")
    assert missing.status_code == 404 and error_code(missing) == "not_found"
    wrong = await api.delete("/v1/tasks")
    assert wrong.status_code == 405 and error_code(wrong) == "method_not_allowed"

    async def down() -> None:
        raise LedgerUnavailable("connection refused")

    monkeypatch.setattr(rt.ledger, "ping", down)
    response = await api.get("/readyz")
    assert response.status_code == 503 and error_code(response) == "ledger_unavailable"


async def test_draining_is_not_ready(rt: MemoryRuntime) -> None:
    app = create_app(rt.settings, runtime=rt, background=False)
    app.state.draining = True
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as api:
        response = await api.get("/readyz")
    assert response.status_code == 503 and error_code(response) == "draining"


async def test_an_unexpected_error_is_a_json_500_without_details(rt: MemoryRuntime) -> None:
    app: Starlette = create_app(rt.settings, runtime=rt, background=False)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    rt.ledger.get_task = broken  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
        response = await api.get("/v1/tasks/tsk_x", headers=AUTH)
    assert response.status_code == 500 and error_code(response) == "internal"
    assert "secret" not in response.text


async def test_lifespan_opens_the_runtime_and_runs_the_loops() -> None:
    rt = memory_runtime()
    app = create_app(rt.settings, runtime=rt, background=True)
    async with app.router.lifespan_context(app):
        assert (await rt.ledger.get_task("tsk_x")) is None  # opened
    assert app.state.draining


async def test_cors_is_configured_from_settings() -> None:
    async with memory_runtime(server={"cors_origins": ["https://app.example"]}) as rt:
        async with client_for(rt) as api:
            response = await api.get("/healthz", headers={"origin": "https://app.example"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"


async def test_events_wake_on_a_change_committed_while_streaming(
    rt: MemoryRuntime, api: httpx.AsyncClient
) -> None:
    """The stream waits on the ledger's announcement for its task, not on a timer."""
    task = await rt.completed_task(["https://cdn.example/0.png"])
    channel = f"task:{task.id}"

    async def fail_once_listening() -> None:
        while channel not in rt.changes._events:
            await asyncio.sleep(0)
        for _ in range(50):  # let the stream send what exists and start waiting
            await asyncio.sleep(0)
        await rt.ledger.fail_task(task.id, Reason.FETCH_FAILED, "origin gone")

    change = asyncio.create_task(fail_once_listening())
    async with api.stream("GET", f"/v1/tasks/{task.id}/events", headers=AUTH) as response:
        text = "".join([chunk async for chunk in response.aiter_text()])
    await change
    assert [json.loads(x[6:])["status"] for x in text.splitlines() if x.startswith("data: ")] == [
        "submitted",
        "completed",
        "failed",
    ]
    assert channel not in rt.changes._events  # unsubscribed at the end


async def test_bulk_replay_counts_first_then_acts_on_exactly_those(
    rt: MemoryRuntime, api: httpx.AsyncClient
) -> None:
    task = await rt.completed_task(["https://cdn.example/0.png"])
    await rt.ledger.fail_task(task.id, Reason.EXPIRED, "late")
    body = {"filter": {"status": "failed", "provider": "simulated"}, "dry_run": True}
    dry = await api.post("/v1/tasks/replay", json=body, headers=AUTH)
    assert dry.status_code == 200 and dry.json()["matched"] == 1
    bad = await api.post("/v1/tasks/redeliver", json={"filter": {"colour": 1}}, headers=AUTH)
    assert bad.status_code == 422 and error_code(bad) == "validation_failed"
    assert (await api.post("/v1/tasks/replay", json={}, headers={})).status_code == 401


async def test_bodies_past_the_cap_are_refused_while_streaming(api: httpx.AsyncClient) -> None:
    """No Content-Length (chunked): the cap is enforced as the body arrives."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 65536

    response = await api.post("/v1/tasks", content=chunks(), headers=AUTH)
    assert response.status_code == 413 and error_code(response) == "payload_too_large"
    bad = await api.post("/v1/tasks", content=b"{}", headers={**AUTH, "content-length": "x"})
    assert bad.status_code == 400 and error_code(bad) == "bad_request"


def test_every_route_is_reached_by_its_own_paths_whatever_the_order() -> None:
    """Routes are listed hottest first (callbacks); that order must never let one route
    take another's requests."""
    table = routes()
    for route in table:
        path = re.sub(r"{[^}]+}", "x1", route.path)
        for method in route.methods or ():
            scope = {"type": "http", "method": method, "path": path, "root_path": ""}
            first = next(r for r in table if r.matches(scope)[0] is Match.FULL)
            assert first is route, (method, route.path, first.path)


def _body_request(pieces: list[bytes], timeout: float) -> Request:
    """A request whose body comes in ``pieces`` and then stops coming (never ends)."""
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in pieces]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the sender went quiet
        raise AssertionError("unreachable")

    settings = memory_settings(server={"body_read_timeout_seconds": timeout})
    app = SimpleNamespace(state=SimpleNamespace(runtime=SimpleNamespace(settings=settings)))
    return Request({"type": "http", "method": "POST", "headers": [], "app": app}, receive)


async def test_a_body_that_stops_coming_is_408_and_a_finished_one_is_left_alone() -> None:
    with pytest.raises(RequestTimeout, match="body_read_timeout_seconds"):
        await read_body(_body_request([b"{", b'"a"'], 0.05), 1000)

    async def whole() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    request = _body_request([], 0.05)
    request._receive = whole
    assert await read_body(request, 1000) == b"{}"
    await asyncio.sleep(0.2)  # past the deadline: its timer went with the read, nothing fires


async def test_cancelling_a_body_read_is_a_cancellation_not_a_408() -> None:
    """Shutdown (or a client gone) cancels the handler: that must stay a CancelledError, also
    when the body's deadline fires at the same moment."""
    reading = asyncio.ensure_future(read_body(_body_request([b"{"], 60), 1000))
    await asyncio.sleep(0.01)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading

    async def both() -> None:
        deadline = common._Deadline(60)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # from elsewhere, and then the deadline, in the same turn
        deadline._expire()  # as its timer does once due
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            assert not deadline.expired()
            raise
        finally:
            deadline.stop()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.ensure_future(both())


async def test_health_probe_proves_the_server_holds_the_configured_key(
    rt: MemoryRuntime, api: httpx.AsyncClient
) -> None:
    from receiver.signatures import probe_matches

    answer = (await api.get("/healthz", params={"probe": "n-123"})).json()["probe"]
    assert probe_matches(rt.settings.secret_keys, "n-123", answer)
    assert "probe" not in (await api.get("/healthz", params={"probe": "é" * 3})).json()


async def test_a_lazy_deadline_fires_once_late_enough_whatever_the_restarts() -> None:
    """Restarted often, it fires only after a whole ``timeout`` without a restart; paused, not
    at all until restarted; stopped, never."""
    from receiver.timers import LazyDeadline

    loop = asyncio.get_running_loop()
    fired: list[float] = []
    deadline = LazyDeadline(loop, 0.05, lambda: fired.append(loop.time()))
    started = loop.time()
    deadline.restart()
    for _ in range(4):  # 0.12 s of restarts, each well within the timeout
        await asyncio.sleep(0.03)
        deadline.restart()
    last = loop.time()
    await asyncio.sleep(0.2)
    assert len(fired) == 1 and fired[0] >= last + 0.05 > started + 0.05
    deadline.restart()
    deadline.pause()
    await asyncio.sleep(0.1)
    assert len(fired) == 1 and not deadline.running
    deadline.restart()
    deadline.stop()
    await asyncio.sleep(0.1)
    assert len(fired) == 1
