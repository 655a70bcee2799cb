"""Replicate adapter: prediction bodies (list and lone-string output) into Outcomes, request
validation, the submit call, and Standard Webhooks verification of callbacks."""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.errors import BadRequest, SignatureError, ValidationFailed
from receiver.models import OutcomeStatus, Reason, Task
from receiver.providers import CallbackTarget, Provider
from receiver.providers.replicate import ReplicateProvider, parse_prediction
from receiver.signatures import standard_sign
from tests.unit.provider_contract import ProviderContract
from tests.unit.provider_kit import Handler, make_task, mock_provider

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "replicate"
VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def provider(handler: Handler | None = None, **settings: Any) -> ReplicateProvider:
    return mock_provider(
        "replicate",
        ReplicateProvider,
        handler,
        **{"base_url": "https://replicate.test", **settings},
    )


def task(**over: Any) -> Task:
    return make_task(
        "replicate",
        **{
            "id": "tsk_r",
            "model": "black-forest-labs/flux-schnell",
            "prompt": "a red fox in the snow",
            "params": {"input": {"seed": 42, "num_outputs": 2}},
            **over,
        },
    )


def iso(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


# --- parsing --------------------------------------------------------------------------------


def test_output_as_a_list() -> None:
    data = load("prediction_succeeded_list.json")
    outcome = parse_prediction(data)
    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert outcome.provider_task_id == "q3vb6k9dxsrm80ckr2ab5xmfzm"
    assert [i.url for i in outcome.images] == data["output"]
    deadline = iso("2026-11-20T10:00:01.500000+00:00") + 3600
    assert [i.expires_at for i in outcome.images] == [deadline, deadline]
    assert outcome.seed == 42 and outcome.model == "black-forest-labs/flux-schnell"
    assert outcome.cost is None and outcome.error_code is None


def test_output_as_a_lone_string_and_seed_from_logs() -> None:
    outcome = parse_prediction(load("prediction_succeeded_string.json"))
    assert outcome.status is OutcomeStatus.SUCCEEDED
    [image] = outcome.images
    assert image.url == "https://replicate.delivery/czjl/XyZ98765/output.webp"
    assert image.expires_at == iso("2026-11-20T11:30:04+00:00") + 3600
    assert outcome.seed == 1870514539  # not in the input: read from "Using seed: …"
    assert outcome.model == "black-forest-labs/flux-1.1-pro"


def test_deadline_is_one_hour_after_completion_not_after_receipt() -> None:
    outcome = parse_prediction(load("prediction_succeeded_string.json"))
    late = iso("2026-11-20T11:50:00+00:00")
    assert provider().deadline_for(outcome, late) == iso("2026-11-20T12:30:04+00:00")
    undated = parse_prediction({"id": "p", "status": "succeeded", "output": "https://r.example/o"})
    assert provider().deadline_for(undated, 500.0) == 500.0 + 3600


def test_starting_prediction_is_pending() -> None:
    outcome = parse_prediction(load("prediction_starting.json"))
    assert outcome.status is OutcomeStatus.PENDING and outcome.images == ()
    assert outcome.provider_task_id == "ufawqhfynnddngldkgtslldrkq"


def test_failures_moderation_and_cancellation() -> None:
    failed = parse_prediction(load("prediction_failed.json"))
    assert failed.status is OutcomeStatus.FAILED and failed.error_code == "failed"
    assert failed.error_message == "CUDA out of memory. Tried to allocate 2.00 GiB"
    nsfw = parse_prediction(load("prediction_failed_nsfw.json"))
    assert nsfw.status is OutcomeStatus.MODERATED and nsfw.error_code == "moderated"
    assert nsfw.error_message == load("prediction_failed_nsfw.json")["error"]
    canceled = parse_prediction(load("prediction_canceled.json"))
    assert canceled.status is OutcomeStatus.FAILED and canceled.error_code == "canceled"
    assert canceled.error_message == "prediction canceled"


def test_data_uri_output_is_inline_and_empty_success_fails() -> None:
    raw = b"\x89PNG\r\n\x1a\nrest"
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    outcome = parse_prediction({"id": "p", "status": "succeeded", "output": [uri]})
    assert outcome.images[0].inline == raw and outcome.images[0].content_type == "image/png"
    empty = parse_prediction({"id": "p", "status": "succeeded", "output": None})
    assert empty.status is OutcomeStatus.FAILED and empty.error_code == "no_output"


def test_unreadable_predictions_raise() -> None:
    with pytest.raises(BadRequest):
        parse_prediction({"id": "p", "status": "exploded"})
    with pytest.raises(BadRequest):
        parse_prediction({"id": "p"})


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "params"),
    [
        (None, {}),
        ("black-forest-labs/flux-schnell", {"input": {"seed": 1, "num_outputs": 4}}),
        (f"owner/model:{VERSION}", {}),
        (VERSION, {"input": {"aspect_ratio": "16:9"}}),
        ("owner/model", {"version": VERSION}),
    ],
)
def test_valid_requests(model: str | None, params: dict[str, Any]) -> None:
    provider().validate(model, "a prompt", params)


