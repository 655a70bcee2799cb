"""Vtrix without servers, against fixtures in the shapes of the gateway's own published client
(tests/fixtures/vtrix/SOURCES.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.errors import ProviderError, SignatureError
from receiver.models import OutcomeStatus, Reason
from receiver.providers import CallbackTarget
from receiver.providers.vtrix import VtrixProvider, error_of, parse_task
from receiver.signatures import bfl_sign
from tests.unit.provider_contract import ProviderContract
from tests.unit.provider_kit import make_task, mock_provider

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vtrix"


def load(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())


class TestVtrixContract(ProviderContract):
    name = "vtrix"
    model = "flux_2_max"
    provider_task_id = "d758n65e878c73cmdg20"
    success_callback = "task_completed"  # the callback body is a guess: the task object
    submit_answer = "submit_answer"
    poll_answer = "task_completed"
    failure_forms = [
        ("task_failed_string", "poll", Reason.PROVIDER_ERROR),
        ("task_failed_code_message", "poll", Reason.PROVIDER_ERROR),
        ("task_failed_code_error_message", "poll", Reason.PROVIDER_ERROR),
        ("task_moderated_string", "poll", Reason.MODERATED),
        ("task_moderated_code_message", "poll", Reason.MODERATED),
        ("task_moderated_code_error_message", "poll", Reason.MODERATED),
    ]


class Recorder:
    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def provider(handler: Recorder | None = None, **settings: Any) -> VtrixProvider:
    return mock_provider("vtrix", VtrixProvider, handler, api_key="k-123", **settings)


async def test_submit_sends_the_clients_envelope_to_the_generation_endpoint() -> None:
    rec = Recorder(httpx.Response(200, json=load("submit_answer")))
    task = make_task(
        "vtrix",
        model="flux-2-max",  # BFL's spelling is accepted and sent as Vtrix's
        prompt="a lighthouse on a basalt cliff at dawn",
        params={"seed": 42, "width": 1024, "height": 768, "output_format": "png"},
    )
    target = CallbackTarget(url="https://receiver.example/v1/hooks/vtrix/TOKEN", secret="SECRET")
    sub = await provider(rec).submit(task, target)
    assert sub.provider_task_id == "d758n65e878c73cmdg20"
    [req] = rec.requests
    assert req.method == "POST"
    assert str(req.url) == "https://cloud.vtrix.ai/model/v1/generation"
    assert req.headers["authorization"] == "Bearer k-123"
    assert req.headers["content-type"] == "application/json"
    assert json.loads(req.content) == load("submit_request")


async def test_tasks_are_read_at_the_task_path() -> None:
    rec = Recorder(httpx.Response(200, json=load("task_in_progress")))
    task = make_task("vtrix", provider_task_id="d758n65e878c73cmdg20")
    outcome = await provider(rec, base_url="https://vtrix.example/").poll(task)
    assert outcome.status is OutcomeStatus.PENDING
    assert outcome.provider_task_id == "d758n65e878c73cmdg20"
    [req] = rec.requests
    assert req.method == "GET"
    assert str(req.url) == "https://vtrix.example/model/v1/generation/task/d758n65e878c73cmdg20"
    assert req.headers["authorization"] == "Bearer k-123"


@pytest.mark.parametrize("name", ["task_in_progress", "task_pending", "task_processing"])
def test_every_running_status_is_pending(name: str) -> None:
    assert parse_task(load(name)).status is OutcomeStatus.PENDING


def test_completed_task_gives_images_and_usage() -> None:
    outcome = parse_task(load("task_completed"))
    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert [i.url for i in outcome.images] == [
        "https://cdn.vtrix.ai/outputs/d758n65e878c73cmdg20/0.png"
    ]
    assert outcome.cost == "0.07"
    assert outcome.usage == {"cost": "0.07", "quantity": 1, "unit_price": "0.07"}
    assert outcome.model == "flux_2_max"


def test_only_image_content_is_a_result() -> None:
    outcome = parse_task(load("task_completed_mixed_content"))
    assert [i.url.rsplit("/", 1)[1] for i in outcome.images if i.url] == ["0.png", "1.png"]
    assert outcome.usage == {"cost": "0.14", "quantity": 2, "unit_price": "0.07"}


def test_completed_without_an_image_is_a_failure() -> None:
    data = load("task_completed_mixed_content")
    data["output"] = [{"content": [{"type": "video", "url": "https://cdn.vtrix.ai/x.mp4"}]}]
    outcome = parse_task(data)
    assert outcome.status is OutcomeStatus.FAILED and outcome.error_code == "no_output"


@pytest.mark.parametrize(
    ("name", "code", "message", "status"),
    [
        ("task_failed_string", None, "upstream generation timed out", OutcomeStatus.FAILED),
        (
            "task_failed_code_message",
            "generation_failed",
            "Upstream generation failed, please try again",
            OutcomeStatus.FAILED,
        ),
        ("task_failed_code_error_message", "123", "insufficient balance", OutcomeStatus.FAILED),
        ("task_moderated_string", None, "NSFW content detected", OutcomeStatus.MODERATED),
        (
            "task_moderated_code_message",
            "content_moderated",
            "Your request was rejected by the safety system",
            OutcomeStatus.MODERATED,
        ),
        (
            "task_moderated_code_error_message",
            "40031",
            "The output image was flagged as NSFW",
            OutcomeStatus.MODERATED,
        ),
    ],
)
def test_each_error_form_keeps_its_reason(
    name: str, code: str | None, message: str, status: OutcomeStatus
) -> None:
    data = load(name)
    assert error_of(data["error"]) == (code, message)
    outcome = parse_task(data)
    assert outcome.status is status
    assert outcome.error_message == message
    fallback = "moderated" if status is OutcomeStatus.MODERATED else "failed"
    assert outcome.error_code == (code or fallback)


async def test_submission_refusals_keep_the_gateways_words() -> None:
    for body in (
        {"error": "model flux_9 is not available"},
        {"error": {"code": 123, "error_message": "model flux_9 is not available"}},
        {"message": "model flux_9 is not available"},
    ):
        with pytest.raises(ProviderError, match="flux_9 is not available"):
            await provider(Recorder(httpx.Response(200, json=body))).submit(
                make_task("vtrix"), None
            )
    refused = Recorder(httpx.Response(401, json=load("request_error")))
    with pytest.raises(ProviderError, match="invalid api key"):
        await provider(refused).submit(make_task("vtrix"), None)


async def test_unsigned_callbacks_rest_on_the_token_and_are_confirmed_by_a_read() -> None:
    vtrix = provider()
    body = json.dumps(load("task_completed")).encode()
    await vtrix.verify_callback({}, body, ["s" * 64])  # no header: the URL token decides
    assert vtrix.confirm_by_read
    assert not provider(confirm_by_read=False).confirm_by_read
    # A BFL-style proof that is present must hold.
    with pytest.raises(SignatureError):
        await vtrix.verify_callback({"x-webhook-secret": "wrong"}, body, ["s" * 64])
    with pytest.raises(SignatureError):
        await vtrix.verify_callback({"x-bfl-signature": bfl_sign("t" * 64, body)}, body, ["s" * 64])
    await vtrix.verify_callback({"x-bfl-signature": bfl_sign("s" * 64, body)}, body, ["s" * 64])
    callback = vtrix.parse_callback({}, body)
    assert callback.provider_task_id == "d758n65e878c73cmdg20"
    assert callback.outcome.status is OutcomeStatus.SUCCEEDED
