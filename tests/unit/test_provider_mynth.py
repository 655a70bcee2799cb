"""Mynth adapter: the documented bodies into Outcomes, the limits, the request it sends and the
account-webhook signatures (Standard Webhooks and the older X-Mynth-Signature)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.errors import BadRequest, ProviderError, SignatureError, ValidationFailed
from receiver.models import OutcomeStatus, Reason, Task
from receiver.providers import CallbackTarget, provider_class
from receiver.providers.mynth import MynthProvider
from receiver.signatures import mynth_sign, standard_sign
from tests.unit.provider_contract import ProviderContract
from tests.unit.provider_kit import Handler, make_task, mock_provider

FIXTURES = Path(__file__).parent.parent / "fixtures" / "mynth"
ACCOUNT_SECRET = "wbs_4q8ZrT2mX9kLp0sV7nB3cD6fG1hJ5wE"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def provider(
    handler: Handler | None = None, webhook_secret: str | None = ACCOUNT_SECRET
) -> MynthProvider:
    return mock_provider(
        "mynth",
        MynthProvider,
        handler,
        api_key="mynth-key",
        base_url="https://mynth.test",
        webhook_secret=webhook_secret,
    )


def task(**over: Any) -> Task:
    values: dict[str, Any] = {
        "id": "tsk_receiver_1",
        "model": "black-forest-labs/flux.2-pro",
        "prompt": "Cute Cat",
        "params": {"count": 2, "negative_prompt": "dogs", "destination": "bunny-prod"},
        "provider_task_id": "tsk_01jx8m2q9v4c7d3e5f6g7h8j9k",
    }
    return make_task("mynth", **{**values, **over})


def test_registered_under_its_name() -> None:
    assert provider_class("mynth") is MynthProvider
    assert MynthProvider.url_lifetime == 7 * 24 * 3600
    assert MynthProvider.delivers_callbacks and not MynthProvider.synchronous


# --- parsing the documented bodies ---------------------------------------------------------


def test_newer_completed_body() -> None:
    cb = provider().parse_callback({}, fixture("webhook_standard_completed"))
    out = cb.outcome
    assert out.status is OutcomeStatus.SUCCEEDED
    assert cb.provider_task_id == out.provider_task_id == "tsk_01jx8m2q9v4c7d3e5f6g7h8j9k"
    # mynth_url (Mynth's CDN, 7 days) is preferred over url (the account's own storage)
    assert [i.url for i in out.images] == [
        "https://cdn.mynth.io/img/img_9f2k1m.webp",
        "https://cdn.mynth.io/img/img_9f2k1n.webp",
    ]
    assert out.model == "black-forest-labs/flux.2-pro"
    assert out.cost == "0.0300"
    assert out.seed == 918273645
    assert cb.delivery_key == "evt_2c1f8a7d9e3b4c6a"  # the event id when no header names one


def test_newer_failed_body() -> None:
    out = provider().parse_callback({}, fixture("webhook_standard_failed")).outcome
    assert out.status is OutcomeStatus.FAILED
    assert out.provider_task_id == "tsk_01jx8n0r2w5d8e4f6g7h8j9k0m"
    assert out.error_code == "generation_failed"
    assert "model provider returned an error" in (out.error_message or "")
    assert out.images == ()


def test_moderation_is_its_own_outcome() -> None:
    out = provider().parse_callback({}, fixture("webhook_standard_moderated")).outcome
    assert out.status is OutcomeStatus.MODERATED
    assert out.error_code == "moderated"
    assert "flagged" in (out.error_message or "")


def test_failed_images_are_skipped() -> None:
    out = provider().parse_callback({}, fixture("webhook_standard_partial")).outcome
    assert out.status is OutcomeStatus.SUCCEEDED
    assert [i.url for i in out.images] == ["https://cdn.mynth.io/img/img_7c4d2e.webp"]
    assert out.model == "black-forest-labs/flux.2-dev"


def test_all_images_failed_is_a_failure() -> None:
    out = provider().parse_callback({}, fixture("webhook_standard_all_images_failed")).outcome
    assert out.status is OutcomeStatus.FAILED
    assert out.images == ()
    assert "timed out" in (out.error_message or "")


def test_older_completed_body() -> None:
    headers = {"x-mynth-event": "task.image.generate.completed", "x-mynth-delivery": "dlv_77"}
    cb = provider().parse_callback(headers, fixture("webhook_legacy_completed"))
    out = cb.outcome
    assert out.status is OutcomeStatus.SUCCEEDED
    assert out.provider_task_id == "tsk_01jx8s0w2a3h4j5k6m7n8p9q0r"
    assert [i.url for i in out.images] == ["https://cdn.mynth.io/img/img_1a2b3c.webp"]
    assert out.cost == "0.0150" and out.model == "black-forest-labs/flux.2-pro"
    assert cb.delivery_key == "dlv_77"


def test_older_body_with_failed_destination_upload_uses_mynth_url() -> None:
    out = provider().parse_callback({}, fixture("webhook_legacy_upload_failed")).outcome
    assert out.status is OutcomeStatus.SUCCEEDED
    assert [i.url for i in out.images] == ["https://cdn.mynth.io/img/img_4d5e6f.webp"]


def test_older_failed_body() -> None:
    out = provider().parse_callback({}, fixture("webhook_legacy_failed")).outcome
    assert out.status is OutcomeStatus.FAILED
    assert out.provider_task_id == "tsk_01jx8v4y6c7k8m9n0p1q2r3s4t"
    assert out.error_code == "provider_unavailable"


def test_sdk_typed_body_succeeded_status_and_cost_breakdown() -> None:
    """The official SDK's types: image status ``succeeded``, ``result.cost`` a breakdown,
    ``result.model`` an object."""
    out = provider().parse_callback({}, fixture("webhook_sdk_completed")).outcome
    assert out.status is OutcomeStatus.SUCCEEDED
    assert [i.url for i in out.images] == ["https://cdn.mynth.io/img/img_8g9h0j.webp"]
    assert out.cost == "0.0045"
    assert out.model == "black-forest-labs/flux.1-dev"


def test_delivery_key_sources() -> None:
    p = provider()
    body = fixture("webhook_legacy_completed")
    assert p.parse_callback({"webhook-id": "msg_1"}, body).delivery_key == "msg_1"
    assert p.parse_callback({"x-mynth-delivery": "dlv_2"}, body).delivery_key == "dlv_2"
    digest = hashlib.sha256(body).hexdigest()
    assert p.parse_callback({}, body).delivery_key == f"body:{digest}"
    other = body.replace(b"0.0150", b"0.0151")
    assert p.parse_callback({}, other).delivery_key != f"body:{digest}"


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"something": "else"}'])
def test_unreadable_bodies_are_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequest):
        provider().parse_callback({}, body)


def test_unknown_task_status_is_a_bad_request() -> None:
    body = json.dumps({"id": "evt_x", "type": "task.image.x", "data": {"status": "weird"}})
    with pytest.raises(BadRequest):
        provider().parse_callback({}, body.encode())


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "params", "field"),
    [
        ("x" * 8193, {}, "prompt"),
        ("", {}, "prompt"),
        ("ok", {"count": 21}, "params.count"),
        ("ok", {"count": 0}, "params.count"),
        ("ok", {"count": True}, "params.count"),
        ("ok", {"inputs": ["https://example.com/a.png"] * 21}, "params.inputs"),
        ("ok", {"inputs": ["x" * 2049]}, "params.inputs[0]"),
        ("ok", {"inputs": [3]}, "params.inputs[0]"),
        ("ok", {"negative_prompt": "n" * 8193}, "params.negative_prompt"),
        ("ok", {"negative_prompt": ""}, "params.negative_prompt"),
        ("ok", {"destination": "d" * 65}, "params.destination"),
        ("ok", {"destination": "not a slug!"}, "params.destination"),
        ("ok", {"destination": ""}, "params.destination"),
        ("ok", {"output": {"format": "gif"}}, "params.output.format"),
        ("ok", {"output": {"quality": 101}}, "params.output.quality"),
        ("ok", {"output": {"colour": "red"}}, "params.output.colour"),
        (
            "ok",
            {"rating": {"mode": "custom", "levels": [{"value": "<13"}]}},
            "params.rating.levels[0]",
        ),
        ("ok", {"rating": {"mode": "custom"}}, "params.rating.levels"),
        ("ok", {"rating": {"mode": "strict"}}, "params.rating.mode"),
        ("ok", {"rating": False}, "params.rating"),
        ("ok", {"destination": "Bunny-Prod"}, "params.destination"),  # lowercase only
        ("ok", {"destination": "bunny_prod"}, "params.destination"),  # no underscores
        ("ok", {"output": {"format": "jpeg"}}, "params.output.format"),  # the SDK says jpg
        ("ok", {"output": {"quality": 0}}, "params.output.quality"),
        ("ok", {"webhook": {"dashboard": True}}, "params.webhook.dashboard"),
        ("ok", {"metadata": "text"}, "params.metadata"),
        ("ok", {"width": 512}, "params.width"),
        ("ok", {"webhook": {"custom": [{"url": "https://evil.test"}]}}, "params.webhook.custom"),
        ("ok", {"prompt": "again"}, "params.prompt"),
    ],
)
def test_limits_are_422_naming_the_field(prompt: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        provider().validate(None, prompt, params)
    assert caught.value.field == field
    assert caught.value.status == 422


def test_documented_values_at_the_limits_pass() -> None:
    provider().validate(
        "black-forest-labs/flux.2-pro",
        "p" * 8192,
        {
            "negative_prompt": "n" * 8192,
            "count": 20,
            "inputs": ["https://example.com/a.png"] * 19 + [{"type": "image", "role": "init"}],
            "output": {"format": "webp", "quality": 80},
            "destination": "d" * 64,
            "rating": {
                "mode": "custom",
                "levels": [{"value": "<13", "description": "Safe for Children"}],
            },
            "magic_prompt": True,
            "size": {"type": "aspect_ratio", "scale": "base"},
            "metadata": {"order": 1},
        },
    )
    provider().validate(None, "p", {})
    provider().validate("auto", "p", {"count": 1})
    # The SDK's forms: rating true or {mode: nsfw_sfw}, jpg/png output, dashboard muted.
    for params in (
        {"rating": True, "output": {"format": "jpg", "quality": 1}},
        {"rating": {"mode": "nsfw_sfw"}, "output": {"format": "png", "quality": 100}},
        {"webhook": {"dashboard": False}, "destination": "bunny-prod-2"},
    ):
        provider().validate(None, "p", params)


def test_bad_model_is_422() -> None:
    with pytest.raises(ValidationFailed) as caught:
        provider().validate("not a model", "p", {})
    assert caught.value.field == "model"


# --- the request side -----------------------------------------------------------------------


def test_submit_sends_the_documented_request() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, content=fixture("create_response"))

    target = CallbackTarget(url="https://receiver.test/v1/hooks/mynth/tok", secret="s3cret")
    sub = asyncio.run(provider(handler).submit(task(), target))
    assert sub.provider_task_id == "tsk_01jx8m2q9v4c7d3e5f6g7h8j9k"
    [req] = seen
    assert req.method == "POST" and str(req.url) == "https://mynth.test/image/generate"
    assert req.headers["authorization"] == "Bearer mynth-key"
    body = json.loads(req.content)
    assert body == {
        "prompt": "Cute Cat",
        "model": "black-forest-labs/flux.2-pro",
        "count": 2,
        "negative_prompt": "dogs",
        "destination": "bunny-prod",
        "webhook": {"custom": [{"url": "https://receiver.test/v1/hooks/mynth/tok"}]},
    }
    assert "s3cret" not in req.content.decode()  # custom webhooks are unsigned: never sent


def test_submit_can_mute_the_dashboard_webhooks_and_ask_for_a_rating() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, content=fixture("create_response"))

    target = CallbackTarget(url="https://receiver.test/v1/hooks/mynth/tok", secret="s3cret")
    params = {"webhook": {"dashboard": False}, "rating": True, "output": {"format": "jpg"}}
    provider().validate(None, "Cute Cat", params)
    asyncio.run(provider(handler).submit(task(params=params), target))
    body = json.loads(seen[0].content)
    assert body["webhook"] == {
        "dashboard": False,
        "custom": [{"url": "https://receiver.test/v1/hooks/mynth/tok"}],
    }
    assert body["rating"] is True and body["output"] == {"format": "jpg"}


def test_submit_without_a_task_id_is_a_provider_error() -> None:
    p = provider(lambda r: httpx.Response(201, json={"data": {}}))
    with pytest.raises(ProviderError):
        asyncio.run(p.submit(task(), None))


def test_submit_refused_is_a_provider_error_not_httpx() -> None:
    answer = {"error": {"code": "unknown_destination", "message": "destination not found"}}
    p = provider(lambda r: httpx.Response(400, json=answer))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(p.submit(task(), None))
    assert "400" in caught.value.message


def test_poll_reads_the_result_endpoint() -> None:
    seen: list[httpx.Request] = []
    answers = [fixture("result_pending"), fixture("result_completed")]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=answers[len(seen) - 1])

    p = provider(handler)
    assert asyncio.run(p.poll(task())).status is OutcomeStatus.PENDING
    done = asyncio.run(p.poll(task()))
    assert done.status is OutcomeStatus.SUCCEEDED
    assert [i.url for i in done.images] == ["https://cdn.mynth.io/img/img_9f2k1m.webp"]
    assert str(seen[0].url) == "https://mynth.test/tasks/tsk_01jx8m2q9v4c7d3e5f6g7h8j9k/result"
    assert seen[0].headers["authorization"] == "Bearer mynth-key"
    assert p.can_poll


def test_custom_webhook_callbacks_need_no_signature() -> None:
    """The per-request URL is unsigned by Mynth: the URL token is the check."""
    asyncio.run(provider().verify_callback({}, fixture("webhook_standard_completed"), ["s"]))


# --- account webhook signatures -------------------------------------------------------------

BODY = fixture("webhook_standard_completed")


def standard_headers(secret: str, body: bytes = BODY, ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    # A wbs_ secret keys the HMAC with its own bytes (the adapter's documented assumption).
    key = (
        secret
        if secret.startswith("whsec_")
        else ("whsec_" + base64.b64encode(secret.encode()).decode())
    )
    return {
        "webhook-id": "evt_2c1f8a7d9e3b4c6a",
        "webhook-timestamp": str(ts),
        "webhook-signature": standard_sign(key, "evt_2c1f8a7d9e3b4c6a", ts, body),
    }


def legacy_headers(secret: str, body: bytes = BODY, ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    return {
        "x-mynth-event": "task.image.generate.completed",
        "x-mynth-delivery": "dlv_1",
        "x-mynth-signature": mynth_sign(secret, ts, body),
    }


def verify(
    headers: dict[str, str], body: bytes = BODY, secret: str | None = ACCOUNT_SECRET
) -> None:
    asyncio.run(provider(webhook_secret=secret).verify_account_webhook(headers, body))


def refused(
    headers: dict[str, str], body: bytes = BODY, secret: str | None = ACCOUNT_SECRET
) -> str:
    with pytest.raises(SignatureError) as caught:
        verify(headers, body, secret)
    assert caught.value.status == 401
    return caught.value.cause


def test_valid_signatures_pass() -> None:
    verify(standard_headers(ACCOUNT_SECRET))
    verify(legacy_headers(ACCOUNT_SECRET))
    verify(standard_headers(WHSEC), secret=WHSEC)
    verify(legacy_headers(WHSEC), secret=WHSEC)


def test_legacy_header_with_rotation_signatures_passes() -> None:
    ts = int(time.time())
    good = mynth_sign(ACCOUNT_SECRET, ts, BODY).split("v1=")[1]
    headers = legacy_headers(ACCOUNT_SECRET)
    headers["x-mynth-signature"] = f"t={ts},v1={'0' * 64},v1={good}"
    verify(headers)


@pytest.mark.parametrize("make", [standard_headers, legacy_headers])
def test_changed_byte_is_refused(make: Callable[..., dict[str, str]]) -> None:
    tampered = BODY.replace(b"0.0300", b"0.0301", 1)
    assert tampered != BODY
    assert refused(make(ACCOUNT_SECRET), tampered) == "signature"


@pytest.mark.parametrize("make", [standard_headers, legacy_headers])
def test_wrong_secret_is_refused(make: Callable[..., dict[str, str]]) -> None:
    assert refused(make("wbs_someone_elses_secret")) == "signature"


@pytest.mark.parametrize("make", [standard_headers, legacy_headers])
def test_stale_timestamp_is_refused(make: Callable[..., dict[str, str]]) -> None:
    assert refused(make(ACCOUNT_SECRET, ts=int(time.time()) - 3600)) == "stale"
    assert refused(make(ACCOUNT_SECRET, ts=int(time.time()) + 3600)) == "stale"


def test_missing_headers_are_refused() -> None:
    assert refused({}) == "missing_header"
    partial = standard_headers(ACCOUNT_SECRET)
    del partial["webhook-signature"]
    assert refused(partial) == "missing_header"
    no_stamp = standard_headers(ACCOUNT_SECRET)
    del no_stamp["webhook-timestamp"]
    assert refused(no_stamp) == "missing_header"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-mynth-signature": "garbage"},
        {"x-mynth-signature": "t=,v1="},
        {"x-mynth-signature": "t={now}"},
        {"x-mynth-signature": "t=yesterday,v1=abcd"},
        {
            "webhook-id": "evt_1",
            "webhook-timestamp": "{now}",
            "webhook-signature": "v2,x",
        },
        {"webhook-id": "evt_1", "webhook-timestamp": "soon", "webhook-signature": "v1,abc"},
    ],
)
def test_malformed_headers_are_refused(headers: dict[str, str]) -> None:
    # Stamped when the test runs, not when it is collected: in the whole suite the unit tests
    # run minutes after collection, past the 300 s tolerance, and would be refused as stale.
    now = str(int(time.time()))
    assert refused({k: v.replace("{now}", now) for k, v in headers.items()}) == "malformed"


def test_without_a_configured_secret_nothing_is_accepted() -> None:
    assert refused(standard_headers(ACCOUNT_SECRET), secret=None) == "config"


def test_a_bad_standard_signature_is_not_rescued_by_a_bad_legacy_one() -> None:
    headers = {**standard_headers("wbs_wrong"), **legacy_headers("wbs_wrong")}
    assert refused(headers) == "signature"
    # ...but either genuine signature next to a wrong one is the sender's own proof.
    verify({**standard_headers("wbs_wrong"), **legacy_headers(ACCOUNT_SECRET)})


class TestMynthContract(ProviderContract):
    """Per-request custom webhook URLs are unsigned: confirm_by_read is on."""

    name = "mynth"
    model = "black-forest-labs/flux.2-pro"
    provider_task_id = "tsk_01jx8m2q9v4c7d3e5f6g7h8j9k"
    success_callback = "webhook_standard_completed"
    submit_answer = "create_response"
    poll_answer = "result_completed"
    failure_forms = [
        ("webhook_standard_failed", "callback", Reason.PROVIDER_ERROR),
        ("webhook_standard_moderated", "callback", Reason.MODERATED),
        ("webhook_standard_all_images_failed", "callback", Reason.PROVIDER_ERROR),
        ("webhook_legacy_failed", "callback", Reason.PROVIDER_ERROR),
    ]
