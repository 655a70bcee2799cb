"""Liveness, readiness and metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from ..views import HealthView, ReadyView
from .common import error_json, render, runtime


async def healthz(request: Request) -> Response:
    return render(HealthView(status="ok"))


async def readyz(request: Request) -> Response:
    rt = runtime(request)
    if getattr(request.app.state, "draining", False):
        return error_json(503, "draining", "shutting down")
    await rt.ledger.ping()  # LedgerUnavailable is answered 503 by the app
    reasons = rt.troubles.reasons()
    if reasons:  # still ready (200): taking it out of rotation would not mend a store
        return render(ReadyView(status="degraded", reasons=reasons))
    return render(ReadyView(status="ready"))


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