@pytest.mark.parametrize(
    ("model", "params", "field"),
    [
        (None, {"steps": 4}, "params.steps"),
        (None, {"webhook": "https://evil.example"}, "params.webhook"),
        (None, {"input": "prompt"}, "params.input"),
        (None, {"input": {"seed": "abc"}}, "params.input.seed"),
        (None, {"input": {"prompt": "another prompt"}}, "params.input.prompt"),
        (None, {"version": "v1"}, "params.version"),
        ("not a model", {}, "model"),
        ("owner/model:short", {}, "model"),
    ],
)
def test_bad_parameters_name_the_field(
    model: str | None, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        provider().validate(model, "a prompt", params)
    assert caught.value.field == field and caught.value.status == 422


# --- submit -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_submit_official_model_with_completed_webhook() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=load("prediction_starting.json"))

    target = CallbackTarget(url="https://recv.example/v1/hooks/replicate/tok", secret="x")
    sub = await provider(handler, api_key="r8_key").submit(task(), target)
    assert sub.provider_task_id == "ufawqhfynnddngldkgtslldrkq" and sub.outcome is None
    [request] = seen
    assert str(request.url) == (
        "https://replicate.test/v1/models/black-forest-labs/flux-schnell/predictions"
    )
    assert request.headers["authorization"] == "Bearer r8_key"
    assert json.loads(request.content) == {
        "input": {"seed": 42, "num_outputs": 2, "prompt": "a red fox in the snow"},
        "webhook": "https://recv.example/v1/hooks/replicate/tok",
        "webhook_events_filter": ["completed"],
    }


@pytest.mark.anyio
async def test_submit_pinned_version_uses_predictions_endpoint() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "p1", "status": "starting"})

    await provider(handler, api_key="k").submit(
        task(model=f"owner/model:{VERSION}", params={}), None
    )
    [request] = seen
    assert str(request.url) == "https://replicate.test/v1/predictions"
    body = json.loads(request.content)
    assert body == {"input": {"prompt": "a red fox in the snow"}, "version": VERSION}


# --- Standard Webhooks ----------------------------------------------------------------------------


def signed(
    secret: str, body: bytes, *, ts: int | None = None, msg: str = "msg_1"
) -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    return {
        "webhook-id": msg,
        "webhook-timestamp": str(stamp),
        "webhook-signature": standard_sign(secret, msg, stamp, body),
    }


BODY = json.dumps(load("prediction_succeeded_list.json")).encode()


@pytest.mark.anyio
async def test_configured_secret_valid_signature_passes() -> None:
    secret = new_secret()
    await provider(webhook_secret=secret).verify_callback(signed(secret, BODY), BODY, [])


@pytest.mark.anyio
@pytest.mark.parametrize("case", ["changed byte", "wrong secret", "stale", "missing header"])
async def test_configured_secret_refuses_forgeries(case: str) -> None:
    secret = new_secret()
    headers, body = signed(secret, BODY), BODY
    if case == "changed byte":
        body = BODY.replace(b'"succeeded"', b'"succeedee"')
    elif case == "wrong secret":
        headers = signed(new_secret(), BODY)
    elif case == "stale":
        headers = signed(secret, BODY, ts=int(time.time()) - 301)
    else:
        headers = {k: v for k, v in headers.items() if k != "webhook-signature"}
    with pytest.raises(SignatureError) as caught:
        await provider(webhook_secret=secret).verify_callback(headers, body, [])
    assert caught.value.status == 401
    expected = {"stale": "stale", "missing header": "missing_header"}.get(case, "signature")
    assert caught.value.cause == expected


