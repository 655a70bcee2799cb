"""The real application in process (memory ledger, no background loops) over httpx's ASGI
transport, with the providers' side answered by an httpx.MockTransport: what the hostile-input
tests need to send odd requests and look at what was recorded."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.app import create_app
from receiver.config import Settings, load_settings
from receiver.ledger.sqlite import MemoryLedger
from receiver.runtime import Runtime
from receiver.signatures import fal_sign, hook_token, public_jwk, task_secrets

API_KEY = "hostile-api-key-0123456789"
SECRET = "hostile-secret-key-0123456789abcdef"
SIM = "http://sim.test"
FAL_QUEUE = "https://queue.fal.test"
FAL_JWKS = "https://keys.fal.test/jwks.json"
AUTH = {"authorization": f"Bearer {API_KEY}"}


@dataclass
class ProviderSide:
    """Answers every outgoing provider call: simulated submits get sequential ids, fal
    submits the request id queued in ``fal_ids``, JWKS the test key."""

    fal_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    fal_ids: list[str] = field(default_factory=list)
    override: Callable[[httpx.Request], httpx.Response | None] | None = None
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.override is not None:
            answer = self.override(request)
            if answer is not None:
                return answer
        url = str(request.url)
        if url == FAL_JWKS:
            return httpx.Response(200, json={"keys": [public_jwk(self.fal_key.public_key())]})
        if url.startswith(SIM) and request.method == "POST":
            return httpx.Response(200, json={"id": f"sim-{next(self.counter)}"})
        if url.startswith(FAL_QUEUE) and request.method == "POST":
            rid = self.fal_ids.pop(0) if self.fal_ids else f"fal-{next(self.counter)}"
            return httpx.Response(200, json={"request_id": rid, "status": "IN_QUEUE"})
        return httpx.Response(404, json={"detail": "not here"})


def settings(**over: Any) -> Settings:
    conf: dict[str, Any] = {
        "public_url": "https://receiver.test",
        "secret_keys": [SECRET],
        "ledger_url": "memory://",
        "api_keys": [API_KEY],
        "providers": {
            "simulated": {"base_url": SIM},
            "fal": {"base_url": FAL_QUEUE, "api_key": "k:s", "jwks_url": FAL_JWKS},
        },
        "destinations": {"local": {"type": "filesystem", "path": "/nonexistent/archive"}},
        **over,
    }
    return load_settings(None, {}, conf)


@dataclass
class Harness:
    rt: Runtime
    client: httpx.AsyncClient
    side: ProviderSide

    async def submit(self, **body: Any) -> dict[str, Any]:
        answer = await self.client.post(
            "/v1/tasks", json={"provider": "simulated", "prompt": "a fox", **body}, headers=AUTH
        )
        assert answer.status_code == 202, answer.text
        data: dict[str, Any] = answer.json()
        return data

    def hook_url(self, task_id: str, provider: str = "simulated") -> str:
        return f"/v1/hooks/{provider}/{hook_token([SECRET], task_id, provider)}"

    def signed(self, task_id: str, body: bytes, msg_id: str = "msg_1") -> dict[str, str]:
        """Standard Webhooks headers as the simulated provider signs its callbacks."""
        secret = task_secrets([SECRET], task_id, "whsec")[0]
        ts = str(int(time.time()))
        key = base64.b64decode(secret.removeprefix("whsec_"))
        mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": ts,
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
            "content-type": "application/json",
        }

    def fal_signed(self, request_id: str, body: bytes) -> dict[str, str]:
        ts = int(time.time())
        return {
            "x-fal-webhook-request-id": request_id,
            "x-fal-webhook-user-id": "user-1",
            "x-fal-webhook-timestamp": str(ts),
            "x-fal-webhook-signature": fal_sign(self.side.fal_key, request_id, "user-1", ts, body),
            "content-type": "application/json",
        }

    async def callback(
        self, task_id: str, payload: Any, *, raw: bytes | None = None, msg_id: str = "msg_1"
    ) -> httpx.Response:
        body = raw if raw is not None else json.dumps(payload).encode()
        return await self.client.post(
            self.hook_url(task_id), content=body, headers=self.signed(task_id, body, msg_id)
        )


@contextlib.asynccontextmanager
async def harness(**over: Any) -> AsyncIterator[Harness]:
    side = ProviderSide()
    conf = settings(**over)
    rt = Runtime(conf, ledger=MemoryLedger(), provider_transport=httpx.MockTransport(side))
    app = create_app(conf, runtime=rt, background=False)
    await rt.open()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver.test") as c:
            yield Harness(rt, c, side)
    finally:
        await rt.close()
