"""EigenAI adapter (seed 002): synchronous, so the submit response is the Outcome; bytes
come inline. Also the documented width/height limits and the refusal mapping."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.errors import ProviderError, ValidationFailed
from receiver.models import OutcomeStatus, Task
from receiver.providers.eigenai import EigenaiProvider, parse_json, parse_response
from receiver.simulator.images import render_png
from tests.unit.provider_kit import Handler, make_task, mock_provider

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eigenai"
PNG = render_png("eigenai-unit", 8, 8)
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 40


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def provider(handler: Handler | None = None) -> EigenaiProvider:
    return mock_provider(
        "eigenai", EigenaiProvider, handler, api_key="eg-key", base_url="https://eigen.test"
    )


def task(**over: Any) -> Task:
    return make_task(
        "eigenai",
        **{
            "id": "tsk_e",
            "model": "flux-1-kontext",
            "prompt": "a watercolor fox",
            "params": {"seed": 42, "width": 640, "height": 512},
            **over,
        },
    )


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", load("requests.json")["valid"])
def test_documented_requests_are_valid(body: dict[str, Any]) -> None:
    provider().validate(body["model"], body["prompt"], body.get("params", {}))


@pytest.mark.parametrize(
    ("model", "params", "field"),
    [
        ("m", {"width": 511}, "params.width"),
        ("m", {"width": 2049}, "params.width"),
        ("m", {"height": 4096}, "params.height"),
        ("m", {"height": 256}, "params.height"),
        ("m", {"width": 1024.5}, "params.width"),
        ("m", {"width": True}, "params.width"),
        ("m", {"seed": -1}, "params.seed"),
        ("m", {"mode": "image-editing"}, "params.mode"),
        ("m", {"image_path": "https://e.example/in.png"}, "params.image_path"),
        ("m", {"image_file": "x"}, "params.image_file"),
        ("m", {"lora_strength": 0.8}, "params.lora_strength"),
        ("m", {"binary_response": "yes"}, "params.binary_response"),
        ("m", {"guidance_scale": 0}, "params.guidance_scale"),
        ("m", {"output_format": "webp"}, "params.output_format"),
        (None, {}, "model"),
    ],
)
def test_bad_parameters_name_the_field(
    model: str | None, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        provider().validate(model, "a prompt", params)
    assert caught.value.field == field and caught.value.status == 422


def test_width_and_height_bounds_are_inclusive() -> None:
    for size in (512, 2048):
        provider().validate("m", "p", {"width": size, "height": size})


def test_eigenai_is_synchronous_without_callbacks() -> None:
    assert EigenaiProvider.synchronous and not EigenaiProvider.delivers_callbacks
    assert not provider().can_poll


# --- parsing answers ---------------------------------------------------------------------------


def test_binary_answer_is_an_inline_image() -> None:
    response = httpx.Response(200, content=PNG, headers={"content-type": "image/png"})
    outcome = parse_response(response, model="flux-1-kontext")
    assert outcome.status is OutcomeStatus.SUCCEEDED
    [image] = outcome.images
    assert image.inline == PNG and image.url is None and image.content_type == "image/png"
    assert outcome.model == "flux-1-kontext"
    # Inline bytes have no URL, hence no download deadline.
    assert provider().deadline_for(outcome) is None


def test_untyped_bytes_are_sniffed() -> None:
    outcome = parse_response(httpx.Response(200, content=JPEG), model="m")
    assert outcome.images[0].inline == JPEG and outcome.images[0].content_type == "image/jpeg"


def test_json_answer_with_base64() -> None:
    data = load("response_json_base64.json")
    outcome = parse_json(data, model="m")
    assert outcome.status is OutcomeStatus.SUCCEEDED and outcome.seed == 314159
    [image] = outcome.images
    assert image.inline == base64.b64decode(data["image_base64"])
    assert image.inline is not None and image.inline.startswith(b"\x89PNG")
    assert image.content_type == "image/png"


def test_json_answer_with_a_url_gets_a_deadline() -> None:
    outcome = parse_json(load("response_json_url.json"), model="m")
    assert outcome.status is OutcomeStatus.SUCCEEDED and outcome.seed == 9
    [image] = outcome.images
    assert image.url == "https://cdn.eigenai.example/out/abc.png"
    assert provider().deadline_for(outcome, received_at=100.0) == 100.0 + 600.0


def test_json_errors_are_failures_or_moderation() -> None:
    moderated = parse_json(load("error_moderated.json"), model="m")
    assert moderated.status is OutcomeStatus.MODERATED
    assert moderated.error_message == "Content flagged by the safety filter"
    failed = parse_json({"status": "failed", "error": {"message": "GPU lost"}}, model="m")
    assert failed.status is OutcomeStatus.FAILED and failed.error_message == "GPU lost"
    with pytest.raises(ProviderError, match="no image"):
        parse_json({"status": "ok"}, model="m")


def test_html_answer_is_a_provider_error() -> None:
    response = httpx.Response(200, text="<html>oops</html>", headers={"content-type": "text/html"})
    with pytest.raises(ProviderError, match="neither an image nor JSON"):
        parse_response(response)


# --- the wire ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_submit_asks_for_binary_and_returns_the_outcome() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, content=PNG, headers={"content-type": "image/png", "x-request-id": "req-77"}
        )

    submission = await provider(handler).submit(task(), None)
    [request] = seen
    assert str(request.url) == "https://eigen.test/api/v1/generate"
    assert request.headers["authorization"] == "Bearer eg-key"
    assert json.loads(request.content) == {
        "model": "flux-1-kontext",
        "prompt": "a watercolor fox",
        "binary_response": True,
        "seed": 42,
        "width": 640,
        "height": 512,
    }
    assert submission.provider_task_id == "req-77"
    assert submission.outcome is not None
    assert submission.outcome.status is OutcomeStatus.SUCCEEDED
    assert submission.outcome.images[0].inline == PNG
    assert submission.outcome.model == "flux-1-kontext"


@pytest.mark.anyio
async def test_submit_with_json_answer() -> None:
    data = load("response_json_base64.json")
    sub = await provider(lambda r: httpx.Response(200, json=data)).submit(
        task(params={"binary_response": False}), None
    )
    assert sub.outcome is not None and sub.outcome.seed == 314159
    assert sub.outcome.images[0].inline == base64.b64decode(data["image_base64"])


@pytest.mark.anyio
async def test_content_refusal_is_moderated_with_the_provider_message() -> None:
    refusal = load("error_moderated.json")
    sub = await provider(lambda r: httpx.Response(400, json=refusal)).submit(task(), None)
    assert sub.outcome is not None
    assert sub.outcome.status is OutcomeStatus.MODERATED
    assert sub.outcome.error_message == "Content flagged by the safety filter"
    assert sub.outcome.model == "flux-1-kontext"


@pytest.mark.anyio
async def test_other_http_errors_fail_with_the_provider_message() -> None:
    invalid = load("error_validation.json")
    with pytest.raises(ProviderError) as caught:
        await provider(lambda r: httpx.Response(422, json=invalid)).submit(task(), None)
    assert caught.value.message == "eigenai: HTTP 422: width must be between 512 and 2048"
    with pytest.raises(ProviderError) as caught:
        await provider(lambda r: httpx.Response(500, json={"error": "out of capacity"})).submit(
            task(), None
        )
    assert caught.value.message == "eigenai: HTTP 500: out of capacity"
    # A 5xx about "safety" is an outage, not a moderation verdict.
    with pytest.raises(ProviderError):
        await provider(lambda r: httpx.Response(503, json={"error": "safety service down"})).submit(
            task(), None
        )


@pytest.mark.anyio
async def test_transport_errors_do_not_leak() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(ProviderError, match="timed out"):
        await provider(broken).submit(task(), None)