@pytest.mark.anyio
async def test_documented_known_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    vector = load("standard_webhooks_known_answer.json")
    monkeypatch.setattr(time, "time", lambda: vector["timestamp"] + 30.0)
    headers = {
        "webhook-id": vector["id"],
        "webhook-timestamp": str(vector["timestamp"]),
        "webhook-signature": vector["signature"],
    }
    body = vector["body"].encode()
    checker = provider(webhook_secret=vector["secret"])
    await checker.verify_callback(headers, body, [])
    with pytest.raises(SignatureError):
        await checker.verify_callback(headers, body.replace(b"4", b"5", 1), [])


@pytest.mark.anyio
async def test_account_secret_is_fetched_once_and_refetched_for_rotation() -> None:
    secrets = [new_secret()]
    fetches: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/webhooks/default/secret"
        assert request.headers["authorization"] == "Bearer r8_key"
        fetches.append(secrets[-1])
        return httpx.Response(200, json={"key": secrets[-1]})

    checker = provider(handler, api_key="r8_key")
    await checker.verify_callback(signed(secrets[0], BODY), BODY, [])
    await checker.verify_callback(signed(secrets[0], BODY, msg="msg_2"), BODY, [])
    assert len(fetches) == 1
    # Forgeries refetch at most once a minute, so they cannot make us hammer the API.
    for _ in range(3):
        with pytest.raises(SignatureError):
            await checker.verify_callback(signed(new_secret(), BODY), BODY, [])
    assert len(fetches) == 1
    # After the minute, a signature by a rotated secret leads to one fetch and passes.
    secrets.append(new_secret())
    checker._fetched_at -= 61
    await checker.verify_callback(signed(secrets[1], BODY), BODY, [])
    assert fetches == secrets


@pytest.mark.anyio
async def test_fetched_secret_refuses_missing_signature_and_stale() -> None:
    secret = new_secret()
    checker = provider(lambda r: httpx.Response(200, json={"key": secret}), api_key="k")
    with pytest.raises(SignatureError) as caught:
        await checker.verify_callback({}, BODY, [])
    assert caught.value.cause == "missing_header"
    with pytest.raises(SignatureError) as caught:
        await checker.verify_callback(signed(secret, BODY, ts=int(time.time()) + 400), BODY, [])
    assert caught.value.cause == "stale"


@pytest.mark.anyio
async def test_per_task_secret_is_accepted_alongside_the_account_secret() -> None:
    account, per_task = new_secret(), new_secret()
    checker = provider(webhook_secret=account)
    await checker.verify_callback(signed(per_task, BODY), BODY, [per_task])
    with pytest.raises(SignatureError):
        await checker.verify_callback(signed(per_task, BODY), BODY, [])


@pytest.mark.anyio
async def test_account_webhook_needs_the_account_secret() -> None:
    with pytest.raises(SignatureError) as caught:
        await provider().verify_account_webhook(signed(new_secret(), BODY), BODY)
    assert caught.value.cause == "config"
    secret = new_secret()
    await provider(webhook_secret=secret).verify_account_webhook(signed(secret, BODY), BODY)


def test_callback_delivery_key_is_the_webhook_id() -> None:
    callback = provider().parse_callback(signed(new_secret(), BODY, msg="msg_abc"), BODY)
    assert callback.delivery_key == "msg_abc"
    assert callback.provider_task_id == "q3vb6k9dxsrm80ckr2ab5xmfzm"
    assert callback.outcome.status is OutcomeStatus.SUCCEEDED
    with pytest.raises(BadRequest):
        provider().parse_callback({}, b"not json")


ACCOUNT_SECRET = "whsec_" + base64.b64encode(b"contract-account-secret-0123456").decode()


class TestReplicateContract(ProviderContract):
    name = "replicate"
    model = "black-forest-labs/flux-schnell"
    settings = {"webhook_secret": ACCOUNT_SECRET, "fetch_webhook_secret": False}
    provider_task_id = "q3vb6k9dxsrm80ckr2ab5xmfzm"
    success_callback = "prediction_succeeded_list"
    submit_answer = "prediction_starting"
    poll_answer = "prediction_succeeded_list"
    failure_forms = [
        ("prediction_failed", "callback", Reason.PROVIDER_ERROR),
        ("prediction_failed_nsfw", "callback", Reason.MODERATED),
        ("prediction_canceled", "callback", Reason.PROVIDER_ERROR),
    ]

    def sign(self, provider: Provider, body: bytes, secret: str) -> dict[str, str]:
        return signed(ACCOUNT_SECRET, body)
