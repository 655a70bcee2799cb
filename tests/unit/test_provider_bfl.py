"""Issue 3: the BFL and Vtrix adapters without servers.

Documented payloads (tests/fixtures/bfl, tests/fixtures/vtrix) parse into Outcomes; validation
names the field; both BFL authentication forms verify and every tampering is refused; the
wire requests are checked through httpx's MockTransport, and polling against the simulator
app in process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.config import ProviderSettings
from receiver.errors import BadRequest, ProviderError, SignatureError, ValidationFailed
from receiver.models import OutcomeStatus, Reason, Task
from receiver.providers import CallbackTarget, Provider, build_provider
from receiver.providers.bfl import BflProvider, delivery_key, parse_result, url_expiry
from receiver.providers.vtrix import VtrixProvider, parse_any
from receiver.signatures import bfl_sign, task_secrets
from receiver.simulator import Faults, build_simulator
from tests.unit.provider_contract import ProviderContract
from tests.unit.provider_kit import make_task

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SECRETS = task_secrets(
    ["unit-test-key-0123456789abcdef", "older-key-0123456789abcdef"], "t1", "hex"
)
SE_2026 = 1795169400.0  # 2026-11-20T10:10:00Z, the se= of the fixtures' sample URL


def fixture(provider: str, name: str) -> Any:
    return json.loads((FIXTURES / provider / f"{name}.json").read_text())


def raw_fixture(provider: str, name: str) -> bytes:
    return (FIXTURES / provider / f"{name}.json").read_bytes()


def make(
    cls: type[BflProvider] = BflProvider,
    handler: Callable[[httpx.Request], httpx.Response] | None = None,
    **settings: Any,
) -> BflProvider:
    transport = httpx.MockTransport(handler or (lambda r: httpx.Response(500)))
    conf = ProviderSettings(api_key="k-123", **settings)
    return cls(conf, httpx.AsyncClient(transport=transport))


def task(provider: str = "bfl", model: str | None = "flux-2-pro", **params: Any) -> Task:
    return make_task(
        provider,
        id="t1",
        model=model,
        prompt="a lighthouse",
        params=params,
        provider_task_id="bfl_abc",
    )


TARGET = CallbackTarget(url="https://receiver.test/v1/hooks/bfl/tok", secret=SECRETS[0])


# --- documented payloads ------------------------------------------------------------------------


def test_registry_builds_both() -> None:
    http = httpx.AsyncClient()
    assert isinstance(build_provider("bfl", ProviderSettings(), http), BflProvider)
    assert isinstance(build_provider("vtrix", ProviderSettings(), http), VtrixProvider)


def test_bfl_ready_webhook() -> None:
    outcome = parse_result(fixture("bfl", "webhook_ready"))
    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert outcome.provider_task_id == "3f2a9c1e-7b4d-4e8a-9c21-5d6e7f809a1b"
    assert outcome.seed == 1847261
    [image] = outcome.images
    assert image.url is not None and image.url.startswith("https://delivery-us1.bfl.ai/")
    assert image.expires_at == SE_2026


def test_bfl_get_result_ready_and_pending() -> None:
    ready = parse_result(fixture("bfl", "get_result_ready"))
    assert ready.status is OutcomeStatus.SUCCEEDED and ready.seed == 1847261
    assert ready.images[0].expires_at == SE_2026
    pending = parse_result(fixture("bfl", "get_result_pending"))
    assert pending.status is OutcomeStatus.PENDING and not pending.final


def test_bfl_error_webhook() -> None:
    outcome = parse_result(fixture("bfl", "webhook_error"))
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.error_code == "error"
    assert outcome.error_message is not None
    assert "please retry" in outcome.error_message
    assert "Internal Server Error" in outcome.error_message


def test_bfl_moderated_statuses() -> None:
    content = parse_result(fixture("bfl", "webhook_content_moderated"))
    assert content.status is OutcomeStatus.MODERATED
    assert content.error_code == "content_moderated"
    assert content.error_message is not None
    assert "flagged by the moderation filter" in content.error_message
    request = parse_result(fixture("bfl", "get_result_request_moderated"))
    assert request.status is OutcomeStatus.MODERATED
    assert request.error_code == "request_moderated"
    assert "Derivative Works Filter" in (request.error_message or "")


def test_bfl_task_not_found_is_final() -> None:
    outcome = parse_result(fixture("bfl", "get_result_task_not_found"))
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.error_code == "task_not_found"


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x"},
        {"id": "x", "status": "Exploded"},
        ["Ready"],
        {"id": "x", "status": 3},
    ],
)
def test_bfl_unreadable_results_are_bad_requests(body: Any) -> None:
    with pytest.raises(BadRequest):
        parse_result(body)


def test_bfl_ready_without_sample_is_a_failure_not_a_success() -> None:
    outcome = parse_result({"id": "x", "status": "Ready", "result": {"seed": 1}})
    assert outcome.status is OutcomeStatus.FAILED and outcome.error_code == "no_output"


def test_vtrix_callbacks_accept_bfls_shape_too() -> None:
    assert parse_any(fixture("bfl", "webhook_ready")).seed == 1847261
    wrapped = {"code": 200, "data": fixture("vtrix", "task_failed_code_message")}
    provider = make(VtrixProvider)
    cb = provider.parse_callback({}, json.dumps(wrapped).encode())
    assert cb.outcome.status is OutcomeStatus.FAILED
    assert cb.provider_task_id == "d758n65e878c73cmdg20"


def test_url_expiry_forms() -> None:
    assert url_expiry("https://d.test/s.jpeg?se=2026-11-20T10%3A10%3A00Z&sig=x") == SE_2026
    assert url_expiry("https://d.test/s.png?expires=1795169400&sig=x") == SE_2026
    assert url_expiry("https://d.test/s.png?se=garbage") is None
    assert url_expiry("https://d.test/s.png") is None


def test_delivery_key_is_stable_and_names_id_and_status() -> None:
    body = raw_fixture("bfl", "webhook_ready")
    cb = make().parse_callback({}, body)
    assert cb.delivery_key.startswith("3f2a9c1e-7b4d-4e8a-9c21-5d6e7f809a1b:Ready:")
    assert cb.delivery_key == make().parse_callback({}, body).delivery_key
    changed = body.replace(b"10:05:00Z", b"10:05:01Z")
    assert delivery_key(json.loads(changed), changed) != cb.delivery_key


def test_callback_body_not_json_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        make().parse_callback({}, b"{not json")


# --- validation --------------------------------------------------------------------------------

INVALID_BFL = [
    ("flux-2-pro", {"width": 63}, "params.width"),
    ("flux-2-pro", {"width": 1000}, "params.width"),  # not a multiple of 16
    ("flux-2-pro", {"height": 4096, "width": 2048}, "params.width"),  # over 4 MP
    ("flux-2-pro", {"height": "512"}, "params.height"),
    ("flux-2-max", {"safety_tolerance": 6}, "params.safety_tolerance"),
    ("flux-2-max", {"safety_tolerance": -1}, "params.safety_tolerance"),
    ("flux-2-max", {"output_format": "gif"}, "params.output_format"),
    ("flux-2-max", {"seed": -3}, "params.seed"),
    ("flux-2-max", {"seed": True}, "params.seed"),
    ("flux-2-max", {"prompt_upsampling": "yes"}, "params.prompt_upsampling"),
    ("flux-2-pro", {"input_image_9": "https://x.test/9.png"}, "params.input_image_9"),
    ("flux-2-pro", {"input_image_1": "https://x.test/1.png"}, "params.input_image_1"),
    ("flux-2-pro", {"input_image": 5}, "params.input_image"),
    ("flux-2-pro", {"guidance": 3.0}, "params.guidance"),  # flex only
    ("flux-2-pro", {"steps": 20}, "params.steps"),  # flex only
    ("flux-2-pro", {"aspect_ratio": "1:1"}, "params.aspect_ratio"),  # kontext only
    ("flux-2-flex", {"steps": 0}, "params.steps"),
    ("flux-2-flex", {"steps": 51}, "params.steps"),
    ("flux-2-flex", {"guidance": 11}, "params.guidance"),
    ("flux-kontext-pro", {"input_image_5": "https://x.test/5.png"}, "params.input_image_5"),
    ("flux-kontext-pro", {"aspect_ratio": "17:4"}, "params.aspect_ratio"),  # past 4:1
    ("flux-kontext-pro", {"aspect_ratio": "1:5"}, "params.aspect_ratio"),  # past 1:4
    ("flux-kontext-pro", {"aspect_ratio": "wide"}, "params.aspect_ratio"),
    ("flux-kontext-pro", {"aspect_ratio": "0:9"}, "params.aspect_ratio"),
    ("flux-kontext-max", {"safety_tolerance": 7}, "params.safety_tolerance"),
    ("flux-kontext-max", {"output_format": "webp"}, "params.output_format"),
    ("flux-kontext-max", {"width": 1024}, "params.width"),
    ("flux-2-pro", {"webhook_url": "https://elsewhere.test"}, "params.webhook_url"),
    ("flux-2-pro", {"negative_prompt": "blur"}, "params.negative_prompt"),
    ("flux-3-ultra", {}, "model"),
]


@pytest.mark.parametrize(("model", "params", "field"), INVALID_BFL)
def test_bfl_validation_names_the_field(model: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        make().validate(model, "a cat", params)
    assert caught.value.field == field
    assert caught.value.status == 422


def test_bfl_prompt_limits() -> None:
    with pytest.raises(ValidationFailed) as caught:
        make().validate("flux-2-pro", "x" * 128_001, {})
    assert caught.value.field == "prompt"
    with pytest.raises(ValidationFailed):
        make().validate("flux-2-pro", "   ", {})
    make().validate("flux-2-pro", "x" * 128_000, {})


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("flux-2-pro", {}),
        (None, {"seed": 0, "width": 2048, "height": 2048, "output_format": "webp"}),
        ("flux-2-max", {f"input_image_{i}": "https://x.test/i.png" for i in range(2, 9)}),
        (
            "flux-2-max",
            {"input_image": "aGVsbG8=", "safety_tolerance": 5, "prompt_upsampling": True},
        ),
        ("flux-2-flex", {"guidance": 4.5, "steps": 50, "width": 64, "height": 64}),
        ("flux-kontext-pro", {"aspect_ratio": "21:9", "input_image_4": "https://x.test/4.png"}),
        ("flux-kontext-max", {"aspect_ratio": "9:21", "safety_tolerance": 6, "seed": None}),
        ("flux-kontext-pro", {"aspect_ratio": "4:1"}),  # BFL's SDK: 1:4 to 4:1
        ("flux-kontext-max", {"aspect_ratio": "1:4"}),
    ],
)
def test_bfl_valid_requests_pass(model: str | None, params: dict[str, Any]) -> None:
    make().validate(model, "a cat", params)


@pytest.mark.parametrize(
    ("model", "params", "field"),
    [
        ("flux_2_max", {"output_format": "webp"}, "params.output_format"),  # jpeg/png at Vtrix
        ("flux_2_max", {"safety_tolerance": 6}, "params.safety_tolerance"),
        ("flux_2_max", {"width": 32}, "params.width"),
        ("flux_2_max", {"input_image_9": "https://x.test/9.png"}, "params.input_image_9"),
        ("flux_2_max", {"steps": 4}, "params.steps"),
        ("flux_kontext_pro", {"aspect_ratio": "9:37"}, "params.aspect_ratio"),
        ("flux_3", {}, "model"),
    ],
)
def test_vtrix_validation_names_the_field(model: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        make(VtrixProvider).validate(model, "a cat", params)
    assert caught.value.field == field


def test_vtrix_accepts_bfl_spelling_of_models() -> None:
    make(VtrixProvider).validate("flux-2-max", "a cat", {"seed": 1})
    make(VtrixProvider).validate(None, "a cat", {"output_format": "png"})


# --- verification ------------------------------------------------------------------------------

BODY = raw_fixture("bfl", "webhook_ready")


def _refused(provider: BflProvider, headers: dict[str, str], body: bytes = BODY) -> str:
    with pytest.raises(SignatureError) as caught:
        asyncio.run(provider.verify_callback(headers, body, SECRETS))
    return caught.value.cause


@pytest.mark.parametrize("cls", [BflProvider, VtrixProvider])
def test_valid_signatures_pass(cls: type[BflProvider]) -> None:
    provider = make(cls)
    for secret in SECRETS:  # the current key's secret and the rotated-out one
        asyncio.run(
            provider.verify_callback({"x-bfl-signature": bfl_sign(secret, BODY)}, BODY, SECRETS)
        )
        asyncio.run(provider.verify_callback({"x-webhook-secret": secret}, BODY, SECRETS))
    upper = "sha256=" + bfl_sign(SECRETS[0], BODY).split("=", 1)[1].upper()
    asyncio.run(provider.verify_callback({"x-bfl-signature": upper}, BODY, SECRETS))


def test_tampering_is_refused() -> None:
    provider = make(BflProvider)
    good = bfl_sign(SECRETS[0], BODY)
    # one changed byte in the body
    flipped = bytearray(BODY)
    flipped[BODY.index(b"1847261")] = ord("2")
    assert _refused(provider, {"x-bfl-signature": good}, bytes(flipped)) == "signature"
    # a signature made with another secret, and an echo of another secret
    wrong = task_secrets(["someone-else-key-0123456789"], "t1", "hex")[0]
    assert _refused(provider, {"x-bfl-signature": bfl_sign(wrong, BODY)}) == "signature"
    assert _refused(provider, {"x-webhook-secret": wrong}) == "signature"
    # no header at all
    assert _refused(provider, {}) == "missing_header"
    # malformed headers
    assert _refused(provider, {"x-bfl-signature": good.split("=", 1)[1]}) == "malformed"
    assert _refused(provider, {"x-bfl-signature": "md5=" + good.split("=", 1)[1]}) == "malformed"
    assert _refused(provider, {"x-bfl-signature": "sha256="}) == "malformed"
    assert _refused(provider, {"x-webhook-secret": ""}) == "malformed"
    # both present and both wrong
    headers = {"x-bfl-signature": bfl_sign(wrong, BODY), "x-webhook-secret": wrong}
    assert _refused(provider, headers) == "signature"


def test_either_proof_that_holds_is_enough() -> None:
    """BFL's SDK checks only the echoed secret; its other document describes the HMAC. When
    both arrive, the one that holds is accepted (the SDK would accept this callback)."""
    provider = make(BflProvider)
    wrong = task_secrets(["someone-else-key-0123456789"], "t1", "hex")[0]
    good_hmac, good_echo = bfl_sign(SECRETS[0], BODY), SECRETS[0]
    for headers in (
        {"x-bfl-signature": bfl_sign(wrong, BODY), "x-webhook-secret": good_echo},
        {"x-bfl-signature": good_hmac, "x-webhook-secret": wrong},
        {"x-bfl-signature": "md5=zz", "x-webhook-secret": good_echo},
    ):
        asyncio.run(provider.verify_callback(headers, BODY, SECRETS))


# --- the wire -------------------------------------------------------------------------------------


class Recorder:
    """A MockTransport handler answering from a list, keeping every request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


