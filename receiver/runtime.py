"""The long-lived parts one process shares: ledger, destinations, providers, fetcher.

Built from :class:`~receiver.config.Settings`; the HTTP app, the worker, the reconciler and the
CLI all take a Runtime. Its seams (ledger, destinations, the providers', fetcher's and
notifier's transports, the fetcher's resolver, the clock) are where :mod:`receiver.testing`
hands in its in-memory fakes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import defaultdict
from types import TracebackType
from typing import Any, Self

import httpx

from .config import Settings
from .destinations import Destination, build_destination
from .errors import NotFound
from .fetch import Fetcher, Resolver
from .health import Troubles
from .ledger import Ledger, open_ledger
from .providers import Provider, build_provider

log = logging.getLogger(__name__)


class Changes:
    """Wake-ups inside one process: ``jobs`` for workers, ``task:<id>`` for event streams.
    The PostgreSQL ledger feeds it from LISTEN/NOTIFY so every replica wakes."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)

    def subscribe(self, channel: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events[channel].add(event)
        return event

    def unsubscribe(self, channel: str, event: asyncio.Event) -> None:
        self._events[channel].discard(event)
        if not self._events[channel]:
            del self._events[channel]

    def notify(self, channel: str) -> None:
        for event in list(self._events.get(channel, ())):
            event.set()


class Clock:
    """Wall-clock time and waiting, as the core path sees them. Tests use
    :class:`receiver.testing.FakeClock`, whose time moves only when the test says so."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger | None = None,
        destinations: dict[str, Destination] | None = None,
        provider_transport: httpx.AsyncBaseTransport | None = None,
        fetch_transport: httpx.BaseTransport | None = None,
        resolver: Resolver | None = None,
        notify_transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger or open_ledger(settings.ledger_url)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.changes = Changes()
        self.clock = clock or Clock()
        self.troubles = Troubles(self.clock.now)
        # Set when shutdown begins; event streams watch it (see begin_shutdown).
        self.stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        if destinations is None:
            destinations = {
                name: build_destination(name, conf) for name, conf in settings.destinations.items()
            }
        self.destinations = destinations
        self.fetcher = Fetcher(settings.fetch, transport=fetch_transport, resolver=resolver)
        self.notify_transport = notify_transport
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=10.0),
            transport=provider_transport,
            follow_redirects=False,
            headers={"user-agent": "receiver"},
        )
        self._providers: dict[str, Provider] = {}

    def begin_shutdown(self) -> None:
        """Shutdown has begun (SIGTERM): event streams end now, so open connections do not
        hold back the drain; safe to call from a signal handler."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.stopping.set)
        else:
            self.stopping.set()

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.ledger.open()
        await self.ledger.listen(self._on_ledger_change)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _on_ledger_change(self, channel: str) -> None:
        self.changes.notify(channel)
        if channel.startswith("task:"):
            self.changes.notify("tasks")  # any task changed: the console's live gallery

    def provider(self, name: str) -> Provider:
        found = self._providers.get(name)
        if found is None:
            found = build_provider(
                name,
                self.settings.provider(name),
                self.http,
                tolerance_seconds=self.settings.server.signature_tolerance_seconds,
            )
            found.fetcher = self.fetcher
            self._providers[name] = found
        return found

    def destination(self, name: str) -> Destination:
        found = self.destinations.get(name)
        if found is None:
            raise NotFound(f"unknown destination {name!r}")
        return found

    async def close(self) -> None:
        results: list[Any] = await asyncio.gather(
            self.fetcher.aclose(),
            self.http.aclose(),
            *(d.close() for d in self.destinations.values()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, Exception):
                log.warning("error while closing: %s", result)
        await self.ledger.close()
