"""Callback intake: signed callbacks per second and latency, driven by wrk.

Each request is a real Standard Webhooks callback for a task in the ledger: URL token, per-task
secret, HMAC over ``id.timestamp.body``. Callbacks are signed here just before each run (the
receiver refuses timestamps older than five minutes) and wrk replays them from a file, each
with its own ``webhook-id``; the outcome is ``pending``, so the receiver does its whole intake
(verify token and signature, read the task, remember the delivery in a write transaction) and
no archive job follows. When wrk outruns the prepared set it starts over and the rest are
duplicates, which the receiver answers after the same checks; the report counts both.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .common import (
    Child,
    Signer,
    cpu_seconds,
    create_tasks,
    free_port,
    median,
    pending,
    processes_cpu,
    python,
    receiver_config,
    start_receiver,
    wait_http,
)

LUA = r"""
-- Replays callbacks prepared by bench/intake.py: one a line, tab-separated
-- (path, webhook-id, webhook-timestamp, webhook-signature, body).
local counter = 0
local reqs = {}
local i = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

function init(args)
  local nthreads = tonumber(args[2]) or 1
  local k = 0
  for line in io.lines(args[1]) do
    if k % nthreads == tid then
      local path, id, ts, sig, body =
        line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", path, {
        ["Content-Type"] = "application/json",
        ["webhook-id"] = id,
        ["webhook-timestamp"] = ts,
        ["webhook-signature"] = sig,
      }, body)
    end
    k = k + 1
  end
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
"""

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    accepted: int = 0
    duplicate: int = 0


@dataclass
class IntakeResult:
    name: str
    runs: list[WrkRun] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    transactions: int = 0  # PostgreSQL only: commits + rollbacks in the measured runs
    cpu: float = 0.0  # server CPU seconds in the measured runs
    backend_cpu: float = 0.0  # PostgreSQL backends' CPU seconds, same runs

    @property
    def handled(self) -> int:
        """Requests answered in the measured runs (the receiver's own count where it has one)."""
        counted = sum(r.accepted + r.duplicate for r in self.runs)
        return counted or sum(r.requests for r in self.runs)

    @property
    def cpu_us(self) -> float:
        return self.cpu / max(1, self.handled) * 1e6

    @property
    def backend_cpu_us(self) -> float:
        return self.backend_cpu / max(1, self.handled) * 1e6

    @property
    def rps(self) -> float:
        return median([r.rps for r in self.runs])

    @property
    def p50_ms(self) -> float:
        return median([r.p50_ms for r in self.runs])

    @property
    def p99_ms(self) -> float:
        return median([r.p99_ms for r in self.runs])


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    if match is None:
        raise ValueError(f"unexpected wrk latency {value!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_wrk(text: str) -> WrkRun:
    def find(pattern: str) -> str:
        match = re.search(pattern, text)
        if match is None:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{text}")
        return match.group(1)

    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkRun(
        rps=float(find(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=_ms(find(r"\s50%\s+(\S+)")),
        p99_ms=_ms(find(r"\s99%\s+(\S+)")),
        requests=int(find(r"(\d+) requests in")),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


def prepare(path: Path, tasks: list[tuple[str, str]], count: int) -> None:
    """Sign ``count`` pending callbacks round-robin over ``tasks`` into a wrk replay file."""
    signer = Signer()
    lines = []
    for n in range(count):
        task_id, ptid = tasks[n % len(tasks)]
        cb = signer.sign(task_id, pending(ptid), f"msg_{n:08d}_{path.stem}")
        h = cb.headers
        lines.append(
            "\t".join(
                (
                    cb.path,
                    h["webhook-id"],
                    h["webhook-timestamp"],
                    h["webhook-signature"],
                    cb.body.decode(),
                )
            )
        )
    path.write_text("\n".join(lines) + "\n")


def wrk_args(
    url: str, script: str, data: str, *, threads: int, connections: int, seconds: float
) -> list[str]:
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        script,
        url,
        "--",
        str(data),
        str(threads),
    ]


def wrk_command_text(opt: IntakeOptions) -> str:
    args = wrk_args(
        "http://127.0.0.1:$PORT/",
        "callbacks.lua",
        "callbacks.tsv",
        threads=opt.threads,
        connections=opt.connections,
        seconds=opt.seconds,
    )
    return " ".join(args)


def run_wrk(
    url: str, script: Path, data: Path, *, threads: int, connections: int, seconds: float
) -> WrkRun:
    cmd = wrk_args(
        url, str(script), str(data), threads=threads, connections=connections, seconds=seconds
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return parse_wrk(out.stdout)


def _deliveries(base: str) -> dict[str, int]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = {}
    for outcome, value in re.findall(
        r'receiver_deliveries_total\{outcome="(\w+)",provider="simulated"\} ([\d.e+]+)', text
    ) + re.findall(
        r'receiver_deliveries_total\{provider="simulated",outcome="(\w+)"\} ([\d.e+]+)', text
    ):
        found[outcome] = int(float(value))
    return found


@dataclass
class IntakeOptions:
    runs: int
    seconds: float
    warmup: float
    threads: int
    connections: int
    tasks: int
    prepared: int


def _measure(
    name: str,
    base: str,
    child: Child,
    tmp: Path,
    tasks: list[tuple[str, str]],
    opt: IntakeOptions,
    xacts: Callable[[], int] | None = None,
    database: str | None = None,
) -> IntakeResult:
    script = tmp / "callbacks.lua"
    script.write_text(LUA)
    result = IntakeResult(name)
    url = base + "/"
    is_receiver = name != "bare"
    for n in range(-1, opt.runs):  # run -1 warms up
        data = tmp / f"{name}-{n + 1}.tsv"
        prepare(data, tasks, opt.prepared)
        before = _deliveries(base) if is_receiver else {}
        x0 = xacts() if xacts and n >= 0 else 0
        cpu0 = cpu_seconds(child.pid)
        pg0 = processes_cpu(f" {database} ") if database else 0.0
        seconds = opt.warmup if n < 0 else opt.seconds
        run = run_wrk(
            url,
            script,
            data,
            threads=opt.threads,
            connections=opt.connections,
            seconds=seconds,
        )
        cpu = cpu_seconds(child.pid) - cpu0
        pg = processes_cpu(f" {database} ") - pg0 if database else 0.0
        if is_receiver:
            after = _deliveries(base)
            run.accepted = after.get("accepted", 0) - before.get("accepted", 0)
            run.duplicate = after.get("duplicate", 0) - before.get("duplicate", 0)
        if n >= 0:
            result.runs.append(run)
            result.cpu += cpu
            result.backend_cpu += pg
            if xacts:
                result.transactions += xacts() - x0
        data.unlink()
    result.peak_rss_mib = child.peak_rss_mib()
    return result


def bare(tmp: Path, opt: IntakeOptions) -> IntakeResult:
    port = free_port()
    child = Child("bare", python("bench.bare", "--port", str(port)), tmp / "bare.log").start()
    try:
        wait_http(f"http://127.0.0.1:{port}/", child)
        tasks = [(f"tsk_{i:028x}", f"sim_{i}") for i in range(opt.tasks)]
        return _measure("bare", f"http://127.0.0.1:{port}", child, tmp, tasks, opt)
    finally:
        child.stop()


def receiver(
    name: str,
    tmp: Path,
    ledger_url: str,
    opt: IntakeOptions,
    xacts: Callable[[], int] | None = None,
    database: str | None = None,
) -> IntakeResult:
    port = free_port()
    conf = receiver_config(tmp, port, ledger_url=ledger_url)
    tasks = asyncio.run(create_tasks(ledger_url, opt.tasks, "local"))
    child = start_receiver(tmp, name, conf, port)
    try:
        base = f"http://127.0.0.1:{port}"
        return _measure(name, base, child, tmp, tasks, opt, xacts, database)
    finally:
        child.stop()


def scratch_database(dsn: str, name: str, *, create: bool) -> str:
    """Create (or drop) a scratch database next to ``dsn``'s and return its URL."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')
    base = dsn.rsplit("/", 1)[0]
    return f"{base}/{name}"


def pg_transactions(dsn: str, name: str) -> Callable[[], int]:
    """A reader of the database's committed + rolled-back transaction count. The statistics
    are flushed about once a second, hence the wait."""
    import psycopg

    def read() -> int:
        time.sleep(1.2)
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                (name,),
            ).fetchone()
        return int(row[0]) if row else 0

    return read


def run(tmp: Path, opt: IntakeOptions, pg_dsn: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {"options": opt}
    results["bare"] = bare(tmp, opt)
    results["sqlite"] = receiver("sqlite", tmp, f"sqlite:///{tmp / 'intake.db'}", opt)
    if pg_dsn:
        name = "receiver_bench_intake"
        try:
            url = scratch_database(pg_dsn, name, create=True)
        except Exception as exc:  # no server: the report says so instead of failing the run
            results["postgres_error"] = f"{type(exc).__name__}: {exc}"
        else:
            try:
                results["postgres"] = receiver(
                    "postgres", tmp, url, opt, pg_transactions(pg_dsn, name), name
                )
            finally:
                scratch_database(pg_dsn, name, create=False)
    return results
