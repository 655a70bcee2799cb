"""Console pages and streams. Handlers are thin: check the session, ask the ledger or the
replay service, render a template."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from PIL import Image, UnidentifiedImageError
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__, metrics
from ..api.common import read_body
from ..api.sse import Next, follow, sse_response
from ..config import Settings
from ..errors import BadRequest, Forbidden, NotFound, ReceiverError, StoreError, Unauthorized
from ..models import Reason, Status, Task, TaskFilter
from ..providers import REGISTRY
from ..replay import FILTER_KEYS, MAX_BULK, bulk, parse_filter, replay_task
from ..runtime import Runtime
from . import auth
from .media import IMMUTABLE, Thumbnails

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
PAGE = 48  # cards per gallery page
LIVE_POLL_SECONDS = 1.0
LIVE_BATCH = 200
LIVE_MAX_SECONDS = 300.0  # a stream ends after this; EventSource reconnects by itself
SAMPLE_SECONDS = 60.0
Handler = Callable[[Request], Awaitable[Response]]


def _ts(value: float | None) -> str:
    if not value:
        return ""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, float(seconds))
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


class Console:
    """What the console keeps per process: templates, thumbnails, a sampler of counters."""

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self.settings = settings
        self.rt = runtime
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"], default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["ts"] = _ts
        self.env.filters["age"] = _age
        self.env.filters["pretty"] = _pretty
        self.env.globals["version"] = __version__
        self.thumbs = Thumbnails(settings.console.thumbnail_px)
        # (time, {(provider, cause): total}) every minute: "verification failures, last hour"
        self._samples: collections.deque[tuple[float, dict[tuple[str, str], float]]] = (
            collections.deque(maxlen=int(3600 / SAMPLE_SECONDS) + 5)
        )
        self._sampler: asyncio.Task[None] | None = None
        self.started = time.time()

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._samples.append((time.time(), _verify_failures()))
        self._sampler = asyncio.create_task(self._sample(), name="console-sampler")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            self._samples.append((time.time(), _verify_failures()))

    def failures_last_hour(self) -> dict[str, dict[str, int]]:
        """Verification failures of this replica in the last hour, per provider and cause."""
        now_totals = _verify_failures()
        cutoff = time.time() - 3600
        base: dict[tuple[str, str], float] = {}
        for at, totals in self._samples:
            if at <= cutoff:
                base = totals  # the newest sample at least an hour old
        out: dict[str, dict[str, int]] = {}
        for (provider, cause), total in now_totals.items():
            count = int(total - base.get((provider, cause), 0.0))
            if count > 0:
                out.setdefault(provider, {})[cause] = count
        return out

    # --- rendering ----------------------------------------------------------------------------

    def render(
        self, request: Request, name: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        html = self.render_text(name, request=request, **context)
        return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})

    def render_text(self, name: str, **context: Any) -> str:
        context.setdefault("thumb_url", thumb_url)
        context.setdefault("model_of", model_of)
        return self.env.get_template(name).render(**context)

    def card(self, task: Task) -> str:
        return self.render_text("_card.html", t=task)


def _verify_failures() -> dict[tuple[str, str], float]:
    totals: dict[tuple[str, str], float] = {}
    for family in metrics.VERIFY_FAILURES.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels.get("provider", ""), sample.labels.get("cause", ""))
                totals[key] = sample.value
    return totals


def thumb_url(task: Task, index: int = 0) -> str:
    obj = task.objects[index]
    return f"/ui/thumbs/{task.id}/{obj.index}.webp?v={obj.sha256[:16]}"


def model_of(task: Task) -> str:
    if task.model:
        return task.model
    if task.outcome and task.outcome.model:
        return task.outcome.model
    for obj in task.objects:
        if obj.sidecar and obj.sidecar.get("model"):
            return str(obj.sidecar["model"])
    return ""


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _show(request: Request, name: str, **context: Any) -> Response:
    """A signed-in page: the template with the session that ``page`` checked."""
    return _console(request).render(request, name, session=request.state.session, **context)


def _safe_next(value: str | None) -> str:
    """Only a path inside the console: never another host (no open redirect)."""
    if not value or not value.startswith("/ui") or value.startswith("//"):
        return "/ui/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/ui/"
    return value


def _error_page(request: Request, exc: ReceiverError) -> Response:
    console = _console(request)
    return console.render(
        request, "error.html", status=exc.status, code=exc.code, message=exc.message, session=None
    )


def page(handler: Handler) -> Handler:
    """A signed-in page: send strangers to the sign-in form, render errors as pages."""

    async def wrapped(request: Request) -> Response:
        console = _console(request)
        session = auth.current_session(request, console.settings)
        if session is None:
            if request.method == "GET":
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse("/ui/login?" + urlencode({"next": target}), status_code=303)
            return _error_page(request, Unauthorized("sign in to the console first"))
        request.state.session = session
        try:
            return await handler(request)
        except ReceiverError as exc:
            return _error_page(request, exc)

    return wrapped


async def _form(request: Request) -> dict[str, str]:
    """A URL-encoded form (the console posts no files), capped like every body. Parsed here
    rather than through Starlette's form parser, which would need python-multipart."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, _console(request).settings.server.max_body_bytes)
    if not body:
        return {}  # an empty form: the CSRF check refuses it
    if kind != "application/x-www-form-urlencoded":
        raise BadRequest("expected a URL-encoded form")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("malformed form body") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