SUBMITTED = httpx.Response(200, json=fixture("bfl", "submit_response"))


def test_bfl_submit_request_shape() -> None:
    rec = Recorder(SUBMITTED)
    provider = make(handler=rec, base_url="https://api.eu.bfl.ai")
    sub = asyncio.run(provider.submit(task(seed=7, width=512, height=512), TARGET))
    assert sub.provider_task_id == "3f2a9c1e-7b4d-4e8a-9c21-5d6e7f809a1b"
    [req] = rec.requests
    assert req.method == "POST"
    assert str(req.url) == "https://api.eu.bfl.ai/v1/flux-2-pro"
    assert req.headers["x-key"] == "k-123"
    assert "authorization" not in req.headers
    body = json.loads(req.content)
    assert body == {
        "prompt": "a lighthouse",
        "seed": 7,
        "width": 512,
        "height": 512,
        "webhook_url": TARGET.url,
        "webhook_secret": TARGET.secret,
    }


def test_429_is_retried_after_retry_after() -> None:
    rec = Recorder(
        httpx.Response(429, headers={"retry-after": "2"}, json={"detail": "busy"}), SUBMITTED
    )
    sub = asyncio.run(make(handler=rec).submit(task(), TARGET))
    assert sub.provider_task_id is not None
    assert [r.method for r in rec.requests] == ["POST", "POST"]


