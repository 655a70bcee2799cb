"""Issue 4: what the application sees: authenticated API, pushes, live events, reconciliation."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.app import routes as app_routes
from receiver.simulator import Faults
from tests.e2e.conftest import ServerThread, Stack
from tests.helpers import free_port, submit, wait_tasks

NOTIFY_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Sink:
    """The application's webhook endpoint; answers 503 until ``up`` is set."""

    def __init__(self, up: bool = True) -> None:
        self.up = threading.Event()
        if up:
            self.up.set()
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.refused = 0
        self.thread = ServerThread()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"

        async def hook(request: Request) -> Response:
            body = await request.body()
            if not self.up.is_set():
                self.refused += 1
                self.received.append((dict(request.headers), body))
                return JSONResponse({"down": True}, status_code=503)
            self.received.append((dict(request.headers), body))
            return JSONResponse({"ok": True})

        self.thread.serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), self.port)

    def delivered(self) -> list[tuple[dict[str, str], bytes]]:
        """Deliveries the endpoint accepted (after it came up)."""
        return self.received[self.refused :]


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.thread.stop()


def _stack(make_stack: Any, faults: Faults | None = None, **kw: Any) -> Stack:
    notify = {
        "secret": NOTIFY_SECRET,
        "retry_base_seconds": 0.2,
        "retry_max_seconds": 0.5,
        "allowed_networks": ["127.0.0.0/8"],
    }
    return make_stack(faults or Faults(delay=0.05), notify=notify, **kw)  # type: ignore[no-any-return]


def test_same_idempotency_key_submits_once(make_stack: Any) -> None:
    stack = _stack(make_stack)
    body = {"provider": "simulated", "prompt": "once"}
    first = submit(stack.base, body, {"idempotency-key": "order-42"})
    again = submit(stack.base, body, {"idempotency-key": "order-42"})
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert stack.sim.submissions == 1
    other = submit(stack.base, body, {"idempotency-key": "order-43"})
    assert other.json()["id"] != first.json()["id"] and stack.sim.submissions == 2


