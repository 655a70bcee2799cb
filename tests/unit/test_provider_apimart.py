"""APIMart adapter: documented bodies (seeds 003/004, providers.md) into Outcomes, the
documented request limits, and the submit/poll wire calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.errors import BadRequest, ProviderError, ValidationFailed
from receiver.models import Outcome, OutcomeStatus, Reason, Task
from receiver.providers.apimart import ApimartProvider, parse_submission, parse_task
from tests.unit.provider_contract import ProviderContract
from tests.unit.provider_kit import Handler, make_task, mock_provider

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "apimart"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def provider(handler: Handler | None = None) -> ApimartProvider:
    return mock_provider(
        "apimart", ApimartProvider, handler, api_key="k-123", base_url="https://apimart.test/"
    )


def task(**over: Any) -> Task:
    return make_task(
        "apimart",
        **{
            "id": "tsk_1",
            "model": "flux-2-pro",
            "prompt": "A blue cat on the grass",
            "params": {"resolution": "1K", "size": "16:9"},
            "provider_task_id": "task_01KFG5BBFNK1YQDTJDZY0P0QT2",
            **over,
        },
    )


# --- parsing documented bodies -------------------------------------------------------------


def test_documented_submit_answer_names_the_task() -> None:
    assert parse_submission(load("submit_answer.json")) == "task_01KFG5BBFNK1YQDTJDZY0P0QT2"


def test_submit_answer_with_error_code_is_a_provider_error() -> None:
    with pytest.raises(ProviderError, match="code 400"):
        parse_submission({"code": 400, "error": {"message": "bad size"}})
    with pytest.raises(ProviderError, match="no task_id"):
        parse_submission({"code": 200, "data": []})


def test_completed_task_with_url_as_a_string() -> None:
    outcome = parse_task(load("task_completed_url_string.json"))
    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert outcome.provider_task_id == "task_01KFG5BBFNK1YQDTJDZY0P0QT2"
    assert [(i.url, i.expires_at) for i in outcome.images] == [
        ("https://upload.apimart.ai/f/image/9a1c3e-0.png", 1763986412.0)
    ]
    assert outcome.error_code is None and outcome.error_message is None
    assert outcome.cost is None and outcome.seed is None


def test_completed_task_with_url_as_a_list() -> None:
    outcome = parse_task(load("task_completed_url_list.json"))
    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert [(i.url, i.expires_at) for i in outcome.images] == [
        ("https://upload.apimart.ai/f/image/7b2d4f-0.png", 1763986500.0),
        ("https://upload.apimart.ai/f/image/7b2d4f-1.png", 1763986500.0),
        ("https://upload.apimart.ai/f/image/7b2d4f-2.png", 1763986501.0),
    ]


def test_each_image_deadline_is_its_own_expires_at() -> None:
    outcome = parse_task(load("task_completed_url_list.json"))
    assert provider().deadline_for(outcome, received_at=1763900100.0) == 1763986500.0
    # Without expires_at the 24-hour lifetime applies from receipt.
    bare = parse_task(
        {
            "code": 200,
            "data": {
                "id": "t",
                "status": "completed",
                "result": {"images": [{"url": "https://x.example/a.png"}]},
            },
        }
    )
    assert bare.images[0].expires_at is None
    assert provider().deadline_for(bare, received_at=1000.0) == 1000.0 + 24 * 3600


@pytest.mark.parametrize("name", ["task_pending.json", "task_processing.json"])
def test_unfinished_tasks_are_pending(name: str) -> None:
    outcome = parse_task(load(name))
    assert outcome.status is OutcomeStatus.PENDING and not outcome.final
    assert outcome.images == ()


def test_failed_task_keeps_the_provider_error() -> None:
    outcome = parse_task(load("task_failed.json"))
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.error_code == "generation_failed"
    assert outcome.error_message == "upstream generation timed out"
    assert outcome.provider_task_id == "task_01KFG5BBFNK1YQDTJDZY0P0QT4"


def test_failure_for_content_is_moderated() -> None:
    outcome = parse_task(load("task_failed_moderated.json"))
    assert outcome.status is OutcomeStatus.MODERATED
    assert outcome.error_code == "content_policy_violation"
    assert outcome.error_message == "The prompt was rejected by the safety system"


def test_cancelled_task_fails() -> None:
    outcome = parse_task(load("task_cancelled.json"))
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.error_code == "cancelled" and outcome.error_message == "task was cancelled"


def test_completed_without_images_is_a_failure() -> None:
    outcome = parse_task({"code": 200, "data": {"id": "t", "status": "completed", "result": {}}})
    assert outcome.status is OutcomeStatus.FAILED and outcome.error_code == "no_images"


def test_refused_query_and_unknown_status_raise() -> None:
    with pytest.raises(ProviderError, match="task not found"):
        parse_task(load("task_query_refused.json"))
    with pytest.raises(BadRequest, match="unknown task status"):
        parse_task({"code": 200, "data": {"id": "t", "status": "exploded"}})
    with pytest.raises(BadRequest):
        parse_task(["not", "an", "object"])


def test_tolerant_extras_cost_and_string_or_millisecond_expiry() -> None:
    body = load("task_completed_url_string.json")
    body["data"]["usage"] = {"cost": "0.025"}
    body["data"]["result"]["images"].append(
        {"url": "https://upload.apimart.ai/f/image/ms.png", "expires_at": 1763986412000}
    )
    body["data"]["result"]["images"].append(
        {"url": "https://upload.apimart.ai/f/image/str.png", "expires_at": "1763986413"}
    )
    outcome = parse_task(body)
    assert outcome.cost == "0.025"
    assert [i.expires_at for i in outcome.images] == [1763986412.0, 1763986412.0, 1763986413.0]


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", load("requests.json")["valid"])
def test_documented_requests_are_valid(body: dict[str, Any]) -> None:
    params = {k: v for k, v in body.items() if k not in ("model", "prompt")}
    provider().validate(body["model"], body["prompt"], params)


@pytest.mark.parametrize(
    ("model", "params", "field"),
    [
        (
            "flux-2-flex",
            {"image_urls": [f"https://e.example/{i}.png" for i in range(9)]},
            "params.image_urls",
        ),
        ("flux-2-flex", {"size": "5:4"}, "params.size"),
        ("flux-2-pro", {"size": "21:9"}, "params.size"),  # Kontext-only ratio
        ("flux-2-pro", {"size": "match_input_image"}, "params.size"),
        ("flux-2-flex", {"resolution": "4K"}, "params.resolution"),
        ("flux-2-flex", {"image_urls": "https://e.example/a.png"}, "params.image_urls"),
        (
            "flux-2-flex",
            {"image_urls": ["data:image/png;base64,iVBORw0KGgo="]},
            "params.image_urls[0]",
        ),
        ("flux-2-flex", {"seed": 3}, "params.seed"),
        (
            "flux-kontext-pro",
            {"image_urls": ["https://e.example/1.png", "https://e.example/2.png"]},
            "params.image_urls",
        ),
        ("flux-kontext-pro", {"size": "5:4"}, "params.size"),
        ("flux-kontext-pro", {"safety_tolerance": 7}, "params.safety_tolerance"),
        ("flux-kontext-pro", {"safety_tolerance": True}, "params.safety_tolerance"),
        ("flux-kontext-max", {"response_format": "webp"}, "params.response_format"),
        ("flux-kontext-max", {"prompt_upsampling": "yes"}, "params.prompt_upsampling"),
        ("flux-kontext-max", {"resolution": "1K"}, "params.resolution"),
        ("dall-e-3", {}, "model"),
    ],
)
def test_bad_parameters_name_the_field(model: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        provider().validate(model, "a prompt", params)
    assert caught.value.field == field
    assert caught.value.status == 422


def test_eight_image_urls_are_the_limit_and_default_model_is_flux2() -> None:
    provider().validate(None, "p", {"image_urls": [f"https://e.example/{i}" for i in range(8)]})
    with pytest.raises(ValidationFailed) as caught:
        provider().validate(None, "p", {"size": "21:9"})
    assert caught.value.field == "params.size"


def test_blank_prompt_is_refused() -> None:
    with pytest.raises(ValidationFailed) as caught:
        provider().validate("flux-2-pro", "   ", {})
    assert caught.value.field == "prompt"


# --- the wire ----------------------------------------------------------------------------------


def test_apimart_is_poll_only() -> None:
    assert ApimartProvider.delivers_callbacks is False
    assert provider().can_poll


@pytest.mark.anyio
async def test_submit_posts_the_documented_body_and_returns_the_task_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=load("submit_answer.json"))

    submission = await provider(handler).submit(task(), None)
    assert submission.provider_task_id == "task_01KFG5BBFNK1YQDTJDZY0P0QT2"
    assert submission.outcome is None
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == "https://apimart.test/v1/images/generations"
    assert request.headers["authorization"] == "Bearer k-123"
    assert json.loads(request.content) == {
        "model": "flux-2-pro",
        "prompt": "A blue cat on the grass",
        "resolution": "1K",
        "size": "16:9",
    }


@pytest.mark.anyio
async def test_poll_reads_the_task_and_fills_in_the_model() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url}")
        return httpx.Response(200, json=load("task_completed_url_list.json"))

    outcome: Outcome = await provider(handler).poll(task(model="flux-kontext-max"))
    assert seen == ["GET https://apimart.test/v1/tasks/task_01KFG5BBFNK1YQDTJDZY0P0QT2"]
    assert outcome.status is OutcomeStatus.SUCCEEDED and len(outcome.images) == 3
    assert outcome.model == "flux-kontext-max"


@pytest.mark.anyio
async def test_http_failures_become_provider_errors() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(ProviderError, match="timed out"):
        await provider(timeout).submit(task(), None)
    with pytest.raises(ProviderError, match="HTTP 404"):
        await provider(lambda r: httpx.Response(404, json=load("task_query_refused.json"))).poll(
            task()
        )
    with pytest.raises(ProviderError, match="no provider task id"):
        await provider().poll(task(provider_task_id=None))
    refused = {"code": 500, "error": {"message": "quota exhausted"}}
    with pytest.raises(ProviderError, match="quota exhausted"):
        await provider(lambda r: httpx.Response(200, json=refused)).submit(task(), None)


class TestApimartContract(ProviderContract):
    """Poll-only: no callback URL is ever sent."""

    name = "apimart"
    model = "flux-2-pro"
    provider_task_id = "task_01KFG5BBFNK1YQDTJDZY0P0QT2"
    submit_answer = "submit_answer"
    poll_answer = "task_completed_url_string"
    failure_forms = [
        ("task_failed", "poll", Reason.PROVIDER_ERROR),
        ("task_failed_moderated", "poll", Reason.MODERATED),
        ("task_cancelled", "poll", Reason.PROVIDER_ERROR),
    ]