def test_persistent_429_gives_up_without_maybe_sent() -> None:
    rec = Recorder(httpx.Response(429, headers={"retry-after": "1"}))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler=rec).submit(task(), TARGET))
    assert caught.value.maybe_sent is False and caught.value.retry_after == 1.0


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, text="boom"),
        httpx.Response(502),
        httpx.ReadTimeout("slow"),
        httpx.Response(200, json={"polling_url": "https://api.bfl.ai/v1/get_result?id=x"}),
        httpx.Response(200, text="<html>"),
    ],
)
def test_a_post_that_may_have_arrived_is_never_repeated(answer: Any) -> None:
    rec = Recorder(answer)
    with pytest.raises(ProviderError):
        asyncio.run(make(handler=rec).submit(task(), TARGET))
    assert len(rec.requests) == 1


def _poll_with(polling_url: str) -> list[httpx.Request]:
    ready = httpx.Response(200, json=fixture("bfl", "get_result_ready"))
    submitted = httpx.Response(200, json={"id": "bfl_abc", "polling_url": polling_url})
    rec = Recorder(submitted, ready)
    provider = make(handler=rec)

    async def run() -> None:
        sub = await provider.submit(task(), TARGET)
        assert sub.state == {"polling_url": polling_url}
        polled = task()
        polled.provider_state = sub.state
        outcome = await provider.poll(polled)
        assert outcome.status is OutcomeStatus.SUCCEEDED
        assert outcome.model == "flux-2-pro"

    asyncio.run(run())
    return rec.requests