def test_sse_client_sees_every_transition_in_order(make_stack: Any) -> None:
    stack = _stack(make_stack, Faults(delay=0.5))
    task = submit(stack.base, {"provider": "simulated", "prompt": "live"}).json()
    seen: list[tuple[int, str]] = []
    url = f"{stack.base}/v1/tasks/{task['id']}/events"
    with httpx.stream(
        "GET", url, params={"access_token": task["access_token"]}, timeout=30
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event_id = None
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                assert event_id is not None
                seen.append((event_id, json.loads(line[6:])["status"]))
    assert [s for _, s in seen] == ["submitted", "completed", "archived"]
    assert [i for i, _ in seen] == sorted(i for i, _ in seen)


def test_notification_verifies_with_the_reference_library(make_stack: Any, sink: Sink) -> None:
    stack = _stack(make_stack)
    task = submit(
        stack.base,
        {
            "provider": "simulated",
            "prompt": "push",
            "notify_url": sink.url,
            "metadata": {"order": 7},
        },
    ).json()
    wait_tasks(stack.base, [task["id"]])
    deadline = time.monotonic() + 10
    while not sink.delivered():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    headers, body = sink.delivered()[0]
    payload = Webhook(NOTIFY_SECRET).verify(body, headers)  # the peer's code, not ours
    assert payload["type"] == "task.archived"
    data = payload["data"]
    assert data["id"] == task["id"] and data["status"] == "archived"
    [obj] = data["objects"]
    assert obj["uri"].endswith(".png") and obj["sidecar"]["sha256"] == obj["sha256"]
    assert obj["sidecar"]["metadata"] == {"order": 7}
    with pytest.raises(Exception):
        Webhook("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB").verify(body, headers)


def test_endpoint_down_then_up_gets_each_event_once(make_stack: Any) -> None:
    sink = Sink(up=False)
    try:
        stack = _stack(make_stack)
        ids = [
            submit(
                stack.base, {"provider": "simulated", "prompt": f"n{i}", "notify_url": sink.url}
            ).json()["id"]
            for i in range(3)
        ]
        wait_tasks(stack.base, ids)
        deadline = time.monotonic() + 10
        while sink.refused < 6:  # every event refused at least twice
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sink.up.set()
        deadline = time.monotonic() + 15
        while len({json.loads(b)["data"]["id"] for _, b in sink.delivered()}) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        by_task: dict[str, set[str]] = {}
        for headers, body in sink.received:
            by_task.setdefault(json.loads(body)["data"]["id"], set()).add(headers["webhook-id"])
        assert set(by_task) == set(ids)
        assert all(len(v) == 1 for v in by_task.values())  # every retry kept its webhook-id
        accepted = [json.loads(b)["data"]["id"] for _, b in sink.delivered()]
        assert sorted(accepted) == sorted(ids)  # once per event
    finally:
        sink.thread.stop()


def test_reconciler_finds_a_result_that_was_never_called_back(make_stack: Any) -> None:
    stack = _stack(make_stack)
    # The settings object is the server's own: shorten the grace before submitting.
    stack.settings.providers["simulated"].callback_grace_seconds = 0.3
    task = submit(stack.base, {"provider": "simulated", "prompt": "[sim:no_callback=true] q"})
    [done] = wait_tasks(stack.base, [task.json()["id"]], timeout=30)
    assert done["status"] == "archived"
    assert stack.sim.callbacks_sent == 0


def test_access_token_reads_its_own_task_only(make_stack: Any) -> None:
    stack = _stack(make_stack, server={"access_token_seconds": 1})
    a = submit(stack.base, {"provider": "simulated", "prompt": "a"}).json()
    b = submit(stack.base, {"provider": "simulated", "prompt": "b"}).json()
    own = httpx.get(f"{stack.base}/v1/tasks/{a['id']}", params={"access_token": a["access_token"]})
    assert own.status_code == 200 and own.json()["id"] == a["id"]
    header = httpx.get(
        f"{stack.base}/v1/tasks/{a['id']}", headers={"authorization": f"Bearer {a['access_token']}"}
    )
    assert header.status_code == 200
    other = httpx.get(
        f"{stack.base}/v1/tasks/{b['id']}", params={"access_token": a["access_token"]}
    )
    assert other.status_code == 401
    listing = httpx.get(
        f"{stack.base}/v1/tasks", headers={"authorization": f"Bearer {a['access_token']}"}
    )
    assert listing.status_code == 401  # not an API key
    time.sleep(2.2)
    late = httpx.get(f"{stack.base}/v1/tasks/{a['id']}", params={"access_token": a["access_token"]})
    assert late.status_code == 401 and "expired" in late.json()["error"]["message"]


def test_list_tasks_filters_and_paginates(make_stack: Any) -> None:
    stack = _stack(make_stack)
    ids = [
        submit(stack.base, {"provider": "simulated", "prompt": f"p{i}"}).json()["id"]
        for i in range(7)
    ]
    failed = submit(stack.base, {"provider": "simulated", "prompt": "[sim:outcome=failed] x"})
    wait_tasks(stack.base, [*ids, failed.json()["id"]])
    seen: list[str] = []
    cursor = None
    with stack.client() as c:
        while True:
            page = c.get(
                "/v1/tasks", params={"limit": 3, **({"cursor": cursor} if cursor else {})}
            ).json()
            seen += [t["id"] for t in page["tasks"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert sorted(seen) == sorted([*ids, failed.json()["id"]]) and len(seen) == len(set(seen))
        only_failed = c.get("/v1/tasks", params={"status": "failed"}).json()["tasks"]
        assert [t["id"] for t in only_failed] == [failed.json()["id"]]
        assert only_failed[0]["failure"]["reason"] == "provider_error"
        assert c.get("/v1/tasks", params={"status": "nope"}).status_code == 422


def test_openapi_describes_exactly_the_routes_that_exist(make_stack: Any) -> None:
    stack = _stack(make_stack)
    spec = httpx.get(f"{stack.base}/openapi.json").json()
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    actual = {(r.path, m) for r in app_routes() for m in (r.methods or ()) if m != "HEAD"}
    assert documented == actual
    assert "prompt" in spec["components"]["schemas"]["TaskRequest"]["properties"]


def test_bad_input_is_a_clear_4xx_never_500(make_stack: Any) -> None:
    stack = _stack(make_stack)
    with stack.client() as c:
        cases = [
            c.post("/v1/tasks", content=b"{not json"),
            c.post("/v1/tasks", json=[1, 2]),
            c.post("/v1/tasks", json={"prompt": "no provider"}),
            c.post("/v1/tasks", json={"provider": "nope", "prompt": "x"}),
            c.post("/v1/tasks", json={"provider": "simulated", "prompt": "x", "destination": "zz"}),
            c.post(
                "/v1/tasks", json={"provider": "simulated", "prompt": "x", "params": {"count": 99}}
            ),
            c.post(
                "/v1/tasks",
                json={"provider": "simulated", "prompt": "x", "metadata": {"big": "x" * 100_000}},
            ),
            c.get("/v1/tasks/does-not-exist"),
            c.post("/v1/hooks/simulated/garbage", content=b"{}"),
            c.post("/v1/hooks/nosuch/garbage", content=b"{}"),
        ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        assert set(r.json()["error"]) == {"code", "message"}
    assert cases[5].status_code == 422 and "count" in cases[5].json()["error"]["message"]
    assert stack.sim.submissions == 0
