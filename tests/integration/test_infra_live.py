"""Deployment files tried on real parts: the Dockerfile's health check against a live app on a
loopback port, and nginx's own parser on the compose configuration. The file-only checks live
in tests/unit/test_infra.py."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from receiver.app import create_app
from receiver.config import load_settings
from receiver.demo import free_port
from tests.helpers import needs
from tests.unit.test_infra import (
    PLACEHOLDER_SECRET,
    Stage,
    compose,
    exposed_port,
    healthcheck_url,
    nginx_conf,
    receiver_services,
    stages,
)

__all__ = ["compose", "stages"]  # fixtures shared with the unit module


@contextlib.contextmanager
def running_app() -> Iterator[int]:
    """The real app (in-memory ledger, no background loops) on a loopback port."""
    settings = load_settings(
        None, {"RECEIVER_SECRET_KEYS": PLACEHOLDER_SECRET, "RECEIVER_LEDGER_URL": "memory://"}
    )
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, background=False),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "app did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_dockerfile_healthcheck_command_passes_on_a_live_app_and_fails_without_one(
    stages: list[Stage],
) -> None:
    _, argv = healthcheck_url(stages[-1])
    exposed = f":{exposed_port(stages[-1])}/"

    def run(port: int) -> int:
        code = argv[2].replace(exposed, f":{port}/")
        assert code != argv[2]
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=20
        ).returncode

    with running_app() as port:
        assert run(port) == 0
    assert run(free_port()) != 0


@needs("nginx", "nginx-light")
def test_nginx_accepts_the_configuration(tmp_path: Path, compose: dict[str, Any]) -> None:
    conf = nginx_conf()
    # The upstream names resolve only on the compose network: point them at loopback.
    for name in receiver_services(compose):
        conf = re.sub(rf"\b{re.escape(name)}:", "127.0.0.1:", conf)
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    result = subprocess.run(
        ["/usr/sbin/nginx", "-t", "-q", "-c", str(path), "-p", str(tmp_path), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
