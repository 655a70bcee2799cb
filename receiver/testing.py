"""In-memory fakes for testing the core path in one process, shipped with the package.

Modelled on procrastinate's ``testing`` module (an in-memory backend behind the real API) and
httpx's ``MockTransport`` (a function in place of the network). Nothing here opens a socket,
starts a server or sleeps:

- :func:`memory_runtime` builds a real :class:`~receiver.runtime.Runtime` over the in-memory
  SQLite ledger, with every seam filled by a fake below; ``**overrides`` are settings keys.
- :class:`MemoryDestination`: a create-only store in a dict; it passes the destination contract.
- :class:`Origin`: the web servers result URLs point at, behind an ``httpx.MockTransport``;
  :class:`StubResolver`: the DNS answers the fetcher's address check sees.
- :class:`SimulatedApi`: the generic ``simulated`` provider's two endpoints (the wire format
  in ``receiver/simulator/generic.py``), answering whatever the test sets.
- :class:`Inbox`: the application's notification endpoint, recording what it is sent.
- :class:`FakeClock`: time that moves only when the test advances it.

Typical use::

    async with memory_runtime(worker={"max_attempts": 2}) as rt:
        url = rt.origin.serve_image("https://cdn.example/a.png")
        task = await rt.completed_task([url])
        ...
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from .config import Settings
from .destinations import Destination
from .errors import AlreadyExists, StoreError
from .ledger.sqlite import MemoryLedger
from .models import NewTask, Outcome, OutcomeStatus, ResultImage, Task
from .providers import REGISTRY
from .runtime import Clock, Runtime
from .signatures import hook_token, standard_sign, task_secrets

API_KEY = "testing-api-key-0123456789"
SECRET_KEY = "testing-secret-key-0123456789abcdef"  # noqa: S105 - a test value
NOTIFY_SECRET = "whsec_" + "dGVzdGluZy1ub3RpZnktc2VjcmV0LTAxMjM0NTY3"
PUBLIC_ADDRESS = "93.184.216.34"  # any global unicast address passes the fetcher's check
PUBLIC_URL = "http://receiver.test"


# --- time -------------------------------------------------------------------------------------


class FakeClock(Clock):
    """Time stands still until :meth:`advance`; ``sleep`` waits for the clock, not the wall.

    Starts at the real current time, so timestamps compare sensibly with ones made elsewhere
    (URL expiry in a provider's answer, for instance)."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._slept = asyncio.Event()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        self._slept.set()
        await future

    @property
    def sleepers(self) -> int:
        """How many ``sleep`` calls are waiting for the clock."""
        return sum(1 for *_, future in self._sleepers if not future.done())

    async def until_sleeping(self, count: int = 1, timeout: float = 5.0) -> None:
        """Let the loop run until ``count`` sleepers wait on the clock (work between two
        sleeps may pass through threads, so this waits, bounded by ``timeout``)."""
        async with asyncio.timeout(timeout):
            while self.sleepers < count:
                self._slept.clear()
                await self._slept.wait()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper now due."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)


class ClockedMemoryLedger(MemoryLedger):
    """The in-memory ledger reading the fake clock, so leases and due times follow it."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def now(self) -> float:
        return self.clock.now()


# --- destination ------------------------------------------------------------------------------


class MemoryDestination(Destination):
    """A create-only store in a dict. A put that finds its key fails with AlreadyExists, as
    every real destination's does; ``fail_next`` makes the next puts raise StoreError."""

    type = "memory"

    def __init__(self, name: str = "local") -> None:
        super().__init__(name)
        self.objects: dict[str, bytes] = {}
        self.content_types: dict[str, str] = {}
        self.failures: list[StoreError] = []

    def fail_next(self, error: StoreError, times: int = 1) -> None:
        self.failures.extend([error] * times)

    async def put(
        self,
        key: str,
        body: IO[bytes] | bytes,
        *,
        size: int,
        content_type: str,
        metadata: dict[str, str] | None = None,
        sha256: str | None = None,
    ) -> str:
        if self.failures:
            raise self.failures.pop(0)
        data = body if isinstance(body, bytes) else body.read()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            # As a store checking x-amz-checksum-sha256 refuses it (BadDigest).
            raise StoreError(f"{self.uri(key)}: body does not match its sha256", permanent=True)
        await asyncio.sleep(0)  # a real store yields here; racing writers interleave
        if key in self.objects:
            raise AlreadyExists(f"{self.uri(key)} already exists")
        self.objects[key] = data
        self.content_types[key] = content_type
        return self.uri(key)

    async def exists(self, key: str) -> bool:
        return key in self.objects

    async def read(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise StoreError(f"{self.uri(key)} does not exist") from None

    def uri(self, key: str) -> str:
        return f"memory://{self.name}/{key}"

    async def presign(self, key: str, seconds: int) -> str | None:
        return f"https://memory.invalid/{self.name}/{key}?expires_in={seconds}"

    async def check(self) -> str:
        return f"in-memory store {self.name}"


# --- the network ------------------------------------------------------------------------------


class StubResolver:
    """DNS for the fetcher: a table of host → addresses; any other host gets
    ``default`` (a public address) or, with ``default=None``, fails to resolve."""

    def __init__(
        self, table: Mapping[str, list[str]] | None = None, default: str | None = PUBLIC_ADDRESS
    ) -> None:
        self.table = dict(table or {})
        self.default = default

    async def __call__(self, host: str, port: int) -> list[str]:
        if host in self.table:
            return self.table[host]
        if self.default is None:
            raise OSError(f"{host}: name not known")
        return [self.default]


Handler = Callable[[httpx.Request], httpx.Response]


class Origin:
    """The servers result URLs point at. The fetcher connects to the checked address and
    names the host in ``Host``, so routes are keyed by host and path, not by the URL it sends."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Handler]] = {}
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._handle)

    def route(self, url: str, *handlers: Handler) -> str:
        """Answer ``url`` with each handler in turn (the last one repeats)."""
        parsed = httpx.URL(url)
        self.routes[(parsed.netloc.decode(), parsed.path)] = list(handlers)
        return url

    def serve_image(self, url: str, body: bytes | None = None, *, fail_first: int = 0) -> str:
        """Serve a PNG at ``url``, after ``fail_first`` answers of 503."""
        image = body if body is not None else png()
        ok: Handler = lambda _: httpx.Response(  # noqa: E731
            200, content=image, headers={"content-type": "image/png"}
        )
        busy: Handler = lambda _: httpx.Response(503)  # noqa: E731
        return self.route(url, *([busy] * fail_first), ok)

    def expire(self, url: str) -> str:
        """From now on ``url`` answers 403, as an expired signed URL does."""
        return self.route(url, lambda _: httpx.Response(403))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        host = request.headers.get("host", request.url.netloc.decode())
        handlers = self.routes.get((host, request.url.path))
        if not handlers:
            return httpx.Response(404)
        handler = handlers.pop(0) if len(handlers) > 1 else handlers[0]
        return handler(request)


def png(label: str = "testing", width: int = 4, height: int = 3) -> bytes:
    """A real, small PNG (its dimensions land in the sidecar)."""
    from .simulator.images import render_png

    return render_png(label, width=width, height=height)


@dataclass
class SimulatedApi:
    """The ``simulated`` provider's API in memory: ``POST /v1/generate`` answers a new id,
    ``GET /v1/tasks/{id}`` answers what :meth:`answer` set for it (pending by default).
    ``down`` makes every call fail with 503; ``others`` answers other providers' hosts."""

    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False
    # Requests for any other host (another provider's API, from its documented fixtures).
    others: dict[str, Handler] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.transport = httpx.MockTransport(self._handle)

    def answer(
        self,
        provider_task_id: str,
        status: str = "succeeded",
        urls: list[str] | None = None,
        *,
        expires_at: float | None = None,
    ) -> None:
        self.answers[provider_task_id] = {
            "id": provider_task_id,
            "status": status,
            "images": [{"url": u, "expires_at": expires_at} for u in urls or []],
            "error": {"code": status, "message": f"the task {status}"}
            if status in ("failed", "moderated")
            else None,
        }

    def _handle(self, request: httpx.Request) -> httpx.Response:
        other = self.others.get(request.url.host)
        if other is not None:
            return other(request)
        if self.down:
            return httpx.Response(503, text="simulated outage")
        path = request.url.path
        if request.method == "POST" and path == "/v1/generate":
            body = json.loads(request.content)
            self.submitted.append(body)
            task_id = f"sim-{len(self.submitted)}"
            self.answers.setdefault(task_id, {"id": task_id, "status": "pending", "images": []})
            return httpx.Response(201, json={"id": task_id})
        if request.method == "GET" and path.startswith("/v1/tasks/"):
            found = self.answers.get(path.removeprefix("/v1/tasks/"))
            return httpx.Response(200, json=found) if found else httpx.Response(404)
        return httpx.Response(404)


@dataclass
class Inbox:
    """The application's notification endpoint: records each request, answers ``status``
    (a list is used in turn, the last repeating)."""

    status: list[int] = field(default_factory=lambda: [204])
    received: list[httpx.Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.transport = httpx.MockTransport(self._handle)

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.received]

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.received.append(request)
        code = self.status.pop(0) if len(self.status) > 1 else self.status[0]
        return httpx.Response(code)


# --- the runtime ------------------------------------------------------------------------------


def memory_settings(**overrides: Any) -> Settings:
    """Settings for an in-memory runtime; keyword arguments are settings keys, and a dict for
    a section (``worker={...}``) is merged into that section."""
    base: dict[str, Any] = {
        "public_url": PUBLIC_URL,
        "secret_keys": [SECRET_KEY],
        "api_keys": [API_KEY],
        "ledger_url": "memory://",
        "default_destination": "local",
        # Replaced by MemoryDestination; a setting must exist for the name to be valid.
        "destinations": {"local": {"type": "filesystem", "path": "/nonexistent/receiver"}},
        "notify": {"secret": NOTIFY_SECRET},
        "worker": {"retry_base_seconds": 1.0, "retry_max_seconds": 10.0},
        # Every provider configured (no credentials): SimulatedApi answers their hosts.
        "providers": {name: {} for name in REGISTRY},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Settings.model_validate(base)


class MemoryRuntime(Runtime):
    """A Runtime whose fakes stay reachable: ``clock``, ``store`` (the default destination),
    ``origin``, ``resolver``, ``api`` (the simulated provider) and ``inbox``."""

    clock: FakeClock

    def __init__(self, settings: Settings) -> None:
        clock = FakeClock()
        self.origin = Origin()
        self.resolver = StubResolver()
        self.api = SimulatedApi()
        self.inbox = Inbox()
        self.stores = {name: MemoryDestination(name) for name in settings.destinations}
        super().__init__(
            settings,
            ledger=ClockedMemoryLedger(clock),
            destinations=dict(self.stores),
            provider_transport=self.api.transport,
            fetch_transport=self.origin.transport,
            resolver=self.resolver,
            notify_transport=self.inbox.transport,
            clock=clock,
        )

    @property
    def store(self) -> MemoryDestination:
        return self.stores[self.settings.default_destination]

    # --- shortcuts for arranging a test ----------------------------------------------------

    async def submitted_task(self, **fields: Any) -> Task:
        """A task of the ``simulated`` provider, recorded and marked submitted as ``sim-…``,
        which the in-memory provider reports pending until the test says otherwise."""
        new = NewTask(
            **{
                "provider": "simulated",
                "prompt": "a lighthouse at dusk",
                "destination": self.settings.default_destination,
                "notify_url": "https://app.example/hooks/receiver",
                **fields,
            }
        )
        task, _ = await self.ledger.create_task(new)
        provider_task_id = f"sim-{task.id}"
        self.api.answer(provider_task_id, "pending")
        return await self.ledger.mark_submitted(task.id, provider_task_id, next_poll_at=None)

    async def completed_task(self, urls: list[str], **fields: Any) -> Task:
        """A submitted task whose success (with ``urls``) is recorded: one archive job queued,
        due by the simulated provider's URL lifetime."""
        task = await self.submitted_task(**fields)
        outcome = Outcome(
            status=OutcomeStatus.SUCCEEDED,
            images=tuple(ResultImage(url=u) for u in urls),
            provider_task_id=task.provider_task_id,
            seed=42,
        )
        provider = self.provider(task.provider)
        result = await self.ledger.record_outcome(
            task.id,
            outcome,
            provider=task.provider,
            delivery_key=f"test:{task.id}",
            deadline=provider.deadline_for(outcome, self.clock.now()),
        )
        assert result.task is not None
        return result.task

    def callback(
        self, task: Task, body: dict[str, Any] | bytes
    ) -> tuple[str, dict[str, str], bytes]:
        """(path, headers, body) of a ``simulated`` callback for ``task``, signed as the
        simulator signs it (Standard Webhooks with the task's secret); ``body`` is sent as
        JSON, or as it is when already bytes."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        secret = task_secrets(self.settings.secret_keys, task.id, "whsec")[0]
        msg_id = f"msg_{task.id}_{len(raw)}"
        ts = int(time.time())  # checked against the wall clock by the signature tolerance
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": standard_sign(secret, msg_id, ts, raw),
        }
        token = hook_token(self.settings.secret_keys, task.id, task.provider)
        return f"/v1/hooks/{task.provider}/{token}", headers, raw


def memory_runtime(**overrides: Any) -> MemoryRuntime:
    """A runtime on the in-memory ledger with every seam faked (see the module docstring);
    ``overrides`` are settings keys. Use ``async with`` to open and close it."""
    return MemoryRuntime(memory_settings(**overrides))


__all__ = [
    "API_KEY",
    "NOTIFY_SECRET",
    "SECRET_KEY",
    "ClockedMemoryLedger",
    "FakeClock",
    "Inbox",
    "MemoryDestination",
    "MemoryRuntime",
    "Origin",
    "SimulatedApi",
    "StubResolver",
    "memory_runtime",
    "memory_settings",
    "png",
]
