"""Backoff with full jitter, and the one sleep the service uses.

Tests switch on :func:`testing_mode` so retries never wait: the stamina idea of a testing
mode, without a dependency, because our durable retries are scheduled through the ledger and
only in-process waits go through here.
"""

from __future__ import annotations

import random

import anyio

_testing = False


def testing_mode(on: bool = True) -> None:
    global _testing
    _testing = on


def delay(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    ceiling: float = min(cap, base * float(2 ** max(0, attempt - 1)))
    if _testing:
        # Retries scheduled through the ledger still need a gap, or a loop would spin.
        return float(min(ceiling, 0.05))
    return float(random.uniform(ceiling / 2, ceiling))


async def sleep(seconds: float) -> None:
    if not _testing and seconds > 0:
        await anyio.sleep(seconds)
