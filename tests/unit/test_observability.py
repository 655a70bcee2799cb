"""The request observer (ids, access log, route templates, errors) and the tracing shim, in one
process; the whole path across processes is in tests/e2e/test_observability.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from receiver import tracing
from receiver.app import create_app, routes
from receiver.log import ContextFilter, JsonFormatter
from receiver.middleware import RequestObserver, request_id, route_template
from receiver.models import Reason
from receiver.testing import memory_runtime

ROOT = Path(__file__).resolve().parents[2]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.addFilter(ContextFilter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("receiver")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def boom(request: Request) -> Response:
    logging.getLogger("receiver.test").info("about to fail")
    raise RuntimeError("a bug with a secret in its message: /v1/hooks/bfl/abc.def")


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"data: {i}\n\n".encode()

    return StreamingResponse(chunks(), media_type="text/event-stream")


async def hello(request: Request) -> Response:
    return PlainTextResponse("hi")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(
        routes=[
            Route("/boom", boom),
            Route("/stream", stream),
            Route("/items/{item_id}", hello, methods=["GET"]),
            Mount("/ui", routes=[Route("/tasks/{task_id}", hello)]),
        ],
        middleware=[Middleware(RequestObserver)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def test_request_ids_are_taken_when_well_formed_and_made_otherwise() -> None:
    for good in ("a1b2", "0af7651916cd43dd8448eb211c80319c", "nginx:req.42_x-y", "x" * 128):
        assert request_id([(b"x-request-id", good.encode())]) == good
    for bad in ("", "x" * 129, "has space", 'quo"te', "new\nline", "ü", "a/b", "a=b"):
        made = request_id([(b"x-request-id", bad.encode())])
        assert made != bad and len(made) == 32 and int(made, 16) >= 0
    assert request_id([]) != request_id([])


def test_route_templates_never_the_path() -> None:
    def scope(method: str, path: str) -> dict[str, object]:
        return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}

    table = routes()
    assert route_template(table, scope("POST", "/v1/hooks/bfl/secret.token")) == (
        "/v1/hooks/{provider}/{token}"
    )
    assert route_template(table, scope("GET", "/v1/tasks/tsk_1/events")) == (
        "/v1/tasks/{task_id}/events"
    )
    # A known path with the wrong method still names its route (the 405 is about it).
    assert route_template(table, scope("DELETE", "/v1/tasks/tsk_1")) == "/v1/tasks/{task_id}"
    assert route_template(table, scope("GET", "/v1/hooks/bfl/tok/extra")) is None
    mounted = [Mount("/ui", routes=[Route("/tasks/{task_id}", hello)])]
    assert route_template(mounted, scope("GET", "/ui/tasks/t1")) == "/ui/tasks/{task_id}"


@pytest.mark.anyio
async def test_every_response_and_log_line_carries_the_request_id(
    client: httpx.AsyncClient, lines: Lines
) -> None:
    r = await client.get("/items/42?access_token=s3cret", headers={"x-request-id": "req-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-1"
    [access] = [ln for ln in lines.lines if ln["logger"] == "receiver.access"]
    assert access == {
        **access,
        "msg": "GET /items/{item_id} 200",
        "request_id": "req-1",
        "method": "GET",
        "route": "/items/{item_id}",
        "http_status": 200,
        "bytes": 2,
    }
    assert "s3cret" not in json.dumps(lines.lines) and "42" not in str(access["msg"])


@pytest.mark.anyio
async def test_an_unhandled_error_is_a_json_500_with_the_id_and_a_logged_traceback(
    client: httpx.AsyncClient, lines: Lines
) -> None:
    r = await client.get("/boom", headers={"x-request-id": "req-boom"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "req-boom"
    assert r.json() == {"error": {"code": "internal", "message": "internal error"}}
    mine = [ln for ln in lines.lines if ln.get("request_id") == "req-boom"]
    assert [ln["logger"] for ln in mine] == [
        "receiver.test",
        "receiver.middleware",
        "receiver.access",
    ]
    assert "RuntimeError" in str(mine[1]["exc"]) and "abc.def" not in json.dumps(mine)
    assert mine[2]["http_status"] == 500 and mine[2]["route"] == "/boom"


@pytest.mark.anyio
async def test_streams_pass_through_and_unknown_paths_get_one_label(
    client: httpx.AsyncClient, lines: Lines
) -> None:
    async with client.stream("GET", "/stream") as r:
        body = b"".join([chunk async for chunk in r.aiter_bytes()])
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n" and r.headers["x-request-id"]
    assert (await client.get("/ui/tasks/t-9")).status_code == 200
    assert (await client.get("/no/such/token-123")).status_code == 404
    access = [ln for ln in lines.lines if ln["logger"] == "receiver.access"]
    assert [(a["route"], a["http_status"]) for a in access] == [
        ("/stream", 200),
        ("/ui/tasks/{task_id}", 200),
        ("unmatched", 404),
    ]
    assert access[0]["bytes"] == len(body)


@pytest.mark.anyio
async def test_routes_are_named_after_the_router_chose_them(
    client: httpx.AsyncClient, lines: Lines
) -> None:
    """The route Starlette's router picked names the access line, inside a mount too; what
    it did not pick (a wrong method, a path a mount does not know) is named by the walk."""
    assert (await client.get("/ui/tasks/t-1")).status_code == 200
    assert (await client.post("/items/7")).status_code == 405
    assert (await client.get("/ui/nothing/here")).status_code == 404
    assert (await client.get("/items/8")).status_code == 200
    access = [ln for ln in lines.lines if ln["logger"] == "receiver.access"]
    assert [(a["route"], a["http_status"]) for a in access] == [
        ("/ui/tasks/{task_id}", 200),
        ("/items/{item_id}", 405),
        ("/ui/{path:path}", 404),
        ("/items/{item_id}", 200),
    ]


def test_request_ids_are_not_repeated_by_a_forked_child() -> None:
    """Ids come from a private generator: a worker process forked from another must draw its
    own sequence, not the parent's."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, request_id([]).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert len(child) == 32 and child != request_id([])


