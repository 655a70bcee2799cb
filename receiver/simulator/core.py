"""Machinery every simulated provider shares.

A simulator keeps its tasks in memory, renders a real image per result, serves it at a signed
URL that expires, and delivers callbacks over real HTTP with fault injection. Provider modules
(``receiver/simulator/<provider>.py``) add the provider's own wire format on top.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .images import render_png

log = logging.getLogger(__name__)

_MARKER = re.compile(r"\[sim:([a-z0-9_]+)=([^\]]*)\]")


def faults_from_prompt(prompt: str) -> dict[str, Any]:
    """Per-task faults for providers whose parameters have no room for them: markers such as
    ``[sim:outcome=moderated]`` or ``[sim:download_5xx=2]`` in the prompt."""
    found: dict[str, Any] = {}
    for key, raw in _MARKER.findall(prompt):
        try:
            found[key] = json.loads(raw)
        except ValueError:
            found[key] = raw
    return found


@dataclass
class Faults:
    """Simulator-wide behaviour; each task may override through its own ``faults`` dict."""

    delay: float = 0.2  # seconds from submission to completion
    url_ttl: float = 600.0  # result URL lifetime
    download_5xx_rate: float = 0.0  # share of downloads answered 503
    slow_download: float = 0.0  # seconds spent dribbling each download
    duplicates: int = 1  # copies of each callback
    callback_retries: int = 5  # retries of a callback the receiver did not 2xx
    # BFL: where returned polling_urls point (None: this simulator under another host name).
    polling_base_url: str | None = None


@dataclass
class SimTask:
    id: str
    provider: str
    params: dict[str, Any]
    faults: dict[str, Any]
    created_at: float = field(default_factory=time.time)
    status: str = "pending"  # pending | succeeded | failed | moderated
    images: list[bytes] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    expires_at: float | None = None
    completed_at: float | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    downloads: int = 0
    error: str | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Simulator:
    """The shared state and routes; ``public_url`` is where the receiver reaches us."""

    def __init__(self, public_url: str, faults: Faults | None = None) -> None:
        self.public_url = public_url.rstrip("/")
        self.faults = faults or Faults()
        self.tasks: dict[str, SimTask] = {}
        self.submissions = 0
        self.rejected = 0
        self.callbacks_sent = 0
        self.downloads = 0
        self._key = os.urandom(32)
        self._background: set[asyncio.Task[None]] = set()
        self.http = httpx.AsyncClient(timeout=10.0)

    # --- tasks ------------------------------------------------------------------------------

    def new_task(self, provider: str, params: dict[str, Any], prefix: str = "sim") -> SimTask:
        self.submissions += 1
        faults = dict(params.get("faults") or {}) if isinstance(params.get("faults"), dict) else {}
        faults.update(faults_from_prompt(str(params.get("prompt", ""))))
        task_id = f"{prefix}_{os.urandom(8).hex()}"
        given = params.get("seed")
        seed = given if isinstance(given, int) else random.randrange(2**31)
        task = SimTask(id=task_id, provider=provider, params=params, faults=dict(faults), seed=seed)
        self.tasks[task_id] = task
        return task

    def fault(self, task: SimTask, name: str) -> Any:
        return task.faults.get(name, getattr(self.faults, name, None))

    def complete(self, task: SimTask, count: int = 1, ext: str = "png") -> None:
        """Finish ``task``: render its images and sign their URLs (or fail it, if told to)."""
        outcome = task.faults.get("outcome")
        task.completed_at = time.time()
        if outcome in ("failed", "moderated"):
            task.status = str(outcome)
            task.error = (
                "Content flagged by the safety filter"
                if outcome == "moderated"
                else "Generation failed: out of capacity"
            )
            return
        size = int(task.faults.get("image_bytes", 0))
        width = int(task.params.get("width") or 64)
        height = int(task.params.get("height") or 64)
        width, height = min(width, 256), min(height, 256)
        ttl = float(self.fault(task, "url_ttl"))
        task.expires_at = time.time() + ttl
        task.images = [
            render_png(f"{task.id}:{i}:{task.params.get('prompt', '')}", width, height, size)
            for i in range(count)
        ]
        task.urls = [self.file_url(task, i, ext) for i in range(count)]
        task.status = "succeeded"

    def file_url(self, task: SimTask, index: int, ext: str) -> str:
        expires = int(task.expires_at or time.time())
        sig = self._sign(f"{task.id}/{index}/{expires}")
        base = task.faults.get("result_base_url") or self.public_url
        return f"{base}/files/{task.id}/{index}.{ext}?expires={expires}&sig={sig}"

    def _sign(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()[:32]

    # --- callbacks ----------------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        job: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    def schedule(
        self, task: SimTask, finish: Callable[[SimTask], None], send: Callable[[SimTask], Any]
    ) -> None:
        """After the delay: ``finish`` the task, then ``send`` its callback (unless told not to)."""

        async def run() -> None:
            await asyncio.sleep(float(self.fault(task, "delay")))
            finish(task)
            if task.faults.get("no_callback") or not task.webhook_url:
                return
            late = float(task.faults.get("late_callback", 0))
            if late:
                await asyncio.sleep(late)
            await send(task)

        self.spawn(run())

    async def deliver(
        self, task: SimTask, url: str, body: bytes, headers: Callable[[], dict[str, str]]
    ) -> None:
        """POST the callback ``duplicates`` times (half of them at once), retrying each copy on
        failure the way real senders do. ``headers`` is called per attempt (fresh timestamps)."""
        copies = max(1, int(self.fault(task, "duplicates")))

        async def one() -> None:
            for attempt in range(int(self.faults.callback_retries) + 1):
                try:
                    response = await self.http.post(
                        url, content=body, headers={"content-type": "application/json", **headers()}
                    )
                    self.callbacks_sent += 1
                    if response.status_code < 300 or response.status_code in (400, 401, 404, 413):
                        return
                except httpx.HTTPError as exc:
                    log.info("callback to receiver failed: %s", exc)
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))

        first, rest = copies // 2 or 1, copies - (copies // 2 or 1)
        await asyncio.gather(*(one() for _ in range(first)))
        for _ in range(rest):
            await one()

    # --- routes ---------------------------------------------------------------------------------

    async def serve_file(self, request: Request) -> Response:
        task = self.tasks.get(request.path_params["task_id"])
        index = int(request.path_params["index"])
        if task is None or index >= len(task.images):
            return JSONResponse({"error": "not found"}, status_code=404)
        expires = int(request.query_params.get("expires", "0"))
        sig = request.query_params.get("sig", "")
        if not hmac.compare_digest(sig, self._sign(f"{task.id}/{index}/{expires}")):
            return JSONResponse({"error": "bad signature"}, status_code=403)
        if time.time() > expires:
            return JSONResponse({"error": "expired"}, status_code=403)
        task.downloads += 1
        self.downloads += 1
        fail_first = int(task.faults.get("download_5xx", 0))
        if task.downloads <= fail_first or random.random() < float(
            self.fault(task, "download_5xx_rate")
        ):
            return JSONResponse({"error": "temporarily unavailable"}, status_code=503)
        if task.faults.get("serve_html"):
            return Response(
                b"<!DOCTYPE html><html><body>Not found</body></html>", media_type="text/html"
            )
        data = task.images[index]
        slow = float(self.fault(task, "slow_download"))
        media = "image/png"
        if task.faults.get("wrong_content_type"):
            media = "text/plain"
        if slow <= 0:
            return Response(data, media_type=media)

        async def dribble() -> Any:
            pieces = 10
            step = len(data) // pieces + 1
            for start in range(0, len(data), step):
                yield data[start : start + step]
                await asyncio.sleep(slow / pieces)

        return StreamingResponse(
            dribble(), media_type=media, headers={"content-length": str(len(data))}
        )

    async def inspect(self, request: Request) -> Response:
        """Test hook: what the simulator did, with the sha256 of every image it served."""
        return JSONResponse(
            {
                "submissions": self.submissions,
                "rejected": self.rejected,
                "callbacks_sent": self.callbacks_sent,
                "downloads": self.downloads,
                "tasks": {
                    t.id: {
                        "status": t.status,
                        "sha256": [hashlib.sha256(img).hexdigest() for img in t.images],
                        "bytes": [len(img) for img in t.images],
                        "seed": t.seed,
                        "params": {k: v for k, v in t.params.items() if k != "webhook_secret"},
                    }
                    for t in self.tasks.values()
                },
            }
        )

    async def set_faults(self, request: Request) -> Response:
        """Test hook: change simulator-wide faults while running (chaos test)."""
        data = await request.json()
        for key, value in data.items():
            if hasattr(self.faults, key):
                setattr(self.faults, key, type(getattr(self.faults, key))(value))
        return JSONResponse({"faults": self.faults.__dict__})

    def routes(self) -> list[Route]:
        return [
            Route("/files/{task_id}/{index:int}.{ext}", self.serve_file, methods=["GET"]),
            Route("/_sim/state", self.inspect, methods=["GET"]),
            Route("/_sim/faults", self.set_faults, methods=["POST"]),
        ]

    async def aclose(self) -> None:
        for job in list(self._background):
            job.cancel()
        await self.http.aclose()
