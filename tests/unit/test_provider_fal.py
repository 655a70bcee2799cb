"""fal adapter: webhook and queue bodies into Outcomes (moderation included), validation, the
queue submit with ``fal_webhook``, polling, and ED25519 verification against a JWKS fetched
through the adapter's own HTTP client; plus the simulator's signing against its own JWKS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.config import ProviderSettings
from receiver.errors import BadRequest, ProviderError, SignatureError, ValidationFailed
from receiver.models import OutcomeStatus, Reason, Task
from receiver.providers import CallbackTarget, Provider, build_provider
from receiver.providers.fal import DEFAULT_JWKS_URL, FalProvider, app_id, from_payload
from receiver.signatures import fal_sign, public_jwk
from receiver.simulator import Faults, build_simulator
from tests.unit.provider_contract import ProviderContract
from tests.unit.provider_kit import Handler, make_task, mock_provider

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fal"
JWKS_URL = "https://keys.fal.test/.well-known/jwks.json"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def load(name: str) -> Any:
    return json.loads(raw(name))


def provider(handler: Handler | None = None, **settings: Any) -> FalProvider:
    return mock_provider(
        "fal",
        FalProvider,
        handler,
        **{"base_url": "https://queue.fal.test", "api_key": "k-1:s-1", **settings},
    )


def task(**over: Any) -> Task:
    return make_task(
        "fal",
        **{
            "id": "tsk_f",
            "model": "fal-ai/flux/dev",
            "prompt": "a red fox in the snow",
            "params": {"num_images": 2, "seed": 42},
            "provider_task_id": "80e732af-660e-45cd-bd63-580e4f2a94cc",
            **over,
        },
    )


# --- parsing callbacks ----------------------------------------------------------------------


def test_ok_callback_gives_every_image_and_the_seed() -> None:
    body = raw("callback_ok.json")
    callback = provider().parse_callback({}, body)
    outcome = callback.outcome
    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert [i.url for i in outcome.images] == [
        i["url"] for i in load("callback_ok.json")["payload"]["images"]
    ]
    assert {i.content_type for i in outcome.images} == {"image/png"}
    assert outcome.seed == 196619188014358660
    assert outcome.provider_task_id == "123e4567-e89b-12d3-a456-426614174000"
    assert callback.provider_task_id == outcome.provider_task_id
    digest = hashlib.sha256(body).hexdigest()
    assert callback.delivery_key == f"123e4567-e89b-12d3-a456-426614174000:{digest}"


def test_delivery_key_differs_when_the_body_differs() -> None:
    body = raw("callback_ok.json")
    other = body.replace(b'"Photo of a cute dog"', b'"Photo of a cute cat"')
    fal = provider()
    assert fal.parse_callback({}, body).delivery_key != fal.parse_callback({}, other).delivery_key
    assert fal.parse_callback({}, body).delivery_key == fal.parse_callback({}, body).delivery_key


def test_url_lifetime_is_assumed_one_hour() -> None:
    outcome = provider().parse_callback({}, raw("callback_ok.json")).outcome
    assert provider().deadline_for(outcome, 1000.0) == 1000.0 + 3600


def test_error_callback_is_a_failure_with_the_message() -> None:
    outcome = provider().parse_callback({}, raw("callback_error.json")).outcome
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.error_code == "error"
    assert outcome.error_message is not None
    assert "Invalid status code: 422" in outcome.error_message
    assert "field required" in outcome.error_message


def test_content_policy_error_is_moderated() -> None:
    outcome = provider().parse_callback({}, raw("callback_content_policy.json")).outcome
    assert outcome.status is OutcomeStatus.MODERATED
    assert outcome.error_code == "moderated"


def test_every_image_flagged_is_moderated() -> None:
    outcome = provider().parse_callback({}, raw("callback_nsfw_all.json")).outcome
    assert outcome.status is OutcomeStatus.MODERATED
    assert outcome.images == ()
    assert outcome.error_message is not None and "safety" in outcome.error_message


def test_some_images_flagged_keeps_only_the_clean_ones() -> None:
    outcome = provider().parse_callback({}, raw("callback_nsfw_some.json")).outcome
    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert [i.url for i in outcome.images] == ["https://v3.fal.media/files/x/clean.jpg"]
    assert outcome.seed == 7


def test_payload_error_is_pending_so_the_result_is_polled() -> None:
    outcome = provider().parse_callback({}, raw("callback_payload_error.json")).outcome
    assert outcome.status is OutcomeStatus.PENDING
    assert not outcome.final


def test_data_uri_images_are_inline() -> None:
    payload = {"images": [{"url": "data:image/png;base64,iVBORw0KGgo="}], "seed": 1}
    outcome = from_payload(payload, "r1")
    assert outcome.status is OutcomeStatus.SUCCEEDED
    [image] = outcome.images
    assert image.url is None and image.inline == b"\x89PNG\r\n\x1a\n"
    assert image.content_type == "image/png"


def test_ok_without_images_is_a_failure() -> None:
    outcome = from_payload({"images": [], "seed": 3}, "r1")
    assert outcome.status is OutcomeStatus.FAILED and outcome.error_code == "no_output"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"status": "OK", "payload": {}}',  # no request id anywhere
        b'{"request_id": "r", "status": "MAYBE"}',
        b'{"request_id": "r", "status": "OK", "payload": "x"}',
    ],
)
def test_unreadable_callbacks_are_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequest):
        provider().parse_callback({}, body)


# --- validation -------------------------------------------------------------------------------


def test_valid_requests_pass() -> None:
    fal = provider()
    fal.validate(None, "a fox", {})
    fal.validate(
        "fal-ai/flux-pro/v1.1",
        "a fox",
        {
            "image_size": {"width": 1024, "height": 768},
            "num_images": 4,
            "seed": 0,
            "num_inference_steps": 28,
            "guidance_scale": 3.5,
            "enable_safety_checker": True,
            "safety_tolerance": "2",
            "output_format": "png",
            "acceleration": "regular",
        },
    )
    fal.validate("fal-ai/flux/schnell", "x" * 10_000, {"image_size": "landscape_16_9"})


@pytest.mark.parametrize(
    ("model", "prompt", "params", "field"),
    [
        ("no-slash", "p", {}, "model"),
        ("fal-ai/../x y", "p", {}, "model"),
        (None, "   ", {}, "prompt"),
        (None, "x" * 10_001, {}, "prompt"),
        (None, "p", {"prompt": "p"}, "params.prompt"),
        (None, "p", {"num_images": 0}, "params.num_images"),
        (None, "p", {"num_images": 5}, "params.num_images"),
        (None, "p", {"num_images": True}, "params.num_images"),
        (None, "p", {"num_images": "2"}, "params.num_images"),
        (None, "p", {"image_size": "huge"}, "params.image_size"),
        (None, "p", {"image_size": 1024}, "params.image_size"),
        (None, "p", {"image_size": {"width": 1024}}, "params.image_size.height"),
        (None, "p", {"image_size": {"width": 32, "height": 512}}, "params.image_size.width"),
        (None, "p", {"image_size": {"width": 512, "height": 512, "d": 1}}, "params.image_size.d"),
        (None, "p", {"seed": -1}, "params.seed"),
        (None, "p", {"num_inference_steps": 51}, "params.num_inference_steps"),
        (None, "p", {"guidance_scale": 25}, "params.guidance_scale"),
        (None, "p", {"guidance_scale": "3"}, "params.guidance_scale"),
        (None, "p", {"enable_safety_checker": "no"}, "params.enable_safety_checker"),
        (None, "p", {"safety_tolerance": 9}, "params.safety_tolerance"),
        (None, "p", {"output_format": "webp"}, "params.output_format"),
        (None, "p", {"acceleration": "max"}, "params.acceleration"),
        (None, "p", {"webhook": "https://evil.test"}, "params.webhook"),
    ],
)
def test_invalid_requests_name_the_field(
    model: str | None, prompt: str, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        provider().validate(model, prompt, params)
    assert caught.value.field == field
    assert caught.value.status == 422


# --- submit -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_submit_queues_with_fal_webhook_and_key_auth() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=load("submit_response.json"))

    callback = "https://receiver.test/v1/hooks/fal/tok.en?x=1&y=2"
    submission = await provider(handler).submit(task(), CallbackTarget(callback, "unused"))
    assert submission.provider_task_id == "80e732af-660e-45cd-bd63-580e4f2a94cc"
    assert submission.outcome is None
    [request] = seen
    assert request.method == "POST"
    assert request.url.host == "queue.fal.test" and request.url.path == "/fal-ai/flux/dev"
    assert request.url.params["fal_webhook"] == callback  # encoded, then decoded intact
    assert request.headers["authorization"] == "Key k-1:s-1"
    assert json.loads(request.content) == {
        "num_images": 2,
        "seed": 42,
        "prompt": "a red fox in the snow",
    }


@pytest.mark.anyio
async def test_submit_without_request_id_is_a_provider_error() -> None:
    fal = provider(lambda r: httpx.Response(200, json={"status": "IN_QUEUE"}))
    with pytest.raises(ProviderError):
        await fal.submit(task(), None)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "handler",
    [
        lambda r: httpx.Response(401, json={"detail": "No user found"}),
        lambda r: httpx.Response(200, content=b"<html>"),
    ],
)
async def test_submit_refusals_are_provider_errors(handler: Handler) -> None:
    with pytest.raises(ProviderError):
        await provider(handler).submit(task(), None)


@pytest.mark.anyio
async def test_submit_timeout_does_not_leak_httpx() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(ProviderError) as caught:
        await provider(handler).submit(task(), None)
    assert caught.value.maybe_sent  # it may have been queued: never POSTed twice
    assert len(calls) == 1


# --- polling ----------------------------------------------------------------------------------


def test_queue_urls_use_the_app_without_sub_path() -> None:
    assert app_id("fal-ai/flux/dev") == "fal-ai/flux"
    assert app_id("fal-ai/flux-pro/v1.1-ultra") == "fal-ai/flux-pro"
    assert app_id("fal-ai/fast-sdxl") == "fal-ai/fast-sdxl"


def _queue(
    status: dict[str, Any], result: httpx.Response | None, seen: list[httpx.Request]
) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.headers["authorization"] == "Key k-1:s-1"
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json=status)
        assert result is not None, "the result must not be read before completion"
        return result

    return handler


@pytest.mark.anyio
async def test_poll_in_progress_is_pending() -> None:
    seen: list[httpx.Request] = []
    fal = provider(_queue(load("status_in_progress.json"), None, seen))
    outcome = await fal.poll(task())
    assert outcome.status is OutcomeStatus.PENDING
    [request] = seen
    assert request.url.path == "/fal-ai/flux/requests/80e732af-660e-45cd-bd63-580e4f2a94cc/status"


@pytest.mark.anyio
async def test_poll_completed_reads_the_result() -> None:
    seen: list[httpx.Request] = []
    result = httpx.Response(200, json=load("result.json"))
    fal = provider(_queue(load("status_completed.json"), result, seen))
    outcome = await fal.poll(task())
    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert [i.url for i in outcome.images] == ["https://v3.fal.media/files/penguin/xyz789.jpg"]
    assert outcome.seed == 3118400321
    # The answer's response_url is on queue.fal.run, not our base URL: our key stays home.
    assert [r.url.host for r in seen] == ["queue.fal.test", "queue.fal.test"]
    assert seen[1].url.path == "/fal-ai/flux/requests/80e732af-660e-45cd-bd63-580e4f2a94cc"


@pytest.mark.anyio
async def test_poll_follows_a_response_url_on_the_base_url() -> None:
    seen: list[httpx.Request] = []
    status = {
        "status": "COMPLETED",
        "response_url": "https://queue.fal.test/fal-ai/flux/requests/other-id",
    }
    fal = provider(_queue(status, httpx.Response(200, json=load("result.json")), seen))
    await fal.poll(task())
    assert seen[1].url.path == "/fal-ai/flux/requests/other-id"


@pytest.mark.anyio
async def test_poll_completed_with_error_is_a_failure() -> None:
    seen: list[httpx.Request] = []
    status = {"status": "COMPLETED", "error": "Runner crashed", "error_type": "runner_crash"}
    outcome = await provider(_queue(status, None, seen)).poll(task())
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.error_message is not None and "Runner crashed" in outcome.error_message
    assert len(seen) == 1


@pytest.mark.anyio
async def test_poll_result_422_is_the_requests_failure() -> None:
    seen: list[httpx.Request] = []
    result = httpx.Response(422, json=load("callback_content_policy.json")["payload"])
    outcome = await provider(_queue(load("status_completed.json"), result, seen)).poll(task())
    assert outcome.status is OutcomeStatus.MODERATED


@pytest.mark.anyio
async def test_poll_result_still_in_progress_is_pending_not_failed() -> None:
    seen: list[httpx.Request] = []
    result = httpx.Response(400, json={"detail": "Request is still in progress"})
    outcome = await provider(_queue(load("status_completed.json"), result, seen)).poll(task())
    assert outcome.status is OutcomeStatus.PENDING


@pytest.mark.anyio
async def test_poll_result_5xx_is_a_provider_error() -> None:
    seen: list[httpx.Request] = []
    result = httpx.Response(503, text="busy")
    with pytest.raises(ProviderError):
        await provider(_queue(load("status_completed.json"), result, seen)).poll(task())


@pytest.mark.anyio
async def test_poll_result_connection_error_does_not_leak_httpx() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json=load("status_completed.json"))
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ProviderError):
        await provider(handler).poll(task())


@pytest.mark.anyio
async def test_poll_without_request_id_is_a_provider_error() -> None:
    with pytest.raises(ProviderError):
        await provider().poll(task(provider_task_id=None))


# --- signature verification -------------------------------------------------------------------


class Keys:
    """A JWKS endpoint the tests control, counting fetches."""

    def __init__(self, *keys: Ed25519PrivateKey) -> None:
        self.keys = list(keys)
        self.fetches: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == JWKS_URL
        self.fetches.append(request)
        jwks = [public_jwk(k.public_key(), kid=f"k{i}") for i, k in enumerate(self.keys)]
        return httpx.Response(200, json={"keys": jwks})


def signed(
    key: Ed25519PrivateKey,
    body: bytes,
    *,
    request_id: str = "123e4567-e89b-12d3-a456-426614174000",
    ts: int | None = None,
) -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    return {
        "x-fal-webhook-request-id": request_id,
        "x-fal-webhook-user-id": "user-1",
        "x-fal-webhook-timestamp": str(stamp),
        "x-fal-webhook-signature": fal_sign(key, request_id, "user-1", stamp, body),
    }


def fal_with(keys: Keys, **settings: Any) -> FalProvider:
    return provider(keys.handler, jwks_url=JWKS_URL, **settings)


@pytest.mark.anyio
async def test_valid_signature_passes_and_the_jwks_is_cached() -> None:
    key = Ed25519PrivateKey.generate()
    keys = Keys(Ed25519PrivateKey.generate(), key)  # any key of the set will do
    fal = fal_with(keys)
    body = raw("callback_ok.json")
    await fal.verify_callback(signed(key, body), body, [])
    await fal.verify_callback(signed(key, body), body, [])
    assert len(keys.fetches) == 1
    # Fetched without our API key: the JWKS URL is configurable and public.
    assert "authorization" not in keys.fetches[0].headers


@pytest.mark.anyio
async def test_tampered_body_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    fal = fal_with(Keys(key))
    body = raw("callback_ok.json")
    tampered = body.replace(b"abc123.png", b"abc124.png")
    with pytest.raises(SignatureError) as caught:
        await fal.verify_callback(signed(key, body), tampered, [])
    assert caught.value.cause == "signature"


@pytest.mark.anyio
async def test_key_outside_the_jwks_is_refused_and_refetches_are_rate_limited() -> None:
    keys = Keys(Ed25519PrivateKey.generate())
    fal = fal_with(keys)
    attacker = Ed25519PrivateKey.generate()
    body = raw("callback_ok.json")
    for _ in range(5):
        with pytest.raises(SignatureError) as caught:
            await fal.verify_callback(signed(attacker, body), body, [])
        assert caught.value.cause == "signature"
    assert len(keys.fetches) == 1  # not one fetch per forged callback


@pytest.mark.anyio
async def test_rotated_key_is_picked_up_by_one_refetch() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = Keys(old)
    fal = fal_with(keys, jwks_min_refresh_seconds=0)
    body = raw("callback_ok.json")
    await fal.verify_callback(signed(old, body), body, [])
    keys.keys = [new]
    await fal.verify_callback(signed(new, body), body, [])
    assert len(keys.fetches) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("skew", [-301, 301, -3600])
async def test_timestamps_out_of_tolerance_are_refused(skew: int) -> None:
    key = Ed25519PrivateKey.generate()
    fal = fal_with(Keys(key))
    body = raw("callback_ok.json")
    with pytest.raises(SignatureError) as caught:
        await fal.verify_callback(signed(key, body, ts=int(time.time()) + skew), body, [])
    assert caught.value.cause == "stale"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "missing",
    [
        "x-fal-webhook-request-id",
        "x-fal-webhook-user-id",
        "x-fal-webhook-timestamp",
        "x-fal-webhook-signature",
    ],
)
async def test_missing_headers_are_refused(missing: str) -> None:
    key = Ed25519PrivateKey.generate()
    fal = fal_with(Keys(key))
    body = raw("callback_ok.json")
    headers = {k: v for k, v in signed(key, body).items() if k != missing}
    with pytest.raises(SignatureError) as caught:
        await fal.verify_callback(headers, body, [])
    assert caught.value.cause == "missing_header"


@pytest.mark.anyio
async def test_signed_request_id_must_match_the_body() -> None:
    key = Ed25519PrivateKey.generate()
    fal = fal_with(Keys(key))
    body = raw("callback_ok.json")  # request 123e4567-…
    headers = signed(key, body, request_id="another-request")
    with pytest.raises(SignatureError) as caught:
        await fal.verify_callback(headers, body, [])
    assert caught.value.cause == "mismatch"


@pytest.mark.anyio
async def test_unreachable_jwks_is_a_provider_error_not_a_401() -> None:
    """Our failure to fetch keys is not the sender's fault: 502, so fal retries."""

    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    fal = provider(down, jwks_url=JWKS_URL)
    key = Ed25519PrivateKey.generate()
    body = raw("callback_ok.json")
    with pytest.raises(ProviderError):
        await fal.verify_callback(signed(key, body), body, [])


