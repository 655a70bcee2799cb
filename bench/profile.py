"""py-spy profiles of the receiver while a scenario runs (``python -m bench --profile``).

Profiled runs are extra runs, never the measured ones: sampling slows the process it samples.
The summary is what explains a missed target: how busy each thread was, and which functions
the event-loop thread spent its samples in (inclusive).
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import intake
from .archive import Infra, post_all, start_receiver_run, wait_final
from .common import create_tasks, free_port, receiver_config, start_receiver

RATE = 100
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Profile:
    title: str
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)  # thread group -> cores used
    areas: list[tuple[str, float]] = field(default_factory=list)  # self time on the loop
    receiver: list[tuple[str, float]] = field(default_factory=list)  # inclusive, on the loop


def available() -> bool:
    return shutil.which("py-spy") is not None


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the event-loop thread (the main thread) and of all other threads."""
    out = {"event loop": 0.0, "other threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / TICKS
        out["event loop" if task.name == str(pid) else "other threads"] += used
    return out


def start(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """Sample until SIGINT, when py-spy writes what it has."""
    proc = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--threads",
            "--rate",
            str(RATE),
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    return proc


def finish(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    spy.wait(60)


def _where(frame: str) -> tuple[str, str]:
    """(function, file) from py-spy's ``func (path/file.py:line)``."""
    name, _, rest = frame.partition(" (")
    return name, rest.rsplit(":", 1)[0]


def _area(path: str) -> str:
    if path.startswith("receiver/"):
        return path.removesuffix(".py").replace("/", ".")
    head = path.split("/", 1)[0].removesuffix(".py").lstrip("<").rstrip(">")
    return "importlib" if "importlib" in head else head or "?"


def summarize(
    title: str, path: Path, seconds: float, cpu: dict[str, float], top: int = 12
) -> Profile:
    """Where the event-loop thread's samples are: by package of the innermost frame (self
    time) and by receiver function (inclusive)."""
    areas: collections.Counter[str] = collections.Counter()
    funcs: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or "MainThread" not in frames[0]:
            continue
        n = int(count)
        total += n
        areas[_area(_where(frames[-1])[1])] += n
        seen = set()
        for frame in frames[1:]:
            name, file = _where(frame)
            if file.startswith("receiver/") and file not in ("receiver/__main__.py",):
                label = f"{file.removeprefix('receiver/')}: {name}"
                if name not in ("main", "cmd_serve") and label not in seen:
                    seen.add(label)
                    funcs[label] += n
    if not total:
        return Profile(title, seconds, cpu)
    return Profile(
        title,
        seconds,
        cpu,
        [(a, n / total) for a, n in areas.most_common(top)],
        [(f, n / total) for f, n in funcs.most_common(top)],
    )


def profile_intake(
    tmp: Path, seconds: float, opt: intake.IntakeOptions, ledger_url: str, title: str
) -> Profile:
    port = free_port()
    conf = receiver_config(tmp, port, ledger_url=ledger_url)
    tasks = asyncio.run(create_tasks(ledger_url, opt.tasks, "local"))
    child = start_receiver(tmp, "profile-intake", conf, port)
    try:
        script = tmp / "callbacks.lua"
        script.write_text(intake.LUA)
        data = tmp / "profile.tsv"
        intake.prepare(data, tasks, opt.prepared)
        out = tmp / "intake.prof"
        spy = start(child.pid, out)
        cpu0 = thread_cpu(child.pid)
        intake.run_wrk(
            f"http://127.0.0.1:{port}/",
            script,
            data,
            threads=opt.threads,
            connections=opt.connections,
            seconds=seconds,
        )
        cpu = {k: (v - cpu0[k]) / seconds for k, v in thread_cpu(child.pid).items()}
        finish(spy)
    finally:
        child.stop()
    return summarize(title, out, seconds, cpu)


def profile_archive(infra: Infra, tmp: Path, count: int, size: int, concurrency: int) -> Profile:
    infra.reset()
    rr = start_receiver_run(infra, tmp, "profile-archive", count, size, concurrency)
    out = tmp / "archive.prof"
    try:
        spy = start(rr.child.pid, out)
        cpu0 = thread_cpu(rr.child.pid)
        t0 = time.monotonic()
        asyncio.run(post_all(rr.base, rr.callbacks, concurrency))
        wait_final(rr.db, count, 300)
        seconds = time.monotonic() - t0
        cpu = {k: (v - cpu0[k]) / seconds for k, v in thread_cpu(rr.child.pid).items()}
        finish(spy)
    finally:
        rr.child.stop()
    infra.reset()
    return summarize("archive, S3 destination", out, seconds, cpu)
