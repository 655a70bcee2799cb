"""Request ids, the access log, HTTP metrics and the request's span, as pure ASGI middleware.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which buffers the response through a
task group and breaks server-sent event streams. Everything recorded names the route template
(``/v1/hooks/{provider}/{token}``), never the path: paths carry hook tokens and task ids, query
strings carry access tokens, and neither belongs in a log line, a label or a span.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics, tracing
from .log import REQUEST_ID

log = logging.getLogger(__name__)
access = logging.getLogger("receiver.access")  # a named channel: README documents it

HEADER = "x-request-id"
# What a caller's id may look like: a UUID, a ULID, nginx's $request_id, a dotted or colon-joined
# trace id. Anything else (too long, spaces, quotes, control characters) is replaced by our own.
_VALID_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The caller's ``X-Request-ID`` when it is well formed, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _VALID_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def route_template(routes: Iterable[BaseRoute], scope: Scope, prefix: str = "") -> str | None:
    """The template of the route that will serve ``scope``; a path matched with the wrong
    method still names its route (the 405 is about that route)."""
    partial = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        path = prefix + str(getattr(route, "path", ""))
        if isinstance(route, Mount):
            inner = route_template(route.routes, {**scope, **child}, path)
            found = inner or path + "/{path:path}"
        else:
            found = path
        if match is Match.FULL:
            return found
        partial = partial or found
    return partial


class RequestObserver:
    """Outermost middleware: one request id, one access line, one histogram sample and one
    server span per HTTP request; the id is returned as ``X-Request-ID``."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope.get("headers", ()))
        method = scope.get("method", "GET")
        method = method if method in _METHODS else "other"
        router = getattr(scope.get("app"), "router", None)
        route = route_template(getattr(router, "routes", ()), scope) or UNMATCHED
        status = 500
        size = 0
        started = False
        trace_id = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, size, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        token = REQUEST_ID.set(rid)
        metrics.HTTP_IN_FLIGHT.inc()
        start = time.perf_counter()
        try:
            headers = {
                k.decode("latin-1"): v.decode("latin-1")
                for k, v in scope.get("headers", ())
                if k == b"traceparent"
            }
            with tracing.server_span(method, route, headers) as span:
                span.set("receiver.request_id", rid)
                trace_id = tracing.current_trace_id()
                try:
                    await self.app(scope, receive, send_with_id)
                except asyncio.CancelledError:
                    if not started:
                        status = 499  # the client went away first (nginx's word for it)
                    raise
                except Exception as exc:
                    status = 500
                    span.error(type(exc).__name__)
                    log.exception("unhandled error on %s %s", method, route)
                    if started:
                        raise
                    await _internal_error(send_with_id)
                span.set("http.response.status_code", status)
                if status >= 500:
                    span.error(str(status))
        finally:
            elapsed = time.perf_counter() - start
            metrics.HTTP_IN_FLIGHT.dec()
            metrics.HTTP_DURATION.labels(method, route, str(status)).observe(elapsed)
            if self.access_log:
                access.info(
                    "%s %s %d",
                    method,
                    route,
                    status,
                    extra={
                        "method": method,
                        "route": route,
                        "http_status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "bytes": size,
                        "trace_id": trace_id,
                    },
                )
            REQUEST_ID.reset(token)


async def _internal_error(send: Send) -> None:
    body = json.dumps({"error": {"code": "internal", "message": "internal error"}}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})
