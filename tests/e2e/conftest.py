"""In-process stacks: a simulator and a receiver app, each a real uvicorn server on loopback,
running in a background thread so tests can talk to them over real HTTP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from receiver.app import create_app
from receiver.config import Settings
from receiver.simulator import Faults, Simulator, build_simulator
from tests.helpers import API_KEY, base_config, free_port


class ServerThread:
    """Runs uvicorn servers in one event loop on a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[tuple[uvicorn.Server, Any]] = []

    def serve(self, app: Any, port: int) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
        )
        server = uvicorn.Server(config)
        future = asyncio.run_coroutine_threadsafe(server.serve(), self.loop)
        for _ in range(300):
            if server.started:
                break
            if future.done():
                future.result()
            threading.Event().wait(0.02)
        else:
            raise TimeoutError(f"server on {port} did not start")
        self.servers.append((server, future))

    def stop(self) -> None:
        for server, future in reversed(self.servers):
            server.should_exit = True
            try:
                future.result(timeout=30)
            except Exception:  # noqa: S110 - a test teardown must go on
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Stack:
    base: str
    sim_url: str
    sim: Simulator
    settings: Settings
    tmp: Path

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"authorization": f"Bearer {API_KEY}"}, timeout=30.0
        )

    def sim_state(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.sim_url}/_sim/state", timeout=10).json())


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    threads: list[ServerThread] = []

    def make(
        faults: Faults | None = None, providers: list[str] | None = None, **config: Any
    ) -> Stack:
        thread = ServerThread()
        threads.append(thread)
        sim_port, port = free_port(), free_port()
        sim_url = f"http://127.0.0.1:{sim_port}"
        names = providers or ["simulated"]
        conf = base_config(tmp_path, public_url=f"http://127.0.0.1:{port}")
        conf["providers"] = {n: {"base_url": sim_url, "api_key": "sim-key"} for n in names}
        if "bfl" in names:  # the simulator's polling_urls name localhost (another host)
            conf["providers"]["bfl"]["polling_hosts"] = ["localhost"]
        for key, value in config.items():
            if isinstance(value, dict) and isinstance(conf.get(key), dict):
                conf[key] = {**conf[key], **value}
            else:
                conf[key] = value
        settings = Settings.model_validate(conf)
        sim_app, sim = build_simulator(sim_url, faults or Faults(delay=0.05), names)
        thread.serve(sim_app, sim_port)
        thread.serve(create_app(settings), port)
        return Stack(f"http://127.0.0.1:{port}", sim_url, sim, settings, tmp_path)

    yield make
    for thread in threads:
        thread.stop()