async def _writer_form(request: Request) -> dict[str, str]:
    """The form of a state-changing request, after the CSRF and read-only checks."""
    session: auth.Session = request.state.session
    form = await _form(request)
    auth.check_csrf(session, form.get("csrf"))
    auth.require_writer(session)
    return form


# --- sign-in --------------------------------------------------------------------------------


def _login_page(request: Request, target: str, error: str | None) -> Response:
    console = _console(request)
    token, signed = auth.login_token(console.settings)
    response = console.render(
        request,
        "login.html",
        status=401 if error else 200,
        next=target,
        error=error,
        login_csrf=token,
    )
    auth.set_login_cookie(response, console.settings, signed)
    return response


async def login_form(request: Request) -> Response:
    return _login_page(request, _safe_next(request.query_params.get("next")), None)


async def login(request: Request) -> Response:
    console = _console(request)
    form = await _form(request)
    try:
        auth.check_login_token(request, console.settings, form.get("csrf"))
    except Forbidden as exc:
        return _error_page(request, exc)
    given = form.get("api_key")
    session = auth.match_key(console.settings, given) if isinstance(given, str) else None
    target = _safe_next(str(form.get("next") or ""))
    if session is None:
        log.info("console sign-in refused")
        return _login_page(request, target, "That key is not accepted.")
    response = RedirectResponse(target, status_code=303)
    auth.set_session(response, console.settings, session)
    response.delete_cookie(auth.LOGIN_COOKIE, path="/ui")
    log.info("console sign-in", extra={"read_only": session.read_only})
    return response


@page
async def logout(request: Request) -> Response:
    form = await _form(request)
    auth.check_csrf(request.state.session, form.get("csrf"))
    response = RedirectResponse("/ui/login", status_code=303)
    auth.clear_session(response, _console(request).settings)
    return response


# --- gallery ----------------------------------------------------------------------------------


def _filter_args(params: Mapping[str, str]) -> dict[str, str]:
    return {k: str(params[k]) for k in FILTER_KEYS if k != "as_of" and params.get(k)}


def _choices(console: Console) -> dict[str, list[str]]:
    providers = sorted(set(REGISTRY) | set(console.settings.providers))
    return {
        "statuses": [s.value for s in Status],
        "providers": providers,
        "destinations": sorted(console.settings.destinations),
        "reasons": [r.value for r in Reason],
    }


