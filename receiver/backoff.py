"""Backoff with full jitter, and the one sleep the service uses.

Tests run inside :func:`testing_mode` so retries never wait: the stamina idea of a testing
mode, without a dependency, because our durable retries are scheduled through the ledger and
only in-process waits go through here.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import anyio

_testing = False


@contextlib.contextmanager
def testing_mode(on: bool = True) -> Iterator[None]:
    """Within the block, in-process waits are skipped and delays are tiny; the previous mode
    comes back afterwards, however the block ends (so nested uses compose)."""
    global _testing
    previous, _testing = _testing, on
    try:
        yield
    finally:
        _testing = previous


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