@pytest.mark.anyio
async def test_jwks_without_keys_is_a_provider_error() -> None:
    fal = provider(lambda r: httpx.Response(200, json={"nope": 1}), jwks_url=JWKS_URL)
    key = Ed25519PrivateKey.generate()
    body = raw("callback_ok.json")
    with pytest.raises(ProviderError):
        await fal.verify_callback(signed(key, body), body, [])


def test_default_jwks_url_is_fals_public_one() -> None:
    assert (
        provider().jwks_url
        == DEFAULT_JWKS_URL
        == ("https://rest.alpha.fal.ai/.well-known/jwks.json")
    )


# --- against the simulator ------------------------------------------------------------------


@pytest.mark.anyio
async def test_simulator_round_trip_submit_sign_verify_poll() -> None:
    """The adapter against the simulated queue (in process): submit, the callback the
    simulator signs verifies against its JWKS, and polling reads the same result."""
    app, sim = build_simulator("http://sim.test", Faults(delay=0.0), ["fal"])
    delivered: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        delivered.append(request)
        return httpx.Response(200)

    await sim.http.aclose()
    sim.http = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim.test")
    conf = ProviderSettings.model_validate(
        {
            "base_url": "http://sim.test",
            "api_key": "sim",
            "jwks_url": "http://sim.test/.well-known/jwks.json",
        }
    )
    fal = build_provider("fal", conf, http)
    the_task = task(params={"num_images": 2, "seed": 99, "image_size": "square"})
    submission = await fal.submit(the_task, CallbackTarget("https://receiver.test/hook", "x"))
    for _ in range(200):
        if delivered:
            break
        await asyncio.sleep(0.01)
    [callback] = delivered
    assert callback.url.host == "receiver.test"
    body = callback.content
    await fal.verify_callback(callback.headers, body, [])
    with pytest.raises(SignatureError):
        await fal.verify_callback(callback.headers, body.replace(b'"OK"', b'"ERROR"'), [])
    parsed = fal.parse_callback(callback.headers, body)
    assert parsed.provider_task_id == submission.provider_task_id
    assert parsed.outcome.status is OutcomeStatus.SUCCEEDED
    assert parsed.outcome.seed == 99 and len(parsed.outcome.images) == 2
    polled = await fal.poll(task(provider_task_id=submission.provider_task_id))
    assert polled.status is OutcomeStatus.SUCCEEDED
    assert [i.url for i in polled.images] == [i.url for i in parsed.outcome.images]
    await sim.aclose()
    await http.aclose()


