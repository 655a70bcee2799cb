"""A running stack for console tests inside the test's event loop: the simulator and the
receiver (with its worker) served by uvicorn on loopback ports, and a signed-in client."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from receiver.app import create_app
from receiver.config import Settings
from receiver.demo import free_port, serving
from receiver.runtime import Runtime
from receiver.simulator import Faults, Simulator, build_simulator

from .helpers import API_KEY, SECRET, base_config

READ_ONLY_KEY = "read-only-console-key-0123"


@dataclass
class Stack:
    base: str
    rt: Runtime
    sim: Simulator
    settings: Settings
    archive: Path

    @property
    def api(self) -> dict[str, str]:
        return {"authorization": f"Bearer {API_KEY}"}

    async def submit(self, client: httpx.AsyncClient, prompt: str, **body: Any) -> str:
        data = {"provider": "simulated", "prompt": prompt, "params": {"width": 48, "height": 32}}
        data.update(body)
        response = await client.post(f"{self.base}/v1/tasks", json=data, headers=self.api)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    async def wait(self, ids: list[str], *statuses: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        pending = set(ids)
        while pending:
            for task_id in list(pending):
                task = await self.rt.ledger.get_task(task_id)
                if task is not None and task.status.value in statuses:
                    pending.discard(task_id)
            if not pending:
                return
            assert time.monotonic() < deadline, f"{len(pending)} tasks not {statuses}"
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def console_stack(tmp: Path, **over: Any) -> AsyncIterator[Stack]:
    sim_port, port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    conf = base_config(
        tmp,
        public_url=f"http://127.0.0.1:{port}",
        providers={"simulated": {"base_url": sim_url}},
        console={"read_only_keys": [READ_ONLY_KEY]},
        log_level="warning",
    )
    conf["worker"]["max_attempts"] = 1  # one failed download fails the task (fetch_failed)
    for key, value in over.items():
        conf[key] = {**conf.get(key, {}), **value} if isinstance(value, dict) else value
    settings = Settings.model_validate(conf)
    sim_app, sim = build_simulator(sim_url, Faults(delay=0.02))
    app = create_app(settings)
    async with serving(sim_app, sim_port), serving(app, port):
        yield Stack(
            base=settings.public_url,
            rt=app.state.runtime,
            sim=sim,
            settings=settings,
            archive=tmp / "archive",
        )


async def sign_in(client: httpx.AsyncClient, base: str, key: str = API_KEY) -> str:
    """Sign in through the form as a browser would; returns the session's CSRF token."""
    form = await client.get(f"{base}/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token, form.text
    done = await client.post(
        f"{base}/ui/login", data={"csrf": token.group(1), "api_key": key, "next": "/ui/"}
    )
    assert done.status_code == 303, done.text
    page = await client.get(f"{base}/ui/")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, page.text
    return csrf.group(1)


__all__ = ["API_KEY", "READ_ONLY_KEY", "SECRET", "Stack", "console_stack", "sign_in"]
