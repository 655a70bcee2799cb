"""One test (or a few) per finding of issue 12, each failing on the code before the fix:
hostile input never gets a 500, nothing poisons the ledger, the fault is named in one line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import time
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from receiver import sidecar
from receiver.errors import LedgerRefused, ReceiverError, SignatureError, StoreError
from receiver.fetch import Fetched
from receiver.models import NewTask, Outcome, OutcomeStatus, Reason, ResultImage, Status
from receiver.providers.base import check_outcome
from receiver.reconciler import Reconciler
from receiver.signatures import check_timestamp, verify_access_token
from receiver.worker import Worker
from tests.unit.hostile_kit import AUTH, SECRET, harness

pytestmark = pytest.mark.anyio

PNG_URL = "https://img.example/a.png"


def ok_body(task_pid: str, **over: Any) -> dict[str, Any]:
    return {
        "id": task_pid,
        "status": "succeeded",
        "images": [{"url": PNG_URL, "expires_at": time.time() + 600}],
        **over,
    }


# --- 1. poison tasks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"provider":"simulated","prompt":"p","metadata":{"x":NaN}}', "metadata.x"),
        ('{"provider":"simulated","prompt":"p","params":{"seed":Infinity}}', "params.seed"),
        ('{"provider":"simulated","prompt":"p","metadata":{"x":-Infinity}}', "metadata.x"),
        ('{"provider":"simulated","prompt":"p","metadata":{"x":1e400}}', "metadata.x"),
        (
            '{"provider":"simulated","prompt":"p","metadata":{"x":["ok","\\ud800"]}}',
            "metadata.x[1]",
        ),
        ('{"provider":"simulated","prompt":"\\udfff"}', "prompt"),
        ('{"provider":"simulated","prompt":"a\\u0000b"}', "prompt"),
        (
            '{"provider":"simulated","prompt":"p","metadata":{"n":123456789012345678901234}}',
            "metadata.n",
        ),
    ],
)
async def test_finding1_non_json_values_are_422_naming_the_field_and_nothing_is_recorded(
    raw: str, field: str
) -> None:
    async with harness() as h:
        answer = await h.client.post("/v1/tasks", content=raw, headers=AUTH)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["code"] == "validation_failed"
        assert error["message"].startswith(f"{field}:")
        listed = await h.client.get("/v1/tasks", headers=AUTH)
        assert listed.status_code == 200 and listed.json()["tasks"] == []


async def test_finding1_a_task_recorded_before_strict_parsing_still_reads() -> None:
    """Rows written by the old code (NaN, a lone surrogate) answer 200 with the value scrubbed."""
    async with harness() as h:
        task = await h.submit()

        def poison(tx: Any) -> None:
            tx.raw(
                "UPDATE tasks SET metadata = :m WHERE id = :id",
                {"m": '{"x": NaN, "s": "\\ud800"}', "id": task["id"]},
            )

        await h.rt.ledger._tx(poison)  # type: ignore[attr-defined]
        one = await h.client.get(f"/v1/tasks/{task['id']}", headers=AUTH)
        assert one.status_code == 200
        assert one.json()["metadata"]["x"] is None
        listed = await h.client.get("/v1/tasks", headers=AUTH)
        assert listed.status_code == 200 and len(listed.json()["tasks"]) == 1


async def test_finding1_the_ledger_and_sidecars_refuse_nan() -> None:
    with pytest.raises(StoreError) as caught:
        sidecar.dumps({"seed": math.nan})
    assert caught.value.permanent
    async with harness() as h:
        task, _ = await h.rt.ledger.create_task(
            NewTask(provider="simulated", prompt="p", destination="local")
        )
        bad = Outcome(
            OutcomeStatus.SUCCEEDED, images=(ResultImage(url=PNG_URL, expires_at=math.inf),)
        )
        with pytest.raises(LedgerRefused):
            await h.rt.ledger.record_outcome(
                task.id, bad, provider="simulated", delivery_key="k", deadline=None
            )


async def test_finding1_a_crashing_archive_job_is_parked_as_failed_after_three_tries() -> None:
    async with harness(worker={"max_attempts": 12}) as h:
        task = await h.submit()
        answer = await h.callback(task["id"], ok_body(task["provider_task_id"]))
        assert answer.status_code == 200

        class Exploding:
            name = "local"

            async def put(self, *a: Any, **k: Any) -> str:
                raise RuntimeError("boom: a bug nobody expected")

            async def close(self) -> None:
                return None

        async def fetch(url: str) -> Any:
            data = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
            return Fetched(io.BytesIO(data), len(data), "0" * 64, "image/png", "png", 1, 1, url)

        h.rt.destinations["local"] = Exploding()  # type: ignore[assignment]
        h.rt.fetcher.fetch = fetch  # type: ignore[method-assign]
        worker = Worker(h.rt)
        for attempt in range(1, 5):
            jobs = []
            # The retry is due after the test-mode backoff (<= 0.05 s, backoff.delay); polling
            # for at least 0.2 s finds a due job, and a fourth claim would be due by then.
            for _ in range(10):
                jobs = await h.rt.ledger.claim_jobs(h.rt.owner, 1, 30)
                if jobs:
                    break
                await asyncio.sleep(0.02)
            if attempt == 4:
                assert jobs == [], "the poisoned job was claimed a fourth time"
                break
            assert jobs and jobs[0].attempts == attempt
            await worker._guarded(jobs[0])
        got = await h.rt.ledger.get_task(task["id"])
        assert got is not None and got.status is Status.FAILED
        assert got.failure_message and "boom" in got.failure_message
        assert "after 3 attempts" in got.failure_message


async def test_finding1_a_crashing_reconciler_step_is_capped_and_the_task_failed() -> None:
    async with harness() as h:
        task = await h.submit()
        provider = h.rt.provider("simulated")

        async def poll(t: Any) -> Outcome:
            return Outcome(OutcomeStatus.SUCCEEDED, images=(ResultImage(url=PNG_URL),))

        def crash(*a: Any, **k: Any) -> float:
            raise ZeroDivisionError("poisoned answer")

        provider.poll = poll  # type: ignore[method-assign]
        provider.deadline_for = crash  # type: ignore[method-assign]
        rec = Reconciler(h.rt)
        for _ in range(3):
            current = await h.rt.ledger.get_task(task["id"])
            assert current is not None and current.status is Status.SUBMITTED
            await rec._guarded_poll(current)  # never raises
        got = await h.rt.ledger.get_task(task["id"])
        assert got is not None and got.status is Status.FAILED
        assert got.failure_message and "poisoned answer" in got.failure_message


# --- 2. metric label values only from known provider names ------------------------------------


def _label_values(metric: str, label: str) -> set[str]:
    return {
        sample.labels.get(label, "")
        for family in REGISTRY.collect()
        if family.name == metric
        for sample in family.samples
    }


async def test_finding2_random_hook_names_create_no_metric_series() -> None:
    async with harness() as h:
        for i in range(20):
            name = f"nope{i}x"
            assert (await h.client.post(f"/v1/hooks/{name}", content=b"{}")).status_code == 404
            assert (await h.client.post(f"/v1/hooks/{name}/tok", content=b"{}")).status_code == 404
    seen = _label_values("receiver_deliveries", "provider") | _label_values(
        "receiver_verification_failures", "provider"
    )
    assert not any(value.startswith("nope") for value in seen)


# --- 3. header parsers and disconnects -----------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"webhook-timestamp": "9" * 400},
        {"webhook-timestamp": "1_700_000_000"},
        {"webhook-timestamp": "\u0661\u0662\u0663"},  # Arabic-Indic digits int() accepts
        {"webhook-signature": "v1,\u00e9\u00e8\u00ff"},
        {"webhook-id": "\u00ff\u00fe"},
    ],
)
async def test_finding3_odd_signature_headers_are_401_never_500(headers: dict[str, str]) -> None:
    async with harness() as h:
        task = await h.submit()
        body = json.dumps(ok_body(task["provider_task_id"])).encode()
        signed = {**h.signed(task["id"], body), **headers}
        raw_headers = [(k.encode(), v.encode()) for k, v in signed.items()]
        request = h.client.build_request("POST", h.hook_url(task["id"]), content=body)
        request.headers = httpx.Headers(raw_headers)
        answer = await h.client.send(request)
        assert answer.status_code == 401, answer.text


def test_finding3_timestamp_parser_takes_only_short_ascii_digits() -> None:
    for raw in ("9" * 400, "1e9", " 1", "-1", "\u0661"):
        with pytest.raises(SignatureError):
            check_timestamp(raw, 300)
    assert check_timestamp(str(int(time.time())), 300) > 0


async def test_finding3_a_client_hanging_up_mid_upload_is_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with harness() as h:
        task = await h.submit()
        app = h.client._transport.app  # type: ignore[attr-defined]
        messages = iter(
            [
                {"type": "http.request", "body": b'{"id": "x", ', "more_body": True},
                {"type": "http.disconnect"},
            ]
        )
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": h.hook_url(task["id"]),
            "raw_path": h.hook_url(task["id"]).encode(),
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("receiver.test", 80),
            "app": app,
        }
        with caplog.at_level(logging.INFO):
            await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        assert start["status"] == 400
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- 4. malformed provider bodies ---------------------------------------------------------------


@pytest.mark.parametrize(
    "mutation",
    [
        {"status": ["succeeded"]},
        {"images": 3},
        {
            "images": [
                {"url": PNG_URL, "expires_at": "2026-01-01T00:00:00Z"},
                {"url": PNG_URL, "expires_at": 1.9e9},
            ]
        },
        {"images": [{"url": PNG_URL, "expires_at": "RAW400"}]},
        {"images": [{"url": {"nested": True}}]},
        {"status": "failed", "images": [], "error": {"code": {"deep": [1, 2]}, "message": ["x"]}},
        {"seed": "RAW400"},
        {"cost": {"amount": 1}},
        {"model": ["x"]},
        {"id": {"not": "a string"}},
        {"deep": "DEEP"},
    ],
)
async def test_finding4_malformed_provider_bodies_are_4xx_or_recorded_cleanly(
    mutation: dict[str, Any],
) -> None:
    async with harness() as h:
        task = await h.submit()
        body = json.dumps(ok_body(task["provider_task_id"], **mutation))
        body = body.replace('"RAW400"', "9" * 400).replace('"DEEP"', "[" * 5000 + "]" * 5000)
        answer = await h.callback(task["id"], None, raw=body.encode())
        assert answer.status_code in (200, 400, 401, 422), answer.text
        assert answer.status_code != 503
        assert "sqlite" not in answer.text.lower()
        shown = await h.client.get(f"/v1/tasks/{task['id']}", headers=AUTH)
        assert shown.status_code == 200
        if answer.status_code == 200 and mutation.get("status") == "failed":
            assert shown.json()["status"] == "failed"
            assert "deep" in shown.json()["failure"]["message"] or shown.json()["failure"]


def test_finding4_outcomes_are_normalised_and_a_clean_one_is_kept_as_it_is() -> None:
    """check_outcome rewrites what is off (types, NUL, lists) and returns a clean outcome
    itself rather than a copy; an int that equals its float still becomes the float."""
    clean = Outcome(
        OutcomeStatus.SUCCEEDED,
        images=(ResultImage(url="https://cdn.example/a.png", expires_at=5.0),),
        provider_task_id="p1",
        cost="0.1",
        seed=7,
    )
    assert check_outcome(clean, "x") is clean
    raw = Outcome(
        OutcomeStatus.SUCCEEDED,
        images=[ResultImage(url="https://cdn.example/a.png", expires_at=5)],  # type: ignore[arg-type]
        provider_task_id=7,  # type: ignore[arg-type]
        cost={"usd": 1},  # type: ignore[arg-type]
        seed=True,
        error_message="a\x00b",
    )
    checked = check_outcome(raw, "x")
    assert type(checked.images) is tuple and type(checked.images[0].expires_at) is float
    assert checked.provider_task_id == "7" and checked.cost == '{"usd": 1}'
    assert checked.seed is None and checked.error_message == "ab"
    assert raw.images[0].expires_at == 5 and type(raw.images[0].expires_at) is int


async def test_finding4_error_code_as_object_is_not_ledger_unavailable() -> None:
    async with harness() as h:
        task = await h.submit()
        payload = {
            "id": task["provider_task_id"],
            "status": "failed",
            "error": {"code": {"type": "weird"}, "message": "nope"},
        }
        answer = await h.callback(task["id"], payload)
        assert answer.status_code == 200, answer.text
        got = await h.rt.ledger.get_task(task["id"])
        assert got is not None and got.outcome is not None
        assert got.outcome.error_code == '{"type": "weird"}'


# --- 5. deep nesting, odd access tokens, Last-Event-ID ----------------------------------------


async def test_finding5_nesting_50000_deep_is_400() -> None:
    async with harness() as h:
        raw = '{"provider":"simulated","prompt":"p","metadata":{"x":' + "[" * 50000 + "]" * 50000
        raw += "}}"
        answer = await h.client.post("/v1/tasks", content=raw, headers=AUTH)
        assert answer.status_code in (400, 422)
        assert "nested" in answer.json()["error"]["message"]
        shallow = '{"provider":"simulated","prompt":"p","metadata":' + '{"a":' * 40 + "1" + "}" * 41
        answer = await h.client.post("/v1/tasks", content=shallow, headers=AUTH)
        assert answer.status_code == 422 and "nested" in answer.json()["error"]["message"]


async def test_finding5_access_token_against_a_non_ascii_task_id_is_401() -> None:
    async with harness() as h:
        task = await h.submit()
        token = task["access_token"]
        answer = await h.client.get(f"/v1/tasks/t\u00e9st?access_token={token}")
        assert answer.status_code == 401
        with pytest.raises(ReceiverError):
            verify_access_token([SECRET], token, "\u00e9\ud800", 60)


async def test_finding5_last_event_id_beyond_64_bits_restarts_the_stream() -> None:
    async with harness() as h:
        task = await h.submit()
        await h.rt.ledger.fail_task(task["id"], Reason.PROVIDER_ERROR, "x")
        for header in ("9" * 40, "-5", "\u0661", "abc"):
            answer = await h.client.get(
                f"/v1/tasks/{task['id']}/events",
                headers=httpx.Headers([*AUTH.items(), ("last-event-id", header.encode())]),
            )
            assert answer.status_code == 200
            assert "event: status" in answer.text and "failed" in answer.text


# --- 7. fal callbacks bound to the task ---------------------------------------------------------


async def test_finding7_a_signed_fal_callback_for_another_request_is_refused() -> None:
    async with harness() as h:
        h.side.fal_ids.append("req-mine")
        answer = await h.client.post(
            "/v1/tasks",
            json={"provider": "fal", "prompt": "a fox", "model": "fal-ai/flux/dev"},
            headers=AUTH,
        )
        assert answer.status_code == 202, answer.text
        task = answer.json()
        assert task["provider_task_id"] == "req-mine"
        other = {
            "request_id": "req-someone-else",
            "gateway_request_id": "req-someone-else",
            "status": "OK",
            "payload": {"images": [{"url": "https://v3.fal.media/files/x.png"}], "seed": 1},
        }
        body = json.dumps(other).encode()
        url = h.hook_url(task["id"], "fal")
        refused = await h.client.post(
            url, content=body, headers=h.fal_signed("req-someone-else", body)
        )
        assert refused.status_code == 401, refused.text
        got = await h.rt.ledger.get_task(task["id"])
        assert got is not None and got.status is Status.SUBMITTED
        mine = {**other, "request_id": "req-mine", "gateway_request_id": "req-mine"}
        body = json.dumps(mine).encode()
        accepted = await h.client.post(url, content=body, headers=h.fal_signed("req-mine", body))
        assert accepted.status_code == 200, accepted.text


# --- 8. images per callback capped ---------------------------------------------------------------


async def test_finding8_more_images_than_the_cap_is_400() -> None:
    async with harness() as h:
        task = await h.submit()
        many = [{"url": f"https://img.example/{i}.png"} for i in range(17)]
        answer = await h.callback(task["id"], ok_body(task["provider_task_id"], images=many))
        assert answer.status_code == 400
        assert "cap" in answer.json()["error"]["message"]
        sixteen = many[:16]
        answer = await h.callback(
            task["id"], ok_body(task["provider_task_id"], images=sixteen), msg_id="msg_2"
        )
        assert answer.status_code == 200


# --- 6. notify_url through the same guard with its own allow list ----------------------------


async def test_finding6_notify_url_to_an_internal_address_is_refused() -> None:
    notify = {"secret": "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="}
    async with harness(notify=notify) as h:
        for url in (
            "http://127.0.0.1:9/h",
            "http://[::ffff:169.254.169.254]/h",
            "http://[::10.0.0.1]/",
        ):
            answer = await h.client.post(
                "/v1/tasks",
                json={"provider": "simulated", "prompt": "p", "notify_url": url},
                headers=AUTH,
            )
            assert answer.status_code == 422, url
            assert "notify.allowed_networks" in answer.json()["error"]["message"]
    async with harness(notify={**notify, "allowed_networks": ["127.0.0.0/8"]}) as h:
        await h.submit(notify_url="http://127.0.0.1:9/h")


async def test_finding6_notifier_refuses_a_name_resolving_inside() -> None:
    from receiver.notify import Notifier, NotifyRefused

    notify = {"secret": "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="}
    async with harness(notify=notify) as h:
        notifier = Notifier(h.rt)
        with pytest.raises(NotifyRefused, match=r"notify\.allowed_networks"):
            await notifier._address(httpx.URL("http://localhost:8080/hook"))
        await notifier.http.aclose()


# --- 11. configuration traps seen from the API and the command line -------------------------


async def test_finding11_an_unconfigured_provider_is_422_at_submit() -> None:
    async with harness() as h:
        answer = await h.client.post(
            "/v1/tasks", json={"provider": "bfl", "prompt": "a fox"}, headers=AUTH
        )
        assert answer.status_code == 422
        assert answer.json()["error"]["message"].startswith("provider: 'bfl' is not configured")
        listed = await h.client.get("/v1/tasks", headers=AUTH)
        assert listed.json()["tasks"] == []


def test_finding11_submit_without_provider_is_refused_in_one_line(tmp_path: Any) -> None:
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "RECEIVER_URL": "http://127.0.0.1:9", "RECEIVER_API_KEY": "k"}
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "submit", "--prompt", "a fox"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "receiver: submit: --provider is required (or set default_provider in the config)"
    )


# --- 12. the text log format keeps tracebacks ------------------------------------------------


def test_finding12_text_logs_keep_the_traceback_and_scrub_it() -> None:
    from receiver.log import TextFormatter

    try:
        raise ValueError("while fetching https://img.example/a.png?sig=SECRET")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "receiver.worker", logging.ERROR, __file__, 1, "job crashed", None, sys.exc_info()
        )
    line = TextFormatter().format(record)
    assert line.startswith("error   receiver.worker: job crashed")
    assert "Traceback (most recent call last)" in line and "ValueError" in line
    assert "SECRET" not in line


# --- 13. fal without a reachable JWKS names the setting ----------------------------------------


async def test_finding13_unreachable_fal_jwks_names_the_setting() -> None:
    from receiver.errors import ProviderError
    from tests.unit.hostile_kit import FAL_JWKS

    async with harness() as h:
        h.side.override = lambda r: httpx.Response(503) if str(r.url) == FAL_JWKS else None
        body = b'{"request_id": "r1", "status": "OK", "payload": {}}'
        provider = h.rt.provider("fal")
        with pytest.raises(ProviderError) as caught:
            await provider.verify_callback(h.fal_signed("r1", body), body, [])
        assert "providers.fal.jwks_url" in caught.value.message
        assert FAL_JWKS in caught.value.message


async def test_finding5_an_event_cursor_beyond_64_bits_reads_nothing_new() -> None:
    async with harness() as h:
        task = await h.submit()
        assert await h.rt.ledger.events(task["id"], 10**400) == []
        assert len(await h.rt.ledger.events(task["id"], -(10**400))) >= 1
