"""Liveness, readiness and metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..signatures import probe_answer
from ..views import HealthView, ReadyView
from .common import error_json, render, runtime


async def healthz(request: Request) -> Response:
    nonce = request.query_params.get("probe")
    if nonce and len(nonce) <= 64 and nonce.isascii():
        keys = runtime(request).settings.secret_keys
        return render(HealthView(status="ok", probe=probe_answer(keys, nonce)))
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    rt = runtime(request)
    if getattr(request.app.state, "draining", False):
        return error_json(503, "draining", "shutting down")
    await rt.ledger.ping()  # LedgerUnavailable is answered 503 by the app
    reasons = rt.troubles.reasons()
    view = ReadyView(status="degraded", reasons=reasons) if reasons else ReadyView(status="ready")
    # Degraded is still 200: taking the replica out of rotation would not mend a store.
    return JSONResponse(view.model_dump(mode="json", exclude_none=True))


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