@page
async def gallery(request: Request) -> Response:
    console = _console(request)
    args = _filter_args(request.query_params)
    where = parse_filter(args)
    cursor = request.query_params.get("cursor") or None
    read_at = time.time()  # before the read: a change committed during it is streamed too
    started = time.perf_counter()
    tasks, next_cursor = await console.rt.ledger.search_tasks(where, cursor=cursor, limit=PAGE)
    elapsed = time.perf_counter() - started
    query = urlencode(args)
    return _show(
        request,
        "gallery.html",
        tasks=tasks,
        args=args,
        query=query,
        cursor=cursor,
        next_url=("/ui/?" + urlencode({**args, "cursor": next_cursor})) if next_cursor else None,
        live_url=None if cursor else "/ui/live?" + urlencode({**args, "since": read_at}),
        choices=_choices(console),
        query_ms=elapsed * 1000,
        failed_filter=where.status in (None, Status.FAILED),
    )


@page
async def live(request: Request) -> Response:
    """Cards of tasks that changed since ``since`` and match the filter, as they change."""
    console = _console(request)
    rt = console.rt
    args = _filter_args(request.query_params)
    where = parse_filter(args)
    try:
        since = float(request.query_params.get("since", "")) - 2.0  # other replicas' clocks
    except ValueError:
        since = time.time() - 2.0
    return _stream(request, _gallery_events(rt, console, where, since))


def _gallery_events(
    rt: Runtime, console: Console, where: TaskFilter, since: float
) -> AsyncIterator[str]:
    sent: dict[str, float] = {}

    async def read() -> tuple[list[str], Next]:
        nonlocal since, sent
        batch = await rt.ledger.changed_tasks(where, since, LIVE_BATCH)
        cards = []
        for task in batch:
            if sent.get(task.id) == task.updated_at:
                continue
            sent[task.id] = task.updated_at
            data = {"id": task.id, "status": task.status.value, "html": console.card(task)}
            cards.append(f"event: card\ndata: {json.dumps(data)}\n\n")
        if len(batch) == LIVE_BATCH:
            since = batch[-1].updated_at  # more waiting: page on at once
            return cards, "again"
        if batch:
            # Re-read the last two seconds each time: a replica's clock or a late commit
            # may put a change slightly in the past; ``sent`` drops the repeats.
            since = max(since, batch[-1].updated_at - 2.0)
        if len(sent) > 5000:
            sent = {k: v for k, v in sent.items() if v >= since}
        return cards, "wait"

    return follow(rt, "tasks", read, poll_seconds=LIVE_POLL_SECONDS, max_seconds=LIVE_MAX_SECONDS)


def _stream(request: Request, events: AsyncIterator[str]) -> Response:
    return sse_response(events, cache_control="no-store")


# --- task page --------------------------------------------------------------------------------


async def _task_context(console: Console, task_id: str) -> dict[str, Any]:
    task = await console.rt.ledger.get_task(task_id)
    if task is None:
        raise NotFound("no such task")
    events = await console.rt.ledger.events(task_id)
    activity = await console.rt.ledger.task_activity(task_id)
    return {
        "t": task,
        "events": events,
        "jobs": activity["jobs"],
        "notifications": activity["notifications"],
        "last_seq": events[-1].seq if events else 0,
    }


@page
async def task_page(request: Request) -> Response:
    console = _console(request)
    context = await _task_context(console, request.path_params["task_id"])
    return _show(request, "task.html", flash=None, **context)


@page
async def task_live(request: Request) -> Response:
    """The task page's panel, rendered again after each new event of the task."""
    console = _console(request)
    task_id = request.path_params["task_id"]
    if await console.rt.ledger.get_task(task_id) is None:
        raise NotFound("no such task")
    try:
        after = int(request.query_params.get("after", "0"))
    except ValueError:
        after = 0
    session = request.state.session
    return _stream(request, _task_events(console, session, task_id, after))


