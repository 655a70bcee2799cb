"""What every provider's unit tests need: an adapter over httpx.MockTransport, and a task."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from receiver.config import ProviderSettings
from receiver.models import Status, Task
from receiver.providers import Provider, build_provider

P = TypeVar("P", bound=Provider)
Handler = Callable[[httpx.Request], httpx.Response]


def mock_provider(name: str, cls: type[P], handler: Handler | None = None, **settings: Any) -> P:
    """The adapter ``name`` talking to ``handler`` (every request a 500 when None)."""
    transport = httpx.MockTransport(handler or (lambda r: httpx.Response(500)))
    built = build_provider(
        name, ProviderSettings(**settings), httpx.AsyncClient(transport=transport)
    )
    assert isinstance(built, cls)
    return built


def make_task(provider: str, **fields: Any) -> Task:
    """A submitted task of ``provider``; ``fields`` override any attribute."""
    now = time.time()
    base: dict[str, Any] = {
        "id": "tsk_1",
        "provider": provider,
        "model": None,
        "prompt": "a red fox in the snow",
        "params": {},
        "destination": "local",
        "metadata": {},
        "notify_url": None,
        "status": Status.SUBMITTED,
        "created_at": now,
        "updated_at": now,
    }
    base.update(fields)
    return Task(**base)
