"""Issue 16: request ids, the access log, tokens kept out of every signal, and one trace per
task from submission to notification, also when another process handles the callback."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver import tracing
from receiver.app import create_app
from receiver.config import Settings
from receiver.ledger import open_ledger
from receiver.log import ContextFilter, JsonFormatter
from receiver.models import new_id
from receiver.signatures import hook_token, standard_sign, task_secrets
from receiver.simulator import Faults, build_simulator
from tests.e2e.conftest import ServerThread, Stack
from tests.e2e.test_application_side import NOTIFY_SECRET, Sink
from tests.helpers import (
    API_KEY,
    SECRET,
    Proc,
    base_config,
    free_port,
    submit,
    wait_http,
    write_config,
)

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="the [otel] extra")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

REQUEST_LOGGERS = ("receiver.access", "receiver.intake", "receiver.submit", "receiver.middleware")


class Lines(logging.Handler):
    """Every log line as the JSON formatter writes it, stamped by the production filter."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.addFilter(ContextFilter())
        self.lines: list[dict[str, Any]] = []
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        self.text.append(line)
        self.lines.append(json.loads(line))


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    root, ours = logging.getLogger(), logging.getLogger("receiver")
    level = ours.level
    root.addHandler(handler)
    ours.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    ours.setLevel(level)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)
    provider.shutdown()