def test_poll_prefers_bfls_polling_url() -> None:
    regional = "https://api.us1.bfl.ai/v1/get_result?id=bfl_abc"
    requests = _poll_with(regional)
    assert str(requests[1].url) == regional
    assert requests[1].headers["x-key"] == "k-123"


def test_poll_never_sends_the_key_to_a_foreign_polling_url() -> None:
    requests = _poll_with("https://evil.test/v1/get_result?id=bfl_abc")
    assert requests[1].url.host == "api.bfl.ai"
    assert str(requests[1].url) == "https://api.bfl.ai/v1/get_result?id=bfl_abc"
    # plain http on a bfl.ai name is not trusted either
    requests = _poll_with("http://api.bfl.ai/v1/get_result?id=bfl_abc")
    assert requests[1].url.scheme == "https"


def test_poll_without_a_known_polling_url_uses_get_result() -> None:
    rec = Recorder(httpx.Response(200, json=fixture("bfl", "get_result_pending")))
    outcome = asyncio.run(make(handler=rec).poll(task()))
    assert outcome.status is OutcomeStatus.PENDING
    assert str(rec.requests[0].url) == "https://api.bfl.ai/v1/get_result?id=bfl_abc"


# --- against the simulators, in process -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "model", "expect_cost"),
    [("bfl", "flux-2-flex", None), ("vtrix", "flux_2_pro", "0.03")],
)
def test_submit_then_poll_against_the_simulator(
    name: str, model: str, expect_cost: str | None
) -> None:
    """No callback URL: the result is found by polling, in the simulator's wire format."""

    async def run() -> None:
        app, sim = build_simulator("http://sim.test", Faults(delay=0.15), [name])
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        provider = build_provider(
            name, ProviderSettings(api_key="k", base_url="http://sim.test"), client
        )
        t = task(name, model, seed=99, steps=8) if name == "bfl" else task(name, model, seed=99)
        provider.validate(t.model, t.prompt, t.params)
        sub = await provider.submit(t, None)
        t.provider_task_id = sub.provider_task_id
        t.provider_state = sub.state or {}
        first = await provider.poll(t)
        assert first.status is OutcomeStatus.PENDING
        for _ in range(200):
            outcome = await provider.poll(t)
            if outcome.final:
                break
            await asyncio.sleep(0.01)
        assert outcome.status is OutcomeStatus.SUCCEEDED
        assert outcome.model == model
        assert outcome.cost == expect_cost
        [image] = outcome.images
        assert image.url is not None and image.expires_at is not None
        assert 590 < image.expires_at - time.time() <= 601
        fetched = await client.get(image.url)
        assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
        assert sim.tasks[str(sub.provider_task_id)].seed == 99
        if name == "bfl":
            assert outcome.seed == 99
        await sim.aclose()
        await client.aclose()

    asyncio.run(run())


