"""A deadline that many events push back, at the cost of one loop timer.

Slow-client deadlines (a request's headers, each piece of a body) are pushed back on every
request or piece. Cancelling and making a timer each time cost more than the rest of a
callback's bookkeeping; here a push only notes the time, and a timer that fires early waits
again for the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LazyDeadline:
    """Calls ``expire`` once ``timeout`` seconds have passed since the last ``restart`` while
    running. ``pause`` stops the clock until the next ``restart``; ``stop`` for good."""

    __slots__ = ("_expire", "_handle", "_loop", "_running", "_since", "_timeout")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout: float, expire: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._timeout = timeout
        self._expire = expire
        self._handle: asyncio.TimerHandle | None = None
        self._running = False
        self._since = 0.0

    @property
    def running(self) -> bool:
        return self._running

    def restart(self) -> None:
        """``timeout`` seconds from now."""
        self._running = True
        self._since = self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(self._since + self._timeout, self._due)

    def pause(self) -> None:
        """Not due until the next ``restart`` (a timer still set finds nothing to do)."""
        self._running = False

    def stop(self) -> None:
        self._running = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _due(self) -> None:
        self._handle = None
        if not self._running:
            return  # the next restart sets a timer again
        due = self._since + self._timeout
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._due)
            return
        self._running = False
        self._expire()