def _task_events(
    console: Console, session: auth.Session, task_id: str, after: int
) -> AsyncIterator[str]:
    async def read() -> tuple[list[str], Next]:
        nonlocal after
        if not await console.rt.ledger.events(task_id, after):
            return [], "wait"
        context = await _task_context(console, task_id)
        after = context["last_seq"]
        html = console.render_text("_task_panel.html", session=session, **context)
        return [f"event: panel\ndata: {json.dumps({'seq': after, 'html': html})}\n\n"], "wait"

    return follow(
        console.rt,
        f"task:{task_id}",
        read,
        poll_seconds=LIVE_POLL_SECONDS,
        max_seconds=LIVE_MAX_SECONDS,
    )


TaskAction = Callable[["Console", Task, str], Awaitable[str]]


async def _on_task(request: Request, act: TaskAction) -> Response:
    """A form on the task page: check the writer, act on the task as this session (``act``
    answers the message to show), and show the page again."""
    console = _console(request)
    await _writer_form(request)
    task_id = request.path_params["task_id"]
    task = await console.rt.ledger.get_task(task_id)
    if task is None:
        raise NotFound("no such task")
    flash = await act(console, task, "console:" + request.state.session.key_hash[:12])
    context = await _task_context(console, task_id)
    return _show(request, "task.html", flash=flash, **context)


async def _replay(console: Console, task: Task, who: str) -> str:
    if task.status is not Status.FAILED:
        return "Only a failed task can be replayed from the console."
    why = await replay_task(console.rt, task, {"by": who})
    return "Queued for archiving again." if why is None else f"Not replayed: {why}."


async def _redeliver(console: Console, task: Task, who: str) -> str:
    note = await console.rt.ledger.redeliver(task.id)
    if note is None:
        return "Nothing to redeliver: the task has not ended or has no notify_url."
    await console.rt.ledger.audit(task.id, "redelivered", {"by": who, "event_id": note.id})
    return f"Notification {note.id} queued for {note.url}."


@page
async def task_replay(request: Request) -> Response:
    return await _on_task(request, _replay)


@page
async def task_redeliver(request: Request) -> Response:
    return await _on_task(request, _redeliver)


# --- bulk actions -----------------------------------------------------------------------------


@page
async def bulk_confirm(request: Request) -> Response:
    """How many tasks the action will touch, and the form that does it (no change yet)."""
    console = _console(request)
    action = request.query_params.get("action", "replay")
    args = _filter_args(request.query_params)
    result = await bulk(console.rt, action, parse_filter(args), actor="console", dry_run=True)
    return _show(
        request,
        "bulk.html",
        action=action,
        args=args,
        result=result,
        as_of=repr(result.as_of),
        back="/ui/?" + urlencode(args),
        limit=MAX_BULK,
    )


@page
async def bulk_run(request: Request) -> Response:
    console = _console(request)
    form = await _writer_form(request)
    action = str(form.get("action") or "")
    args = {k: str(form[k]) for k in FILTER_KEYS if form.get(k)}
    if "as_of" not in args:
        raise Forbidden("confirm the count first")
    who = "console:" + request.state.session.key_hash[:12]
    result = await bulk(console.rt, action, parse_filter(args), actor=who, dry_run=False)
    args.pop("as_of")
    return _show(
        request,
        "bulk_done.html",
        action=action,
        result=result,
        back="/ui/?" + urlencode(args),
    )


# --- operations -------------------------------------------------------------------------------


@page
async def ops(request: Request) -> Response:
    console = _console(request)
    now = time.time()
    snap = await console.rt.ledger.ops_snapshot(now - 3600)
    return _show(
        request,
        "ops.html",
        s=snap,
        now=now,
        verify=console.failures_last_hour(),
        window_start=max(console.started, now - 3600),
    )


# --- images -----------------------------------------------------------------------------------


async def _object(request: Request) -> tuple[Console, Any, Any]:
    """The image a media route names, for a signed-in session: (console, destination, object)."""
    console = _console(request)
    auth.require_session(request, console.settings)
    task = await console.rt.ledger.get_task(request.path_params["task_id"])
    index = request.path_params["index"]
    if task is None:
        raise NotFound("no such task")
    for obj in task.objects:
        if obj.index == index:
            return console, console.rt.destination(task.destination), obj
    raise NotFound("no such image")