# --- the polling_url, kept with the task ----------------------------------------------------


def test_poll_uses_the_polling_url_stored_with_the_task() -> None:
    """Another replica, or this one after a restart: the stored state is all it has."""
    regional = "https://api.eu.bfl.ai/v1/get_result?id=bfl_abc"
    rec = Recorder(httpx.Response(200, json=fixture("bfl", "get_result_ready")))
    stored = task()
    stored.provider_state = {"polling_url": regional}
    outcome = asyncio.run(make(handler=rec).poll(stored))
    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert [str(r.url) for r in rec.requests] == [regional]


def test_configured_polling_hosts_are_trusted() -> None:
    rec = Recorder(httpx.Response(200, json=fixture("bfl", "get_result_pending")))
    provider = make(handler=rec, base_url="http://127.0.0.1:9", polling_hosts=["localhost"])
    stored = task()
    stored.provider_state = {"polling_url": "http://localhost:9/v1/get_result?id=bfl_abc"}
    asyncio.run(provider.poll(stored))
    assert rec.requests[0].url.host == "localhost"
    assert not provider.trusted("http://elsewhere.test/v1/get_result?id=x")
    assert provider.trusted("https://api.us1.bfl.ai/v1/get_result?id=x")


def test_task_not_found_from_a_url_we_built_is_not_final_before_the_window() -> None:
    not_found = httpx.Response(200, json=fixture("bfl", "get_result_task_not_found"))
    fresh = task()
    fresh.submitted_at = time.time() - 60
    outcome = asyncio.run(make(handler=Recorder(not_found)).poll(fresh))
    assert outcome.status is OutcomeStatus.PENDING
    old = task()
    old.submitted_at = time.time() - 3 * 3600
    outcome = asyncio.run(make(handler=Recorder(not_found)).poll(old))
    assert outcome.status is OutcomeStatus.FAILED and outcome.error_code == "task_not_found"


