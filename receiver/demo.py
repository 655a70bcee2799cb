"""``receiver demo``: the whole path on one machine with no credentials.

A simulated provider, the server and its worker run in this process on free loopback ports;
three tasks are submitted over HTTP and archived into a local folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from .app import create_app
from .config import Settings
from .simulator import build_simulator

PROMPTS = (
    "a lighthouse on a basalt cliff at dawn, film grain",
    "a paper crane folded from a subway map",
    "a greenhouse on the moon, soft studio light",
    "a fox made of autumn leaves, macro photograph",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(
    app: ASGIApp, port: int, sock: socket.socket | None = None
) -> AsyncIterator[uvicorn.Server]:
    """Run ``app`` on 127.0.0.1:``port`` (or on ``sock``, already bound) inside the current
    event loop."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,  # open console streams must not hold Ctrl-C up
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock] if sock is not None else None))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"server on port {port} did not start")
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        await task


def demo_settings(folder: Path, sim_url: str, port: int, api_key: str) -> Settings:
    return Settings.model_validate(
        {
            "public_url": f"http://127.0.0.1:{port}",
            "secret_keys": [secrets.token_urlsafe(32)],
            "ledger_url": f"sqlite:///{folder / 'receiver.db'}",
            "api_keys": [api_key],
            "default_destination": "local",
            "destinations": {"local": {"type": "filesystem", "path": str(folder / "archive")}},
            "providers": {"simulated": {"base_url": sim_url}},
            # The simulator serves its images on loopback, which is refused by default.
            "fetch": {"allowed_networks": ["127.0.0.0/8", "::1/128"]},
            "worker": {"poll_interval": 0.2, "reconcile_interval": 1.0},
            "log_level": "warning",
            "log_format": "text",
        }
    )


async def run_demo(
    folder: Path,
    count: int = 3,
    timeout: float = 60.0,
    *,
    serve: bool = False,
    port: int | None = None,
) -> int:
    from . import log

    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    log.setup("warning", "text")
    logging.getLogger("receiver").setLevel(logging.WARNING)
    from .errors import ReceiverError
    from .server import listen

    sim_port = free_port()
    port = port or (8000 if serve else free_port())
    try:
        # Bound before anything is announced: a port in use is one line, not a traceback.
        sock = listen("127.0.0.1", port)
    except ReceiverError as exc:
        raise ReceiverError(f"{exc.message} (choose another with --port)") from None
    sim_url = f"http://127.0.0.1:{sim_port}"
    api_key = secrets.token_urlsafe(24)
    settings = demo_settings(folder, sim_url, port, api_key)
    sim_app, _ = build_simulator(sim_url)
    print(f"simulated provider on {sim_url}; receiver on {settings.public_url}")
    print(f"archiving into {folder / 'archive'}")
    async with serving(sim_app, sim_port), serving(create_app(settings), port, sock) as server:
        headers = {"authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(base_url=settings.public_url, headers=headers) as client:
            ids = []
            for i in range(count):
                body = {
                    "provider": "simulated",
                    "prompt": PROMPTS[i % len(PROMPTS)],
                    "params": {"width": 96, "height": 64},
                    "metadata": {"demo": True, "n": i},
                }
                response = await client.post("/v1/tasks", json=body)
                response.raise_for_status()
                ids.append(response.json()["id"])
                print(f"submitted {ids[-1]}")
            tasks = await _wait_all(client, ids, timeout)
        ok = _report(tasks)
        console = f"{settings.public_url}/ui/"
        if serve:
            print(f"sign in to the console with the API key {api_key}; Ctrl-C stops")
            print(f"console: {console}", flush=True)
            while not server.should_exit:  # noqa: ASYNC110 (uvicorn sets it on Ctrl-C)
                await asyncio.sleep(0.2)
            return 0 if ok else 1
    print("console: run `receiver demo --serve`, then open http://127.0.0.1:8000/ui/")
    return 0 if ok else 1


def _report(tasks: list[dict[str, Any]]) -> bool:
    ok = True
    for task in tasks:
        if task["status"] != "archived":
            ok = False
            failure = task.get("failure") or {}
            print(
                f"{task['id']}: {task['status']} {failure.get('reason', '')} "
                f"{failure.get('message', '')}",
                file=sys.stderr,
            )
            continue
        print(f"{task['id']}: archived")
        for obj in task["objects"]:
            print(
                f"  image   {os.path.relpath(obj['uri'])}  ({obj['bytes']} bytes, "
                f"{obj['width']}x{obj['height']}, sha256 {obj['sha256'][:16]})"
            )
            print(f"  sidecar {os.path.relpath(obj['sidecar_uri'])}")
            claims = obj.get("provenance") or {}
            print(f"  c2pa    {claims.get('status', 'not read')} (sidecar field provenance)")
    return ok


async def _wait_all(
    client: httpx.AsyncClient, ids: list[str], timeout: float
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        tasks = [(await client.get(f"/v1/tasks/{i}")).json() for i in ids]
        if all(t["status"] in ("archived", "failed") for t in tasks):
            return tasks
        if time.monotonic() > deadline:
            return tasks
        await asyncio.sleep(0.2)
