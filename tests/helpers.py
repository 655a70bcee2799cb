"""Helpers for tests that run real processes and servers on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.demo import free_port as free_port  # re-exported for the tests

API_KEY = "test-api-key-0123456789"
SECRET = "test-secret-key-0123456789abcdef"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for our configuration files (scalars, lists, nested tables)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in data.items():
        if isinstance(value, dict):
            name = f"{prefix}{key}"
            out += f"\n[{name}]\n" + to_toml(value, name + ".")
    return out


def base_config(tmp: Path, **over: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "public_url": "http://127.0.0.1:1",
        "secret_keys": [SECRET],
        "ledger_url": f"sqlite:///{tmp / 'ledger.db'}",
        "api_keys": [API_KEY],
        "default_destination": "local",
        "log_format": "json",
        "destinations": {"local": {"type": "filesystem", "path": str(tmp / "archive")}},
        "providers": {},
        "fetch": {"allowed_networks": ["127.0.0.0/8"]},
        "worker": {
            "poll_interval": 0.1,
            "reconcile_interval": 0.3,
            "lease_seconds": 5.0,
            "retry_base_seconds": 0.1,
            "retry_max_seconds": 0.5,
        },
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(conf.get(key), dict):
            conf[key] = {**conf[key], **value}
        else:
            conf[key] = value
    return conf


def write_config(tmp: Path, conf: dict[str, Any], name: str = "receiver.toml") -> Path:
    path = tmp / name
    path.write_text(to_toml(conf))
    return path


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


class Proc:
    """A ``receiver`` subprocess with its log captured to a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "receiver", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_tasks(
    base: str,
    ids: list[str],
    timeout: float = 60.0,
    final: tuple[str, ...] = ("archived", "failed"),
) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {API_KEY}"}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, headers=headers, timeout=10.0) as client:
        while True:
            tasks = [client.get(f"/v1/tasks/{i}").json() for i in ids]
            if all(t.get("status") in final for t in tasks):
                return tasks
            if time.monotonic() > deadline:
                states = {t.get("id"): t.get("status") for t in tasks}
                raise TimeoutError(f"tasks not final: {states}")
            time.sleep(0.2)


def submit(
    base: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/tasks",
        json=body,
        headers={"authorization": f"Bearer {API_KEY}", **(headers or {})},
        timeout=30.0,
    )


def needs(binary: str, package: str) -> pytest.MarkDecorator:
    """Skip, in one line naming the Debian package, when a real part the test drives is not
    installed (a developer's machine); .ci/run installs it, so CI skips nothing."""
    import shutil

    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    return pytest.mark.skipif(
        found is None, reason=f"{binary} is not installed (Debian package {package})"
    )
