"""Push to the application: a Standard Webhooks-signed POST when a task is archived or fails.

Each event is a row in the ledger with its own id, sent as ``webhook-id`` on every retry so the
application can de-duplicate. Retries back off for at least 24 hours; a restart loses none
because the ledger holds them. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from typing import Any

import httpx

from . import backoff, metrics, netguard, tracing
from .errors import LedgerUnavailable, ReceiverError
from .models import Notification, Task
from .runtime import Runtime
from .signatures import standard_sign
from .views import NotificationPayload, NotifiedObject, NotifiedTask, TaskView, copy_fields

log = logging.getLogger(__name__)


async def build_payload(rt: Runtime, task: Task, event: str, event_id: str) -> dict[str, Any]:
    """The task, and for each archived object its location, a presigned link where the
    destination can make one, and its sidecar (documented as NotificationPayload in the
    ``webhooks`` section of /openapi.json)."""
    objects = []
    dest = rt.destinations.get(task.destination)
    for obj in task.objects:
        presigned = None
        if dest is not None:
            with contextlib.suppress(ReceiverError):
                presigned = await dest.presign(obj.key, rt.settings.notify.presign_seconds)
        objects.append(copy_fields(NotifiedObject, obj, presigned_url=presigned))
    view = TaskView.of(task).model_dump()
    view["objects"] = objects
    payload = NotificationPayload(
        id=event_id,
        type=event,  # type: ignore[arg-type]
        timestamp=int(rt.clock.now()),
        data=NotifiedTask(**view),
    )
    return payload.model_dump(mode="json")


class NotifyRefused(Exception):
    """notify_url points at an address we must not connect to (given up, not retried)."""


class Notifier:
    def __init__(self, runtime: Runtime, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.rt = runtime
        self.conf = runtime.settings.notify
        self._stopping = asyncio.Event()
        self._wake: asyncio.Event | None = None
        self.allowed = netguard.parse_networks(self.conf.allowed_networks)
        self.http = httpx.AsyncClient(
            timeout=self.conf.timeout,
            follow_redirects=False,
            transport=transport or runtime.notify_transport,
            headers={"user-agent": "receiver-notify"},
        )

    def stop(self) -> None:
        self._stopping.set()
        if self._wake is not None:
            self._wake.set()  # stop waiting for the next poll

    async def run(self) -> None:
        wake = self.rt.changes.subscribe("notify")
        self._wake = wake
        interval = self.rt.settings.worker.poll_interval
        try:
            while not self._stopping.is_set():
                batch: list[Notification] = []
                try:
                    batch = await self.rt.ledger.claim_notifications(
                        self.rt.owner, self.conf.concurrency, 60.0
                    )
                    await asyncio.gather(*(self.send(n) for n in batch))
                except LedgerUnavailable as exc:
                    log.warning("notifier: ledger unavailable: %s", exc)
                if batch:
                    continue
                wake.clear()
                if self._stopping.is_set():
                    break  # stop() set wake while we claimed; clearing it must not hide that
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), interval)
        finally:
            self.rt.changes.unsubscribe("notify", wake)
            await self.http.aclose()

    async def _address(self, url: httpx.URL) -> str:
        """The one address to connect to for ``url``, every candidate checked like a result
        URL's but against ``notify.allowed_networks``."""
        if url.scheme not in ("http", "https") or not url.host:
            raise NotifyRefused("notify_url is not an http(s) URL; refused")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            candidates = [str(ipaddress.ip_address(url.host))]
        except ValueError:
            candidates = await self.rt.fetcher.resolver(url.host, port)
        if not candidates:
            raise OSError(f"no address for {url.host}")  # transient: retried
        for candidate in candidates:
            ip = ipaddress.ip_address(candidate.split("%", 1)[0])
            why = netguard.refusal(ip, self.allowed)
            if why:
                raise NotifyRefused(
                    f"notify_url host {url.host} is {ip}, not a public address ({why}); "
                    "refused. Add its network to notify.allowed_networks to allow it"
                )
        return candidates[0]

    async def send(self, note: Notification) -> bool:
        ledger = self.rt.ledger
        task = await ledger.get_task(note.task_id)
        if task is None:
            await ledger.retry_notification(note.id, self.rt.owner, "task gone", 0, give_up=True)
            return False
        attrs = {
            "receiver.task_id": task.id,
            "receiver.event": note.event,
            "receiver.attempt": note.attempts,
        }
        with tracing.span("receiver.notify", attrs, parent=task.traceparent, kind="client") as span:
            refused = False
            try:
                error = await self._post(note, task)
            except NotifyRefused as exc:  # the address will not become public by waiting
                error, refused = str(exc), True
            if error is not None:
                span.error("not_delivered")
        if error is None:
            metrics.NOTIFICATIONS.labels("delivered").inc()
            await ledger.finish_notification(note.id, self.rt.owner)
            log.info("notified", extra={"task_id": task.id, "event": note.event})
            return True
        give_up = refused or self.rt.clock.now() - note.created_at > self.conf.retry_hours * 3600
        delay = backoff.delay(
            note.attempts, self.conf.retry_base_seconds, self.conf.retry_max_seconds
        )
        metrics.NOTIFICATIONS.labels("dead" if give_up else "retry").inc()
        (log.warning if refused or note.attempts > 1 else log.info)(
            "notification failed (%s); %s",
            error,
            "giving up" if give_up else f"retry in {delay:.0f}s",
            extra={"task_id": task.id, "event": note.event},
        )
        await ledger.retry_notification(note.id, self.rt.owner, error, delay, give_up=give_up)
        return False

    async def _post(self, note: Notification, task: Task) -> str | None:
        """None on success, else why it failed."""
        if not self.conf.secret:
            return "notify.secret is not configured"
        payload = await build_payload(self.rt, task, note.event, note.id)
        body = json.dumps(payload, separators=(",", ":")).encode()
        ts = int(self.rt.clock.now())
        headers = {
            "content-type": "application/json",
            "webhook-id": note.id,
            "webhook-timestamp": str(ts),
            "webhook-signature": standard_sign(self.conf.secret, note.id, ts, body),
        }
        tracing.inject(headers)  # the application may continue the task's trace
        try:
            target = httpx.URL(note.url)
            address = await self._address(target)
        except (httpx.InvalidURL, OSError, UnicodeError) as exc:
            return f"cannot resolve notify_url: {type(exc).__name__}"
        # Connect to the checked address, so DNS cannot answer differently in between.
        headers["host"] = target.netloc.decode("ascii")
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = self.http.build_request(
            "POST",
            target.copy_with(host=address),
            content=body,
            headers=headers,
            extensions=extensions,
        )
        try:
            response = await self.http.send(request)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"