@pytest.mark.anyio
async def test_simulated_queue_does_not_swallow_other_simulators_routes() -> None:
    """fal's submit route catches ``/{owner}/{app}``: listed first, it must still leave the
    other simulators' POST routes (``/v1/…``) alone, and it wants ``Key`` auth."""
    app, sim = build_simulator("http://sim.test", Faults(delay=60.0), ["fal", "simulated"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim.test") as client:
        generic = await client.post("/v1/generate", json={"prompt": "p", "faults": {}})
        assert generic.status_code == 201 and "request_id" not in generic.json()
        anonymous = await client.post("/fal-ai/flux/dev", json={"prompt": "p"})
        assert anonymous.status_code == 401
        queued = await client.post(
            "/fal-ai/flux/dev", json={"prompt": "p"}, headers={"authorization": "Key k"}
        )
        assert queued.status_code == 200
        assert queued.json()["status_url"].startswith("http://sim.test/fal-ai/flux/requests/")
        too_many = await client.post(
            "/fal-ai/flux/dev",
            json={"prompt": "p", "num_images": 9},
            headers={"authorization": "Key k"},
        )
        assert too_many.status_code == 422
    await sim.aclose()


CONTRACT_KEY = Ed25519PrivateKey.generate()


class TestFalContract(ProviderContract):
    name = "fal"
    model = "fal-ai/flux/dev"
    settings = {"base_url": "https://queue.fal.test", "jwks_url": JWKS_URL}
    provider_task_id = "80e732af-660e-45cd-bd63-580e4f2a94cc"
    success_callback = "callback_ok"
    submit_answer = "submit_response"
    poll_answer = "status_completed"
    failure_forms = [
        ("callback_error", "callback", Reason.PROVIDER_ERROR),
        ("callback_content_policy", "callback", Reason.MODERATED),
        ("callback_nsfw_all", "callback", Reason.MODERATED),
    ]

    def provider(self, handler: Any = None) -> Provider:
        keys = Keys(CONTRACT_KEY)

        def route(request: httpx.Request) -> httpx.Response:
            if str(request.url) == JWKS_URL:
                return keys.handler(request)
            return handler(request) if handler else httpx.Response(500)

        return super().provider(route)

    def sign(self, provider: Provider, body: bytes, secret: str) -> dict[str, str]:
        request_id = json.loads(body).get("request_id") or "r-1"
        return signed(CONTRACT_KEY, body, request_id=request_id)

    def poll_handler(self, name: str) -> Any:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/status"):
                return self.answer(name)
            return httpx.Response(200, json=load("result.json"))

        return handler


# --- image inputs of the edit endpoints (Kontext, FLUX.2 edit, image-to-image) -------------


@pytest.mark.parametrize(
    ("model", "params"),
    [
        (
            "fal-ai/flux-pro/kontext",
            {"image_url": "https://img.test/a.png", "aspect_ratio": "16:9"},
        ),
        ("fal-ai/flux-pro/kontext/max/multi", {"image_urls": ["https://img.test/a.png"] * 2}),
        ("fal-ai/flux-2/edit", {"image_urls": ["data:image/png;base64,iVBORw0KGgo="]}),
        (
            "fal-ai/flux/dev/image-to-image",
            {"image_url": "https://img.test/a.png", "strength": 0.8},
        ),
    ],
)
def test_edit_endpoints_take_their_image_inputs(model: str, params: dict[str, Any]) -> None:
    provider().validate(model, "make it dusk", params)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"image_url": "file:///etc/passwd"}, "params.image_url"),
        ({"image_url": 7}, "params.image_url"),
        ({"image_urls": []}, "params.image_urls"),
        ({"image_urls": ["https://img.test/a.png"] * 11}, "params.image_urls"),
        ({"image_urls": ["https://img.test/a.png", "ftp://x"]}, "params.image_urls[1]"),
        (
            {"image_url": "https://img.test/a.png", "image_urls": ["https://img.test/b.png"]},
            "params.image_urls",
        ),
        ({"aspect_ratio": "5:1"}, "params.aspect_ratio"),
        ({"strength": 0}, "params.strength"),
        ({"strength": 1.5}, "params.strength"),
    ],
)
def test_bad_image_inputs_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        provider().validate("fal-ai/flux-pro/kontext", "p", params)
    assert caught.value.field == field


@pytest.mark.anyio
async def test_submit_sends_the_image_inputs_in_the_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=load("submit_response.json"))

    params = {"image_urls": ["https://img.test/a.png", "https://img.test/b.png"]}
    edit = task(model="fal-ai/flux-2/edit", params=params)
    await provider(handler).submit(edit, CallbackTarget("https://r.test/h", "unused"))
    assert seen[0].url.path == "/fal-ai/flux-2/edit"
    assert json.loads(seen[0].content)["image_urls"] == params["image_urls"]


def test_sidecar_marks_edits_but_not_a_named_size() -> None:
    from receiver.models import Outcome
    from receiver.sidecar import build

    def source_type(params: dict[str, Any]) -> str:
        doc = build(
            task(params=params),
            Outcome(OutcomeStatus.SUCCEEDED),
            index=0,
            content_type="image/png",
            size=1,
            sha256="0" * 64,
            width=None,
            height=None,
            source_url=None,
            archived_at=time.time(),
        )
        return str(doc["digital_source_type"])

    assert source_type({"image_size": "square"}) == "trainedAlgorithmicMedia"
    assert source_type({"image_url": "https://img.test/a.png"}) == (
        "compositeWithTrainedAlgorithmicMedia"
    )