async def _one_callback(access_log: bool) -> tuple[str, list[str]]:
    """A signed callback and its duplicate through the whole app: the task id and the two
    request ids."""
    async with memory_runtime(server={"access_log": access_log}) as rt:
        task = await rt.submitted_task()
        path, headers, body = rt.callback(task, {"id": task.provider_task_id, "status": "pending"})
        app = create_app(rt.settings, runtime=rt, background=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for rid in ("cb-1", "cb-2"):
                r = await c.post(path, content=body, headers={**headers, "x-request-id": rid})
                assert r.status_code == 200, r.text
    return task.id, ["cb-1", "cb-2"]


@pytest.mark.anyio
async def test_a_callbacks_outcome_is_on_its_access_line(lines: Lines) -> None:
    """One line per callback: the access line names the task, provider, delivery and outcome
    that intake would otherwise log on a line of its own."""
    task_id, rids = await _one_callback(access_log=True)
    for rid, delivery in zip(rids, ("accepted", "duplicate"), strict=True):
        mine = [ln for ln in lines.lines if ln.get("request_id") == rid]
        assert [ln["logger"] for ln in mine] == ["receiver.access"]
        assert mine[0] == {
            **mine[0],
            "msg": "POST /v1/hooks/{provider}/{token} 200",
            "route": "/v1/hooks/{provider}/{token}",
            "http_status": 200,
            "task_id": task_id,
            "provider": "simulated",
            "delivery": delivery,
            "status": "pending",
        }


@pytest.mark.anyio
async def test_without_the_access_log_intake_logs_the_outcome_itself(lines: Lines) -> None:
    task_id, rids = await _one_callback(access_log=False)
    for rid, delivery in zip(rids, ("accepted", "duplicate"), strict=True):
        mine = [ln for ln in lines.lines if ln.get("request_id") == rid]
        assert [ln["logger"] for ln in mine] == ["receiver.intake"]
        assert mine[0] == {
            **mine[0],
            "msg": f"callback {delivery} (pending)",
            "task_id": task_id,
            "provider": "simulated",
            "delivery": delivery,
            "status": "pending",
        }


@pytest.mark.anyio
async def test_the_access_channel_obeys_its_own_level(
    client: httpx.AsyncClient, lines: Lines
) -> None:
    """The access line is handed to its logger directly: the level set on ``receiver.access``
    (README names the channel) still decides."""
    channel = logging.getLogger("receiver.access")
    channel.setLevel(logging.WARNING)
    try:
        assert (await client.get("/items/1")).status_code == 200
    finally:
        channel.setLevel(logging.NOTSET)
    assert not [ln for ln in lines.lines if ln["logger"] == "receiver.access"]
    assert (await client.get("/items/2")).status_code == 200
    assert [ln["route"] for ln in lines.lines if ln["logger"] == "receiver.access"] == [
        "/items/{item_id}"
    ]


def test_access_log_can_be_turned_off(lines: Lines) -> None:
    import asyncio

    app = Starlette(
        routes=[Route("/x", hello)], middleware=[Middleware(RequestObserver, access_log=False)]
    )

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/x")

    assert asyncio.run(go()).headers["x-request-id"]
    assert not [ln for ln in lines.lines if ln["logger"] == "receiver.access"]


# --- tracing ---------------------------------------------------------------------------------


def test_tracing_is_off_unless_asked_for() -> None:
    assert not tracing.enabled()
    assert tracing.setup({}) is False
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    assert tracing.setup({**endpoint, "OTEL_SDK_DISABLED": "true"}) is False
    assert tracing.setup({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is False
    assert not tracing.enabled()
    with tracing.span("nothing", {"a": 1}) as span:
        span.set("b", 2)
        span.error("x")
    assert tracing.current_traceparent() is None and tracing.current_trace_id() is None


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_the_extra_nothing_is_imported_and_everything_works() -> None:
    """As if ``receiver[otel]`` were not installed: the app serves, tracing stays off."""
    code = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # every import of it now fails, as when not installed
import httpx
from receiver import tracing
from receiver.app import create_app
from receiver.testing import memory_settings
assert not tracing.AVAILABLE
assert tracing.setup({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}) is False
async def go():
    app = create_app(memory_settings(), background=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return await c.get("/healthz")
r = asyncio.run(go())
assert r.status_code == 200 and r.headers["x-request-id"], r
loaded = [m for m, mod in sys.modules.items() if m.startswith("opentelemetry") and mod is not None]
assert loaded == [], loaded
print("ok")
"""
    result = _run(code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_otel_variables_alone_turn_tracing_on() -> None:
    code = """
from opentelemetry import trace
from receiver import tracing
assert tracing.setup() is True
with tracing.span("receiver.archive", {"receiver.task_id": "tsk_1"}):
    with tracing.child_span("ledger finish_job"):
        pass
with tracing.child_span("ledger claim_jobs"):  # outside any trace: not recorded
    pass
trace.get_tracer_provider().shutdown()
"""
    result = _run(code, {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "svc-x"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"name": "receiver.archive"' in result.stdout
    assert '"name": "ledger finish_job"' in result.stdout
    assert "claim_jobs" not in result.stdout and '"service.name": "svc-x"' in result.stdout


# --- the backlog gauges ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_reconciler_exports_the_backlog_and_each_providers_figures() -> None:
    from prometheus_client import REGISTRY

    from receiver.reconciler import Reconciler
    from receiver.testing import memory_runtime

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    async with memory_runtime(providers={"bfl": {"callback_grace_seconds": 42}}) as rt:
        reconciler = Reconciler(rt)
        waiting = await rt.submitted_task()
        url = rt.origin.serve_image("https://cdn.example/b.png")
        await rt.completed_task([url])
        rt.clock.advance(30)
        await reconciler.tick()
        assert value("receiver_provider_callback_grace_seconds", provider="bfl") == 42
        assert value("receiver_provider_url_lifetime_seconds", provider="bfl") == 600
        assert value("receiver_submitted_tasks", provider="simulated") == 1
        assert value("receiver_submitted_tasks", provider="bfl") == 0
        assert value("receiver_oldest_submitted_task_seconds", provider="simulated") == 30
        assert value("receiver_queue_depth", state="queued") == 1
        assert value("receiver_oldest_unfinished_job_seconds", provider="simulated") == 30
        # Once the work is done the series stay, at zero, so alerts resolve.
        (job,) = await rt.ledger.claim_jobs(rt.owner, 5, 60)
        await rt.ledger.finish_job(job.id, rt.owner, [])
        await rt.ledger.fail_task(waiting.id, Reason.PROVIDER_ERROR, "gave up")
        await reconciler.tick()
        assert value("receiver_submitted_tasks", provider="simulated") == 0
        assert value("receiver_oldest_submitted_task_seconds", provider="simulated") == 0
        assert value("receiver_queue_depth", state="queued") == 0
        assert value("receiver_oldest_unfinished_job_seconds", provider="simulated") == 0
        assert value("receiver_notifications_pending", state="queued") == 2
