"""One contract for every provider adapter, fed with that provider's documented fixtures.

Each adapter's test module subclasses :class:`ProviderContract` and names its fixtures
(``tests/fixtures/<provider>/``, each listed with its source in that folder's SOURCES.md). The
contract holds what every adapter owes the rest of the service:

- a documented success callback parses to an outcome with images and a URL deadline;
- a tampered body is refused where the provider signs its callbacks;
- an unknown parameter is a 422 naming ``params.<key>``;
- a submission carries our callback URL whenever the provider delivers callbacks (and never
  otherwise);
- a poll keeps the provider's task id;
- each documented failure and moderation form maps to the right reason.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from receiver.config import ProviderSettings
from receiver.errors import ReceiverError, SignatureError, ValidationFailed
from receiver.models import Outcome, OutcomeStatus, Reason, Task
from receiver.providers import CallbackTarget, Provider, Submission, build_provider
from receiver.signatures import task_secrets
from tests.unit.provider_kit import make_task

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KEYS = ["contract-key-0123456789abcdef"]
CALLBACK_URL = "https://receiver.example/v1/hooks/PROVIDER/contract-token-4f1c"
# What a reason is for each final outcome status (the ledger applies the same mapping).
REASONS = {
    OutcomeStatus.FAILED: Reason.PROVIDER_ERROR,
    OutcomeStatus.MODERATED: Reason.MODERATED,
    OutcomeStatus.UNPARSED: Reason.UNPARSED_RESPONSE,
}


class ProviderContract:
    """Subclass per adapter; set the class attributes, override the hooks where needed."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    name: ClassVar[str]
    model: ClassVar[str | None] = None
    settings: ClassVar[dict[str, Any]] = {}
    provider_task_id: ClassVar[str] = "prov-task-1"
    # Fixture names (without .json) under tests/fixtures/<name>/.
    success_callback: ClassVar[str | None] = None  # None: the provider never calls back
    submit_answer: ClassVar[str | None] = None
    submit_content_type: ClassVar[str] = "application/json"
    poll_answer: ClassVar[str | None] = None  # None: the provider cannot be polled
    # (fixture, where it arrives: "callback" | "poll" | "submit", expected reason)
    failure_forms: ClassVar[list[tuple[str, str, Reason]]] = []

    # --- hooks ------------------------------------------------------------------------------------

    def sign(self, provider: Provider, body: bytes, secret: str) -> dict[str, str]:
        """Headers that make ``body`` a genuine callback for the task's ``secret``."""
        return {}

    def fixture(self, name: str) -> bytes:
        return (FIXTURES / self.name / f"{name}.json").read_bytes()

    def answer(self, name: str, content_type: str = "application/json") -> httpx.Response:
        return httpx.Response(
            200, content=self.fixture(name), headers={"content-type": content_type}
        )

    def provider(self, handler: Any = None) -> Provider:
        transport = httpx.MockTransport(handler or (lambda r: httpx.Response(500)))
        settings = ProviderSettings(**{"api_key": "contract-key", **self.settings})
        return build_provider(self.name, settings, httpx.AsyncClient(transport=transport))

    def task(self, **over: Any) -> Task:
        fields: dict[str, Any] = {
            "model": self.model,
            "provider_task_id": self.provider_task_id,
            "submitted_at": time.time(),
        }
        fields.update(over)
        return make_task(self.name, **fields)

    def secret(self, provider: Provider) -> str:
        return task_secrets(KEYS, "tsk_1", provider.secret_format)[0]

    async def outcome_of(self, name: str, where: str) -> Outcome:
        """A documented payload as the adapter reads it, through the path it arrives by."""
        if where == "callback":
            provider = self.provider()
            body = self.fixture(name)
            headers = self.sign(provider, body, self.secret(provider))
            await provider.verify_callback(headers, body, [self.secret(provider)])
            return provider.parse_callback(headers, body).outcome
        if where == "poll":
            provider = self.provider(self.poll_handler(name))
            return await provider.poll(self.task())
        provider = self.provider(lambda r: self.answer(name, self.submit_content_type))
        try:
            submission = await provider.submit(self.task(provider_task_id=None), None)
        except ReceiverError as exc:  # an error answer to the submission
            raise AssertionError(f"{name}: submission raised {exc}") from exc
        assert submission.outcome is not None, name
        return submission.outcome

    # --- the contract -----------------------------------------------------------------------------

    async def test_documented_success_callback_has_images_and_a_deadline(self) -> None:
        if self.success_callback is None:
            pytest.skip(f"{self.name} sends no callbacks")
        provider = self.provider()
        assert provider.delivers_callbacks
        body = self.fixture(self.success_callback)
        secret = self.secret(provider)
        headers = self.sign(provider, body, secret)
        await provider.verify_callback(headers, body, [secret])
        callback = provider.parse_callback(headers, body)
        assert callback.outcome.status is OutcomeStatus.SUCCEEDED
        assert callback.outcome.images
        assert all(i.url or i.inline for i in callback.outcome.images)
        assert callback.delivery_key
        received = time.time()
        if any(i.url for i in callback.outcome.images):
            deadline = provider.deadline_for(callback.outcome, received)
            assert deadline is not None
            assert deadline <= received + provider.url_lifetime

    def test_a_callback_body_is_parsed_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """read_callback parses the body strictly and hands that to the adapter, which reads
        the same outcome as from the raw body without parsing it again."""
        if self.success_callback is None:
            pytest.skip(f"{self.name} sends no callbacks")
        provider = self.provider()
        body = self.fixture(self.success_callback)
        headers = self.sign(provider, body, self.secret(provider))
        expected = provider.read_callback(headers, body)

        def again(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the callback body was parsed a second time")

        monkeypatch.setattr(json, "loads", again)
        assert provider.read_callback(headers, body) == expected

    async def test_tampered_body_is_refused_where_the_provider_signs(self) -> None:
        provider = self.provider()
        if self.success_callback is None:
            pytest.skip(f"{self.name} sends no callbacks")
        if not provider.signs_callbacks:
            pytest.skip(f"{self.name} does not sign per-task callbacks: confirmed by a read")
        body = self.fixture(self.success_callback)
        secret = self.secret(provider)
        headers = self.sign(provider, body, secret)
        tampered = body.replace(b'"', b' "', 1)
        assert tampered != body
        with pytest.raises(SignatureError):
            await provider.verify_callback(headers, tampered, [secret])
        with pytest.raises(SignatureError):
            await provider.verify_callback({}, body, [secret])

    async def test_unsigned_providers_confirm_callbacks_by_reading(self) -> None:
        provider = self.provider()
        if provider.delivers_callbacks and not provider.signs_callbacks:
            assert provider.can_poll and provider.confirm_by_read
        else:
            assert not provider.confirm_by_read

    async def test_unknown_parameter_is_a_422_naming_it(self) -> None:
        provider = self.provider()
        with pytest.raises(ValidationFailed) as caught:
            provider.validate(self.model, "a red fox in the snow", {"no_such_knob": 1})
        assert caught.value.field == "params.no_such_knob"
        assert caught.value.status == 422

    async def test_submit_carries_the_callback_url_when_callbacks_come(self) -> None:
        if self.submit_answer is None:
            pytest.skip("no submission fixture")
        seen: list[httpx.Request] = []
        answer = self.submit_answer

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return self.answer(answer, self.submit_content_type)

        provider = self.provider(handler)
        url = CALLBACK_URL.replace("PROVIDER", self.name)
        submission = await provider.submit(
            self.task(provider_task_id=None), CallbackTarget(url=url, secret="s" * 32)
        )
        assert isinstance(submission, Submission)
        bodies = b"".join(r.content for r in seen)
        carried = (
            url.encode() in bodies
            or json.dumps(url).encode() in bodies
            or any(url in r.url.params.get_list(k) for r in seen for k in r.url.params)
        )
        sent = bodies + b" ".join(str(r.url).encode() for r in seen)
        assert carried is provider.delivers_callbacks, sent[:500]
        if not provider.synchronous:
            assert submission.provider_task_id

    def poll_handler(self, name: str) -> Any:
        """A MockTransport handler answering a poll with fixture ``name``."""
        return lambda request: self.answer(name)

    async def test_poll_keeps_the_provider_task_id(self) -> None:
        if self.poll_answer is None:
            pytest.skip(f"{self.name} cannot be polled")
        provider = self.provider(self.poll_handler(self.poll_answer))
        assert provider.can_poll
        outcome = await provider.poll(self.task())
        assert outcome.provider_task_id == self.provider_task_id

    async def test_each_documented_failure_form_maps_to_its_reason(self) -> None:
        if not self.failure_forms:
            pytest.skip("no documented failure forms")
        for name, where, reason in self.failure_forms:
            outcome = await self.outcome_of(name, where)
            assert outcome.final, name
            assert REASONS.get(outcome.status) is reason, (name, outcome)
            assert outcome.error_message or outcome.error_code, name
