"""What every scenario needs: child processes with their peak memory, free ports, receiver
configurations, signed callbacks and a few statistics.

Every server runs in its own process so that no two contenders share a GIL with the bench
driver, and so that each one's peak RSS can be read on its own.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from receiver.demo import free_port as free_port  # re-exported for the bench modules
from receiver.signatures import hook_token, standard_sign, task_secrets

SECRET = "bench-secret-key-0123456789abcdef"
API_KEY = "bench-api-key-0123456789"
PROVIDER = "simulated"
MiB = 1024 * 1024
S3_KEY_ID = "bench"
S3_SECRET = "bench-secret"
S3_REGION = "us-east-1"
ROOT = Path(__file__).resolve().parent.parent


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): no interpolation, so p99 is a real sample."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


# --- processes -----------------------------------------------------------------------------------


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def processes_cpu(marker: str) -> float:
    """CPU seconds of every process whose command line contains ``marker`` (PostgreSQL
    backends show their database name there)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "cmdline").read_bytes().replace(b"\0", b" "):
                total += cpu_seconds(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    return total


def rss_kib(pid: int, field_name: str = "VmHWM") -> int:
    """``VmHWM`` is the kernel's peak resident set of the process since it started."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Child:
    """A child process whose output goes to a log file."""

    name: str
    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    drop_env: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    maxrss_kib: int = 0
    cpu_seconds: float = 0.0
    stop_timeout: float = 30.0  # after SIGTERM, before SIGKILL

    def start(self) -> Child:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        for name in self.drop_env:
            env.pop(name, None)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        RUNNING.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def peak_rss_mib(self) -> float:
        """Peak RSS so far (while running) or at exit (from wait4's rusage)."""
        if self.proc is not None and self.proc.returncode is None:
            return rss_kib(self.pid) / 1024
        return self.maxrss_kib / 1024

    def current_rss_mib(self) -> float:
        return rss_kib(self.pid, "VmRSS") / 1024

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and keep the child's own rusage (ru_maxrss is in KiB on Linux)."""
        assert self.proc is not None
        if self.proc.returncode is not None:
            return self.proc.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:  # already reaped by Popen.poll(): no rusage to keep
                return self.proc.wait()
            if pid:
                self.maxrss_kib = int(usage.ru_maxrss)
                self.cpu_seconds = float(usage.ru_utime + usage.ru_stime)
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                if self in RUNNING:
                    RUNNING.remove(self)
                return self.proc.returncode
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            self.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


RUNNING: list[Child] = []


def stop_all() -> None:
    for child in list(reversed(RUNNING)):
        child.stop()


def wait_http(url: str, child: Child | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.proc is not None and child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited early:\n{child.output()[-2000:]}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout:g}s")


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# --- receiver configuration ----------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value)  # a JSON number or string is also a TOML one
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml(data: dict[str, Any], table: str = "") -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    text = "\n".join(lines) + "\n"
    for key, value in data.items():
        if isinstance(value, dict):
            name = f"{table}.{key}" if table else key
            text += f"\n[{name}]\n" + toml(value, name)
    return text


def receiver_config(
    tmp: Path,
    port: int,
    *,
    ledger_url: str,
    s3_endpoint: str | None = None,
    bucket: str = "bench",
    prefix: str = "receiver",
    concurrency: int = 16,
) -> dict[str, Any]:
    """A production-like configuration: JSON logs at info, default worker settings apart from
    concurrency, loopback origins admitted by the fetcher."""
    destinations: dict[str, Any] = {
        "local": {"type": "filesystem", "path": str(tmp / "archive")},
    }
    default = "local"
    if s3_endpoint:
        destinations["s3"] = {
            "type": "s3",
            "bucket": bucket,
            "prefix": prefix,
            "region": S3_REGION,
            "endpoint_url": s3_endpoint,
            "access_key_id": S3_KEY_ID,
            "secret_access_key": S3_SECRET,
            "addressing_style": "path",
        }
        default = "s3"
    return {
        "public_url": f"http://127.0.0.1:{port}",
        "secret_keys": [SECRET],
        "ledger_url": ledger_url,
        "api_keys": [API_KEY],
        "default_destination": default,
        "log_level": "info",
        "log_format": "json",
        "destinations": destinations,
        # Nothing listens there: tasks are made in the ledger, the bench plays the provider.
        "providers": {PROVIDER: {"base_url": "http://127.0.0.1:9", "api_key": "unused"}},
        "fetch": {"allowed_networks": ["127.0.0.0/8"]},
        "worker": {"concurrency": concurrency},
    }


def write_config(path: Path, conf: dict[str, Any]) -> Path:
    path.write_text(toml(conf))
    return path


def start_receiver(tmp: Path, name: str, conf: dict[str, Any], port: int) -> Child:
    config = write_config(tmp / f"{name}.toml", conf)
    child = Child(
        name,
        python("receiver", "serve", "--config", str(config), "--port", str(port)),
        tmp / f"{name}.log",
    ).start()
    wait_http(f"http://127.0.0.1:{port}/healthz", child)
    return child


# --- tasks and callbacks -------------------------------------------------------------------------


async def create_tasks(ledger_url: str, count: int, destination: str) -> list[tuple[str, str]]:
    """Tasks as if submitted to the provider: (task id, provider task id). Polling is off so
    only callbacks move them."""
    from receiver.ledger import open_ledger
    from receiver.models import NewTask

    ledger = open_ledger(ledger_url)
    await ledger.open()
    out = []
    try:
        for i in range(count):
            task, _ = await ledger.create_task(
                NewTask(provider=PROVIDER, prompt=f"bench {i}", destination=destination)
            )
            ptid = f"sim_{task.id[4:]}"
            await ledger.mark_submitted(task.id, ptid, next_poll_at=None)
            out.append((task.id, ptid))
    finally:
        await ledger.close()
    return out


@dataclass(frozen=True)
class SignedCallback:
    path: str
    headers: dict[str, str]
    body: bytes


class Signer:
    """Signs callbacks as the provider would, with the per-task secret the receiver derives."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[str, str]] = {}

    def _task(self, task_id: str) -> tuple[str, str]:
        found = self._cache.get(task_id)
        if found is None:
            token = hook_token([SECRET], task_id, PROVIDER)
            secret = task_secrets([SECRET], task_id, "whsec")[0]
            found = (f"/v1/hooks/{PROVIDER}/{token}", secret)
            self._cache[task_id] = found
        return found

    def sign(self, task_id: str, payload: dict[str, Any], msg_id: str) -> SignedCallback:
        path, secret = self._task(task_id)
        body = json.dumps(payload, separators=(",", ":")).encode()
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": standard_sign(secret, msg_id, ts, body),
        }
        return SignedCallback(path, headers, body)


def succeeded(ptid: str, urls: Sequence[str], seed: int = 0) -> dict[str, Any]:
    expires = int(time.time()) + 3600
    return {
        "id": ptid,
        "status": "succeeded",
        "model": "sim-flux-1",
        "seed": seed,
        "cost": "0.0040",
        "images": [{"url": u, "expires_at": expires} for u in urls],
        "error": None,
    }


def pending(ptid: str) -> dict[str, Any]:
    return {"id": ptid, "status": "pending", "model": "sim-flux-1", "images": [], "error": None}


def machine() -> dict[str, str]:
    import platform

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
