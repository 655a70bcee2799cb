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
from receiver.models import OutcomeStatus, Reason, Task
from receiver.providers.eigenai import EigenaiProvider, parse_json, parse_response
from receiver.simulator.images import render_png
from tests.unit.provider_contract import ProviderContract
from tests.unit.provider_kit import Handler, make_task, mock_provider

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eigenai"
PNG = render_png("eigenai-unit", 8, 8)
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 40
JPEG_REAL = __import__("base64").b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwc"
    "KDcpLDAxNDQ0Hyc5PTgyPC4zNDL/wAALCAABAAEBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAACf/EABQQAQAAAAAAAAAA"
    "AAAAAAAAAAD/2gAIAQEAAD8AKp//2Q=="
)


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
        ("m", {"mode": "inpainting"}, "params.mode"),
        ("m", {"mode": "image-editing"}, "params.image_file"),  # needs a source image
        ("m", {"image_path": "https://e.example/in.png", "width": 1024}, "params.width"),
        ("m", {"image_file": "x"}, "params.image_file"),  # must be a URL to fetch
        (
            "m",
            {"image_file": "https://e.example/a.png", "image": "https://e.example/b.png"},
            "params.image",
        ),
        ("m", {"lora_strength": 0.8}, "params.lora_strength"),  # editing only
        ("m", {"image_path": "https://e.example/a.png", "weight": "heavy"}, "params.weight"),
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


def _json(data: Any) -> Any:
    raw = json.dumps(data).encode()
    return parse_json(data, raw=raw, content_type="application/json", model="m")


def test_json_answer_with_base64() -> None:
    data = load("response_json_base64.json")
    outcome = _json(data)
    assert outcome.status is OutcomeStatus.SUCCEEDED and outcome.seed == 314159
    [image] = outcome.images
    assert image.inline == base64.b64decode(data["image_base64"])
    assert image.inline is not None and image.inline.startswith(b"\x89PNG")
    assert image.content_type == "image/png"


def test_json_answer_with_a_url_gets_a_deadline() -> None:
    outcome = _json(load("response_json_url.json"))
    assert outcome.status is OutcomeStatus.SUCCEEDED and outcome.seed == 9
    [image] = outcome.images
    assert image.url == "https://cdn.eigenai.example/out/abc.png"
    assert provider().deadline_for(outcome, received_at=100.0) == 100.0 + 600.0


def test_json_errors_are_failures_or_moderation_with_the_answer_kept() -> None:
    moderated = _json(load("error_moderated.json"))
    assert moderated.status is OutcomeStatus.MODERATED
    assert moderated.error_message == "Content flagged by the safety filter"
    failed = _json({"status": "failed", "error": {"message": "GPU lost"}})
    assert failed.status is OutcomeStatus.FAILED and failed.error_message == "GPU lost"
    assert failed.raw is not None


@pytest.mark.parametrize(
    "data",
    [
        {"status": "ok"},
        {"result": {"artifact": "a1", "state": "stored"}},
        {"message": "done", "link": "https://eigen.example/docs"},  # a URL, but not an image's
        [1, 2, 3],
    ],
)
def test_json_without_an_image_is_unparsed_and_kept(data: Any) -> None:
    raw = json.dumps(data).encode()
    response = httpx.Response(200, content=raw, headers={"content-type": "application/json"})
    outcome = parse_response(response, model="m")
    assert outcome.status is OutcomeStatus.UNPARSED
    assert outcome.raw == raw and outcome.raw_content_type == "application/json"
    assert outcome.error_code == "unparsed_response"


def test_images_are_found_anywhere_in_the_json() -> None:
    encoded = base64.b64encode(PNG).decode()
    data = {
        "output": {
            "items": [
                {"preview": f"data:image/png;base64,{encoded}"},
                {"location": "https://cdn.eigen.example/gen/77.jpg?sig=x"},
                {"blob": base64.b64encode(JPEG_REAL).decode()},
                {"note": "not base64 at all, just a sentence that is long enough to be tried"},
            ]
        }
    }
    outcome = _json(data)
    assert outcome.status is OutcomeStatus.SUCCEEDED
    first, second, third = outcome.images
    assert first.inline == PNG and first.content_type == "image/png"
    assert second.url == "https://cdn.eigen.example/gen/77.jpg?sig=x"
    assert third.inline == JPEG_REAL and third.content_type == "image/jpeg"


def test_html_answer_is_unparsed_and_kept() -> None:
    response = httpx.Response(200, text="<html>oops</html>", headers={"content-type": "text/html"})
    outcome = parse_response(response)
    assert outcome.status is OutcomeStatus.UNPARSED and outcome.raw == b"<html>oops</html>"


def test_a_kept_answer_can_be_read_again() -> None:
    encoded = base64.b64encode(PNG).decode()
    raw = json.dumps({"images": [{"url": f"data:image/png;base64,{encoded}"}]}).encode()
    outcome = provider().reparse(raw, "application/json", task())
    assert outcome is not None and outcome.images[0].inline == PNG


# --- the wire ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_submit_sends_json_without_binary_response_and_returns_the_outcome() -> None:
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
    sub = await provider(lambda r: httpx.Response(200, json=data)).submit(task(params={}), None)
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


@pytest.mark.anyio
async def test_editing_uploads_the_fetched_source_as_multipart() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    fetched_from: list[str] = []

    class Fetcher:
        async def fetch(self, url: str) -> Any:
            from receiver.config import FetchSettings
            from receiver.fetch import Fetcher as Real

            fetched_from.append(url)
            return await Real(FetchSettings()).fetch_bytes(JPEG_REAL, url)

    eigen = provider(handler)
    eigen.fetcher = Fetcher()  # type: ignore[assignment]
    params = {
        "image_file": "https://img.example/source.jpg",
        "lora_strength": 0.6,
        "offloading": True,
    }
    eigen.validate("qwen-image-edit", "violet sky", params)
    sub = await eigen.submit(
        task(model="qwen-image-edit", prompt="violet sky", params=params), None
    )
    assert sub.outcome is not None and sub.outcome.images[0].inline == PNG
    assert fetched_from == ["https://img.example/source.jpg"]
    [request] = seen
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    body = request.content
    assert b'name="mode"\r\nContent-Type: text/plain\r\n\r\nimage-editing' in body
    assert b'name="image_file"; filename="source.jpg"' in body
    assert JPEG_REAL in body
    assert b'name="offloading"\r\nContent-Type: text/plain\r\n\r\ntrue' in body
    assert b"https://img.example/source.jpg" not in body  # the bytes went, not the URL


class TestEigenaiContract(ProviderContract):
    """Synchronous: no callbacks, no polling; the answer to the submission is the outcome."""

    name = "eigenai"
    model = "flux-1-kontext"
    submit_answer = "response_json_base64"
    failure_forms = [
        ("error_moderated", "submit", Reason.MODERATED),
        ("unparsed", "submit", Reason.UNPARSED_RESPONSE),
    ]

    def answer(self, name: str, content_type: str = "application/json") -> httpx.Response:
        if name == "error_moderated":  # a refusal comes as an HTTP 400
            return httpx.Response(
                400, content=self.fixture(name), headers={"content-type": content_type}
            )
        if name == "unparsed":  # a shape no document describes
            return httpx.Response(200, json={"result": {"artifact": "a1"}})
        return super().answer(name, content_type)
