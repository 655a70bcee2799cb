"""The loops a process runs beside (or without) the HTTP app: worker, reconciler, notifier.

Kept apart from ``app.py`` so ``receiver worker`` starts them without importing Starlette.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .notify import Notifier
from .reconciler import Reconciler
from .runtime import Runtime
from .worker import Worker

log = logging.getLogger(__name__)


class Background:
    """Worker, reconciler and notifier loops, started and stopped together."""

    def __init__(self, runtime: Runtime) -> None:
        self.worker = Worker(runtime)
        self.reconciler = Reconciler(runtime)
        self.notifier = Notifier(runtime)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.worker.run(), name="worker"),
            asyncio.create_task(self.reconciler.run(), name="reconciler"),
            asyncio.create_task(self.notifier.run(), name="notifier"),
        ]

    async def stop(self) -> None:
        self.worker.stop()
        self.reconciler.stop()
        self.notifier.stop()
        results: list[Any] = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("background loop ended with %r", result)