def _callback(stack: Stack, task: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    """A genuine, signed success callback for ``task`` (the simulator was told to send none)."""
    deadline = time.monotonic() + 30  # the simulator serves the image once its task is done
    while (
        httpx.get(f"{stack.sim_url}/v1/tasks/{task['provider_task_id']}").json()["status"]
        != "succeeded"
    ):
        assert time.monotonic() < deadline, "the simulator never finished the task"
        time.sleep(0.02)
    body = json.dumps(
        {
            "id": task["provider_task_id"],
            "status": "succeeded",
            "images": [{"url": f"{stack.sim_url}/files/{task['provider_task_id']}/0.png"}],
        }
    ).encode()
    msg, ts = new_id("msg"), int(time.time())
    secret = task_secrets([SECRET], task["id"], "whsec")[0]
    signed = {
        "webhook-id": msg,
        "webhook-timestamp": str(ts),
        "webhook-signature": standard_sign(secret, msg, ts, body),
    }
    token = hook_token([SECRET], task["id"], "simulated")
    return httpx.post(
        f"{stack.base}/v1/hooks/simulated/{token}",
        content=body,
        headers={**signed, **headers},
        timeout=30,
    )


async def _events(settings: Settings, task_id: str) -> list[Any]:
    ledger = open_ledger(settings.ledger_url)
    await ledger.open()
    try:
        return await ledger.events(task_id)
    finally:
        await ledger.close()


@pytest.mark.anyio
async def test_request_id_on_the_response_every_log_line_and_the_events(
    make_stack: Any, lines: Lines
) -> None:
    stack: Stack = make_stack(Faults(delay=0.05))
    created = submit(
        stack.base,
        {"provider": "simulated", "prompt": "[sim:no_callback=true] traced"},
        {"x-request-id": "app-submit-0001"},
    )
    assert created.status_code == 202
    assert created.headers["x-request-id"] == "app-submit-0001"
    task = created.json()
    hook = _callback(stack, task, {"x-request-id": "provider-cb-0002"})
    assert hook.status_code == 200, hook.text
    assert hook.headers["x-request-id"] == "provider-cb-0002"
    # Malformed ids are replaced, never echoed: too long, or carrying what a log must not.
    for bad in ("x" * 200, "a b", 'q"uote', "semi;colon"):
        r = httpx.get(f"{stack.base}/healthz", headers={"x-request-id": bad})
        assert r.headers["x-request-id"] != bad and len(r.headers["x-request-id"]) == 32
    generated = httpx.get(f"{stack.base}/healthz").headers["x-request-id"]
    assert len(generated) == 32

    # Wait for the worker to archive, so the callback's work is all logged.
    deadline = time.monotonic() + 30
    while (now := stack.client().get(f"/v1/tasks/{task['id']}").json())["status"] != "archived":
        assert now["status"] == "completed" and time.monotonic() < deadline, now
        time.sleep(0.1)

    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in lines.lines:
        by_id.setdefault(line.get("request_id", ""), []).append(line)
    # Every line written while serving a request names it, whichever logger wrote it.
    unstamped = [
        ln for ln in lines.lines if ln["logger"] in REQUEST_LOGGERS and "request_id" not in ln
    ]
    assert unstamped == []
    submit_lines = by_id["app-submit-0001"]
    assert {ln["logger"] for ln in submit_lines} >= {"receiver.submit", "receiver.access"}
    assert any(ln["msg"] == "submitted" and ln["task_id"] == task["id"] for ln in submit_lines)
    callback_lines = by_id["provider-cb-0002"]
    # The access log: route templates, never the path with its token; a callback's line also
    # says what the delivery did (one line per callback).
    [access] = [ln for ln in callback_lines if ln["logger"] == "receiver.access"]
    assert access["route"] == "/v1/hooks/{provider}/{token}" and access["method"] == "POST"
    assert access["http_status"] == 200 and access["bytes"] > 0 and access["duration_ms"] >= 0
    assert access["task_id"] == task["id"] and access["provider"] == "simulated"
    assert access["delivery"] == "accepted" and access["status"] == "succeeded"
    assert by_id[generated][0]["route"] == "/healthz"
    # The background worker's lines belong to no request.
    assert all("request_id" not in ln for ln in lines.lines if ln["logger"] == "receiver.worker")

    # The ledger's events say which request caused them.
    events = {e.status: e.data for e in await _events(stack.settings, task["id"])}
    assert events["submitted"]["request_id"] == "app-submit-0001"
    assert events["completed"]["request_id"] == "provider-cb-0002"
    assert "request_id" not in events["archived"]


def test_no_token_reaches_a_log_line_a_span_or_a_metric_label(
    make_stack: Any, lines: Lines, spans: InMemorySpanExporter
) -> None:
    """Many distinct hook tokens (valid and forged), access tokens in query strings and API
    keys in headers; afterwards none of them appears in any signal an operator can read."""
    stack: Stack = make_stack(Faults(delay=0.05))
    sent: set[str] = set()
    tasks = []
    for i in range(6):
        r = submit(stack.base, {"provider": "simulated", "prompt": f"[sim:no_callback=true] {i}"})
        tasks.append(r.json())
    with httpx.Client(base_url=stack.base, timeout=30) as client:
        for task in tasks:
            sent.add(hook_token([SECRET], task["id"], "simulated"))
            assert _callback(stack, task, {}).status_code == 200
            sent.add(task["access_token"])
            r = client.get(f"/v1/tasks/{task['id']}", params={"access_token": task["access_token"]})
            assert r.status_code == 200
            r = client.get(
                f"/v1/tasks/{task['id']}",
                headers={"authorization": f"Bearer {task['access_token']}"},
            )
            assert r.status_code == 200
        for _ in range(40):
            forged = secrets.token_urlsafe(24)
            sent.add(forged)
            for provider in ("simulated", "bfl", "replicate"):
                r = client.post(f"/v1/hooks/{provider}/{forged}", content=b"{}")
                assert r.status_code in (400, 401), r.text
            # A token where the provider's name goes, on both hook routes.
            assert client.post(f"/v1/hooks/{forged}/{forged}", content=b"{}").status_code == 404
            assert client.post(f"/v1/hooks/{forged}", content=b"{}").status_code == 404
            access = secrets.token_urlsafe(18)
            sent.add(access)
            r = client.get(f"/v1/tasks/{tasks[0]['id']}", params={"access_token": access})
            assert r.status_code == 401
            key = secrets.token_hex(12)
            sent.add(key)
            r = client.get("/v1/tasks", headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 401
            r = client.get(f"/nowhere/{forged}", params={"access_token": access})
            assert r.status_code == 404
        assert client.get("/v1/tasks", headers={"authorization": f"Bearer {API_KEY}"}).is_success
        metrics_text = client.get("/metrics").text
    sent.add(API_KEY)

    finished = spans.get_finished_spans()
    assert finished, "tracing recorded nothing"
    span_text = [
        json.dumps(
            {
                "name": s.name,
                "attributes": dict(s.attributes or {}),
                "events": [(e.name, dict(e.attributes or {})) for e in s.events],
                "status": s.status.description,
            },
            default=str,
        )
        for s in finished
    ]
    assert any('"http.route": "/v1/hooks/{provider}/{token}"' in t for t in span_text)
    assert 'route="/v1/hooks/{provider}/{token}"' in metrics_text
    assert 'route="unmatched"' in metrics_text
    assert len(lines.text) > 100
    # With tracing on, every line of a request names its trace, the access line too.
    access = [ln for ln in lines.lines if ln["logger"] == "receiver.access"]
    assert access and all(len(ln["trace_id"]) == 32 for ln in access)
    assert all(ln.get("trace_id") for ln in lines.lines if ln["logger"] == "receiver.intake")
    for token in sent:
        assert not [t for t in lines.text if token in t], "a log line holds a token"
        assert not [t for t in span_text if token in t], "a span holds a token"
        assert token not in metrics_text, "a metric label holds a token"


# --- one trace from submission to notification, across processes -----------------------------


class Collector:
    """An OTLP/HTTP trace receiver (what a collector listens on at :4318), keeping spans."""

    def __init__(self, thread: ServerThread) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

        async def traces(request: Request) -> Response:
            message = trace_service_pb2.ExportTraceServiceRequest.FromString(await request.body())
            with self.lock:
                for resource_spans in message.resource_spans:
                    resource = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            self.spans.append(
                                {
                                    "name": span.name,
                                    "trace_id": span.trace_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                    "links": [link.trace_id.hex() for link in span.links],
                                    "attributes": {
                                        a.key: getattr(a.value, a.value.WhichOneof("value"))
                                        for a in span.attributes
                                    },
                                    "service": resource.get("service.name"),
                                }
                            )
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            return Response(answer, media_type="application/x-protobuf")

        thread.serve(Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])]), self.port)

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["name"] == name]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_one_trace_from_submit_to_notify_when_another_process_takes_the_callback(
    tmp_path: Path, spans: InMemorySpanExporter, backend: str, request: pytest.FixtureRequest
) -> None:
    """This process (A, in-memory exporter) takes ``POST /v1/tasks``, archives and notifies;
    a ``receiver serve --no-worker`` subprocess (B) on the same ledger (a SQLite file, or
    PostgreSQL as replicas share it) takes the provider's callback and exports its spans over
    OTLP/HTTP, configured only by ``OTEL_*`` variables, to a collector in this test. One trace
    id throughout: the application's."""
    shared = {"ledger_url": request.getfixturevalue("pg_dsn")} if backend == "postgres" else {}
    thread = ServerThread()
    sink = Sink()
    proc: Proc | None = None
    try:
        collector = Collector(thread)
        sim_port, port_a, port_b = free_port(), free_port(), free_port()
        sim_url = f"http://127.0.0.1:{sim_port}"
        conf = base_config(
            tmp_path,
            public_url=f"http://127.0.0.1:{port_b}",  # providers call back process B
            notify={"secret": NOTIFY_SECRET, "allowed_networks": ["127.0.0.0/8"]},
            **shared,
        )
        conf["providers"] = {"simulated": {"base_url": sim_url, "api_key": "sim-key"}}
        sim_app, sim = build_simulator(sim_url, Faults(delay=0.3), ["simulated"])
        thread.serve(sim_app, sim_port)
        config_b = write_config(tmp_path, conf, "b.toml")
        proc = Proc(
            ["serve", "--no-worker", "--port", str(port_b), "--config", str(config_b)],
            tmp_path / "b.log",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                "OTEL_SERVICE_NAME": "receiver-b",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        proc.start()
        wait_http(f"http://127.0.0.1:{port_b}/healthz", proc=proc.proc)
        thread.serve(create_app(Settings.model_validate(conf)), port_a)
        base_a = f"http://127.0.0.1:{port_a}"

        app_trace = secrets.token_hex(16)
        traceparent = f"00-{app_trace}-{secrets.token_hex(8)}-01"
        created = submit(
            base_a,
            {"provider": "simulated", "prompt": "one trace", "notify_url": sink.url},
            {"traceparent": traceparent},
        )
        assert created.status_code == 202, created.text
        task_id = created.json()["id"]
        deadline = time.monotonic() + 60
        while not (sink.delivered() and collector.named("receiver.callback")):
            assert time.monotonic() < deadline, proc.output()[-3000:]
            time.sleep(0.1)
        assert sim.callbacks_sent >= 1
    finally:
        if proc is not None:
            proc.stop()
        thread.stop()
        sink.thread.stop()

    local = spans.get_finished_spans()
    names_a = {s.name for s in local}
    assert {"POST /v1/tasks", "provider submit", "provider POST", "receiver.archive"} <= names_a
    assert {"store image", "store sidecar", "receiver.notify", "ledger create_task"} <= names_a
    assert "receiver.callback" not in names_a, "process A handled the callback itself"
    # Everything process A recorded is this task's, in the application's trace: the idle
    # polling of its background loops starts no traces of its own.
    assert {format(s.context.trace_id, "032x") for s in local} == {app_trace}
    by_name = {s.name: s for s in local}
    post, archive = by_name["POST /v1/tasks"], by_name["receiver.archive"]
    assert post.parent is not None and format(post.parent.span_id, "016x") == traceparent[36:52]
    assert dict(archive.attributes or {})["receiver.task_id"] == task_id
    # Submission's trace context is the parent of the later steps; their work nests inside.
    assert archive.parent is not None and archive.parent.span_id == post.context.span_id
    assert by_name["receiver.notify"].parent.span_id == post.context.span_id  # type: ignore[union-attr]
    for child in ("fetch", "store image", "store sidecar", "ledger finish_job"):
        assert by_name[child].parent.span_id == archive.context.span_id, child  # type: ignore[union-attr]

    # Process B's callback handling joined the same trace through the ledger.
    [callback] = collector.named("receiver.callback")
    assert callback["service"] == "receiver-b"
    assert callback["trace_id"] == app_trace
    assert callback["parent"] == format(post.context.span_id, "016x")
    [verify] = collector.named("receiver.verify_callback")
    assert verify["trace_id"] == app_trace
    assert any(s["trace_id"] == app_trace for s in collector.named("ledger record_outcome"))
    # B's HTTP span stays in its own trace, linked from the callback span.
    [server] = collector.named("POST /v1/hooks/{provider}/{token}")
    assert server["trace_id"] != app_trace and server["trace_id"] in callback["links"]
    assert server["attributes"]["http.route"] == "/v1/hooks/{provider}/{token}"
    assert server["attributes"]["http.response.status_code"] == 200
    # And the application's notification carries the trace on, to whoever receives it.
    headers, _ = sink.delivered()[0]
    assert headers["traceparent"].split("-")[1] == app_trace
