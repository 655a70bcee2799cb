"""Memory: peak RSS of ``receiver serve`` while N large images are archived at once.

A fresh server with ``worker.concurrency`` = N (so every job is in flight together) and the S3
destination gets N ``succeeded`` callbacks at once; its kernel high-water mark (VmHWM) is
read when the last task is archived. The idle RSS after start-up is reported beside it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from .archive import Infra, post_all, start_receiver_run, wait_final
from .common import median


@dataclass
class MemoryResult:
    count: int
    size: int
    idle_mib: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def idle(self) -> float:
        return median(self.idle_mib)

    @property
    def peak(self) -> float:
        return median(self.peak_mib)


def run(
    infra: Infra, tmp: Path, *, count: int, size: int, runs: int, s3: bool = True
) -> MemoryResult:
    """``s3=False`` archives to the filesystem instead: the same fetch path, another store."""
    result = MemoryResult(count, size)
    for _ in range(runs):
        infra.reset()
        rr = start_receiver_run(infra, tmp, "memory", count, size, concurrency=count, s3=s3)
        try:
            time.sleep(0.5)  # let start-up settle before reading the idle size
            result.idle_mib.append(rr.child.current_rss_mib())
            t0 = time.time()
            asyncio.run(post_all(rr.base, rr.callbacks, count))
            _, failed, last = wait_final(rr.db, count, 300)
            if failed:
                raise RuntimeError(f"memory: {failed} tasks failed; see {rr.child.log}")
            result.peak_mib.append(rr.child.peak_rss_mib())
            result.seconds.append(last - t0)
        finally:
            rr.child.stop()
    infra.reset()
    return result
