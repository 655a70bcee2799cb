"""Request ids, the access log, HTTP metrics and the request's span, as pure ASGI middleware.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which buffers the response through a
task group and breaks server-sent event streams. Everything recorded names the route template
(``/v1/hooks/{provider}/{token}``), never the path: paths carry hook tokens and task ids, query
strings carry access tokens, and neither belongs in a log line, a label or a span.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import random
import re
import time
from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Match, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics, tracing
from .log import ACCESS_FIELDS, REQUEST_ID

log = logging.getLogger(__name__)
access = logging.getLogger("receiver.access")  # a named channel: README documents it

HEADER = "x-request-id"
# What a caller's id may look like: a UUID, a ULID, nginx's $request_id, a dotted or colon-joined
# trace id. Anything else (too long, spaces, quotes, control characters) is replaced by our own.
_VALID_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


# Request ids need to be unique, not secret (they are echoed to the caller): a 128-bit draw from
# a private Mersenne Twister costs a tenth of uuid4's read of os.urandom. Reseeded in a forked
# child, so two worker processes never share a sequence.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The caller's ``X-Request-ID`` when it is well formed, else a new one (32 hex digits)."""
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _VALID_ID.fullmatch(text):
                return text
            break
    return f"{_ids.getrandbits(128):032x}"


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


def _templates(routes: Iterable[BaseRoute], prefix: str = "") -> dict[int, tuple[BaseRoute, str]]:
    """Each endpoint route (inside mounts too) by identity, with its full template: the route
    Starlette's router picked (``scope["route"]``) names itself without a second walk."""
    found: dict[int, tuple[BaseRoute, str]] = {}
    for route in routes:
        path = prefix + str(getattr(route, "path", ""))
        if isinstance(route, Mount):
            found.update(_templates(route.routes, path))
        elif isinstance(route, Route | WebSocketRoute):
            found[id(route)] = (route, path)
    return found


@functools.lru_cache(maxsize=1024)
def _duration(method: str, route: str, status: int) -> Any:
    """The histogram child for these labels (all from fixed sets), looked up once."""
    return metrics.HTTP_DURATION.labels(method, route, str(status))


class RequestObserver:
    """Outermost middleware: one request id, one access line, one histogram sample and one
    server span per HTTP request; the id is returned as ``X-Request-ID``."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        self._known: dict[int, tuple[BaseRoute, str]] | None = None

    def _route(self, scope: Scope, path: str, root_path: str) -> str:
        """The route template, once the app has run: the route its router chose, else (no
        route: a 404, a redirect, a CORS preflight) a walk over the routes as they saw the
        request's path."""
        router = getattr(scope.get("app"), "router", None)
        routes = getattr(router, "routes", ())
        chosen = scope.get("route")
        if chosen is not None:
            if self._known is None:
                self._known = _templates(routes)
            known = self._known.get(id(chosen))
            if known is not None and known[0] is chosen:
                return known[1]
        # The app's routers moved path and root_path along any mount they entered.
        original = {**scope, "path": path, "root_path": root_path}
        return route_template(routes, original) or UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope.get("headers", ()))
        method = scope.get("method", "GET")
        method = method if method in _METHODS else "other"
        path, root_path = scope.get("path", ""), scope.get("root_path", "")
        route: str | None = None
        if tracing.enabled():  # the span is named up front
            route = self._route(scope, path, root_path)
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
        fields: dict[str, Any] = {}  # what the handlers add to the access line
        notes = ACCESS_FIELDS.set(fields if self.access_log else None)
        metrics.HTTP_IN_FLIGHT.inc()
        start = time.perf_counter()
        try:
            with tracing.server_span(method, route or UNMATCHED, _traceparent(scope)) as span:
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
                    route = route or self._route(scope, path, root_path)
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
            if route is None:
                route = self._route(scope, path, root_path)
            _duration(method, route, status).observe(elapsed)
            if self.access_log and access.isEnabledFor(logging.INFO):
                fields.update(
                    method=method,
                    route=route,
                    http_status=status,
                    duration_ms=round(elapsed * 1000, 2),
                    bytes=size,
                    trace_id=trace_id,
                )
                # Made and handed on here rather than by access.info(), which walks the stack
                # to find its caller (always this line): a quarter of the line's cost.
                args = (method, route, status)
                line = access.makeRecord(
                    access.name, logging.INFO, __file__, 0, "%s %s %d", args, None, extra=fields
                )
                access.handle(line)
            ACCESS_FIELDS.reset(notes)
            REQUEST_ID.reset(token)


def _traceparent(scope: Scope) -> dict[str, str]:
    """The caller's ``traceparent`` header, read only while tracing is on."""
    if not tracing.enabled():
        return {}
    return {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in scope.get("headers", ())
        if k == b"traceparent"
    }


async def _internal_error(send: Send) -> None:
    body = json.dumps({"error": {"code": "internal", "message": "internal error"}}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})
