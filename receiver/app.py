"""The Starlette application: routes, error handling, and the background loops it hosts."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from . import ui
from .api import bulk, events, hooks, openapi, ops, tasks
from .api.common import error_json, from_error
from .background import Background
from .config import Settings
from .errors import ReceiverError
from .middleware import RequestObserver
from .runtime import Runtime

log = logging.getLogger(__name__)


def routes() -> list[Route]:
    # Starlette tries routes in order: provider callbacks, the bulk of the traffic, first (no
    # other route's path overlaps theirs).
    return [
        Route("/v1/hooks/{provider}/{token}", hooks.task_hook, methods=["POST"]),
        Route("/v1/hooks/{provider}", hooks.account_hook, methods=["POST"]),
        Route("/v1/tasks", tasks.create_task, methods=["POST"]),
        Route("/v1/tasks", tasks.list_tasks, methods=["GET"]),
        Route("/v1/tasks/replay", bulk.bulk_replay, methods=["POST"]),
        Route("/v1/tasks/redeliver", bulk.bulk_redeliver, methods=["POST"]),
        Route("/v1/tasks/{task_id}", tasks.get_task, methods=["GET"]),
        Route("/v1/tasks/{task_id}/events", events.task_events, methods=["GET"]),
        Route("/v1/tasks/{task_id}/replay", tasks.replay_task, methods=["POST"]),
        Route("/v1/tasks/{task_id}/redeliver", tasks.redeliver_task, methods=["POST"]),
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_endpoint, methods=["GET"]),
        Route("/docs", openapi.docs_endpoint, methods=["GET"]),
    ]


async def _receiver_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ReceiverError)
    return from_error(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_json(exc.status_code, code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_json(500, "internal", "internal error")


def create_app(
    settings: Settings, *, runtime: Runtime | None = None, background: bool = True
) -> Starlette:
    rt = runtime or Runtime(settings)
    console = ui.Console(settings, rt) if settings.console.enabled else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await rt.open()
        loops = Background(rt) if background else None
        if loops:
            loops.start()
        if console:
            console.start()
        try:
            yield
        finally:
            app.state.draining = True
            if console:
                await console.stop()
            if loops:
                await loops.stop()
            await rt.close()
            log.info("stopped: background loops drained, ledger closed")

    middleware = [Middleware(RequestObserver, access_log=settings.server.access_log)]
    if settings.server.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.server.cors_origins,
                allow_methods=["GET"],
                allow_headers=["authorization"],
            )
        )
    all_routes: list[BaseRoute] = [*routes()]
    if console:
        all_routes.append(ui.mount(settings))
    app = Starlette(
        routes=all_routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ReceiverError: _receiver_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.runtime = rt
    app.state.console = console
    app.state.draining = False
    return app
