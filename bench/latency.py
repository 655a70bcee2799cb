"""End-to-end latency: callback received → image and sidecar durable in S3.

``receiver serve`` (SQLite, S3 via moto, default worker settings apart from concurrency)
gets signed ``succeeded`` callbacks at a steady rate, one image each. Per task the ledger's
``completed_at`` is set in the transaction that accepts the callback and ``archived_at`` in the
one that records the stored image and sidecar, so their difference is the whole archive path:
queue wait, fetch, image PUT, sidecar PUT, ledger commit.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .archive import Infra, start_receiver_run, task_times, wait_final
from .common import median, percentile


@dataclass
class LatencyResult:
    rate: float
    seconds: float
    size: int
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    max_ms: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)  # median of the first tenth of tasks
    last_ms: list[float] = field(default_factory=list)  # median of the last tenth
    tasks: int = 0

    @property
    def p50(self) -> float:
        return median(self.p50_ms)

    @property
    def p99(self) -> float:
        return median(self.p99_ms)

    @property
    def growing(self) -> bool:
        """True when latency rose through the runs: the offered rate was above what the
        receiver archived per second, so a queue built up."""
        return median(self.last_ms) > 2 * median(self.first_ms) + 100

    @property
    def worst(self) -> float:
        return max(self.max_ms) if self.max_ms else float("nan")


async def paced(base: str, callbacks: list[Any], rate: float) -> None:
    """Send callback n at t0 + n/rate, without waiting for earlier answers (open loop)."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        start = time.monotonic()
        pending = []
        for n, cb in enumerate(callbacks):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(
                asyncio.create_task(client.post(cb.path, content=cb.body, headers=cb.headers))
            )
        for response in await asyncio.gather(*pending):
            if response.status_code != 200:
                raise RuntimeError(f"callback refused: {response.status_code} {response.text}")


def run(
    infra: Infra,
    tmp: Path,
    *,
    rate: float,
    seconds: float,
    size: int,
    runs: int,
    concurrency: int,
) -> LatencyResult:
    count = int(rate * seconds)
    result = LatencyResult(rate, seconds, size, tasks=count)
    for _ in range(runs):
        infra.reset()
        rr = start_receiver_run(infra, tmp, "latency", count, size, concurrency)
        try:
            asyncio.run(paced(rr.base, rr.callbacks, rate))
            _, failed, _ = wait_final(rr.db, count, 120)
            if failed:
                raise RuntimeError(f"latency: {failed} tasks failed; see {rr.child.log}")
            spans = [(b - a) * 1000 for a, b in sorted(task_times(rr.db))]
        finally:
            rr.child.stop()
        result.p50_ms.append(percentile(spans, 50))
        result.p99_ms.append(percentile(spans, 99))
        result.max_ms.append(max(spans))
        tenth = max(1, len(spans) // 10)
        result.first_ms.append(median(spans[:tenth]))
        result.last_ms.append(median(spans[-tenth:]))
    infra.reset()
    return result