def _media_error(exc: ReceiverError) -> Response:
    return Response(
        f"{exc.code}: {exc.message}\n",
        status_code=exc.status if exc.status < 500 else 502,
        media_type="text/plain",
    )


async def thumbnail(request: Request) -> Response:
    try:
        console, dest, obj = await _object(request)
        data = await console.thumbs.get(dest, obj)
    except ReceiverError as exc:
        return _media_error(exc)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        log.info("no thumbnail for %s: %s", request.url.path, exc)
        return Response("not a decodable image\n", status_code=415, media_type="text/plain")
    return Response(data, media_type="image/webp", headers={"cache-control": IMMUTABLE})


async def full_image(request: Request) -> Response:
    try:
        console, dest, obj = await _object(request)
        try:
            url = await dest.presign(obj.key, console.settings.console.presign_seconds)
        except StoreError as exc:
            log.info("presign failed, streaming instead: %s", exc)
            url = None
        if url:
            return RedirectResponse(url, status_code=302, headers={"cache-control": "no-store"})
        headers = {"cache-control": IMMUTABLE, "content-security-policy": "sandbox"}
        if dest.type == "filesystem":
            return FileResponse(dest.uri(obj.key), media_type=obj.content_type, headers=headers)
        data = await dest.read(obj.key)
    except ReceiverError as exc:
        return _media_error(exc)
    return Response(data, media_type=obj.content_type, headers=headers)


# --- mounting ---------------------------------------------------------------------------------


class SecurityHeaders:
    """CSP without inline script, no framing, no sniffing, on every console response."""

    def __init__(self, app: ASGIApp, img_sources: list[str]) -> None:
        self.app = app
        img = " ".join(["'self'", "data:", *img_sources])
        self.csp = (
            "default-src 'none'; script-src 'self'; style-src 'self'; "
            f"img-src {img}; connect-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != b"content-security-policy"
                ]
                own = dict(message.get("headers", []))
                csp = self.csp
                if own.get(b"content-security-policy") == b"sandbox":
                    csp = "default-src 'none'; sandbox"  # a full image: never a document
                headers += [
                    (b"content-security-policy", csp.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _img_sources(settings: Settings) -> list[str]:
    """Where presigned image redirects may lead (the CSP's img-src)."""
    sources: set[str] = set()
    for dest in settings.destinations.values():
        if dest.type != "s3":
            continue
        if dest.endpoint_url:
            parts = urlsplit(dest.endpoint_url)
            sources.add(f"{parts.scheme}://{parts.netloc}")
            host = parts.hostname or ""
            if not host.replace(".", "").isdigit() and host != "localhost":
                sources.add(f"{parts.scheme}://*.{parts.netloc}")  # virtual-hosted buckets
        else:
            sources.add("https:")
    return sorted(sources)


def mount(settings: Settings) -> Mount:
    """``/ui`` with its routes, static files and security headers."""
    routes = [
        Route("/", gallery, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/live", live, methods=["GET"]),
        Route("/ops", ops, methods=["GET"]),
        Route("/bulk", bulk_confirm, methods=["GET"]),
        Route("/bulk", bulk_run, methods=["POST"]),
        Route("/tasks/{task_id}", task_page, methods=["GET"]),
        Route("/tasks/{task_id}/live", task_live, methods=["GET"]),
        Route("/tasks/{task_id}/replay", task_replay, methods=["POST"]),
        Route("/tasks/{task_id}/redeliver", task_redeliver, methods=["POST"]),
        Route("/thumbs/{task_id}/{index:int}.webp", thumbnail, methods=["GET"]),
        Route("/images/{task_id}/{index:int}", full_image, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    from starlette.routing import Router

    router = Router(routes=routes, redirect_slashes=True)
    return Mount("/ui", app=SecurityHeaders(router, _img_sources(settings)))