def test_task_not_found_at_the_returned_polling_url_is_final() -> None:
    not_found = httpx.Response(200, json=fixture("bfl", "get_result_task_not_found"))
    stored = task()
    stored.submitted_at = time.time()
    stored.provider_state = {"polling_url": "https://api.us1.bfl.ai/v1/get_result?id=bfl_abc"}
    outcome = asyncio.run(make(handler=Recorder(not_found)).poll(stored))
    assert outcome.status is OutcomeStatus.FAILED and outcome.error_code == "task_not_found"


class TestBflContract(ProviderContract):
    name = "bfl"
    model = "flux-2-pro"
    provider_task_id = "3f2a9c1e-7b4d-4e8a-9c21-5d6e7f809a1b"
    success_callback = "webhook_ready"
    submit_answer = "submit_response"
    poll_answer = "get_result_ready"
    failure_forms = [
        ("webhook_error", "callback", Reason.PROVIDER_ERROR),
        ("webhook_content_moderated", "callback", Reason.MODERATED),
        ("get_result_request_moderated", "poll", Reason.MODERATED),
        ("get_result_task_not_found", "poll", Reason.PROVIDER_ERROR),
    ]

    def sign(self, provider: Provider, body: bytes, secret: str) -> dict[str, str]:
        return {"x-bfl-signature": bfl_sign(secret, body)}

    def task(self, **over: Any) -> Task:
        """Tasks carry the polling_url their submission returned (kept in the ledger)."""
        polling = f"https://api.us1.bfl.ai/v1/get_result?id={self.provider_task_id}"
        return super().task(**{"provider_state": {"polling_url": polling}, **over})
