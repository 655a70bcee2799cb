"""OpenTelemetry tracing, optional: ``pip install 'flux-receiver[otel]'``.

Everything here is a no-op until a tracer is installed, either from the standard ``OTEL_*``
environment variables by :func:`setup` (the CLI calls it) or by a test with :func:`install`.
Without the extra the OpenTelemetry packages are never imported, so the cost of a span is one
``None`` check. Callers pass only values that are safe to export: route templates, provider and
destination names, task ids, sizes; never a URL, a token, a header or a body.

A task's trace context (W3C ``traceparent``) is stored with the task at submission, and the
callback, the archive job, the poll and the notification start their spans with it as parent,
so one trace shows a task from ``POST /v1/tasks`` to archived, whichever replica did each step.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

log = logging.getLogger(__name__)

try:  # the [otel] extra
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised in environments without the extra
    AVAILABLE = False

Attributes = Mapping[str, Any]  # str, int, float or bool values

_tracer: Any = None  # opentelemetry.trace.Tracer once installed
_propagator: Any = TraceContextTextMapPropagator() if AVAILABLE else None
_TRUE = ("1", "true", "yes", "on")


def enabled() -> bool:
    """True when spans are recorded; callers skip work done only for tracing otherwise."""
    return _tracer is not None


def install(provider: Any | None) -> None:
    """Use ``provider`` (an SDK ``TracerProvider``) for receiver's spans; None turns tracing
    off. Tests install one with an in-memory exporter; :func:`setup` installs the env's."""
    global _tracer
    if provider is None or not AVAILABLE:
        _tracer = None
        return
    from . import __version__

    _tracer = provider.get_tracer("receiver", __version__)


def setup(environ: Mapping[str, str] | None = None) -> bool:
    """Configure tracing from the standard ``OTEL_*`` variables, when the extra is installed
    and an exporter is asked for (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER``); the SDK reads the
    rest itself (service name, resource attributes, sampler, batch sizes, headers).
    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off. True if enabled."""
    env = os.environ if environ is None else environ
    wanted = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    asked = bool(
        wanted
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    if not asked or wanted == "none" or env.get("OTEL_SDK_DISABLED", "").lower() in _TRUE:
        return False
    if not AVAILABLE:
        log.warning("OTEL_* is set but tracing is not installed (flux-receiver[otel]); it is off")
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("opentelemetry-sdk is not installed; tracing is off")
        return False
    from . import __version__

    attributes = {"service.version": __version__}
    named = "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not env.get("OTEL_SERVICE_NAME") and not named:
        attributes["service.name"] = "receiver"  # else the SDK's "unknown_service"
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in [w.strip() for w in (wanted or "otlp").split(",") if w.strip()]:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console)", name)
    otel_trace.set_tracer_provider(provider)
    install(provider)
    log.info("tracing on (OpenTelemetry)")
    return True


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTLP over gRPC needs opentelemetry-exporter-otlp-proto-grpc; using HTTP")
        else:
            return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


# --- trace context --------------------------------------------------------------------------


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to store with a task."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def current_trace_id() -> str | None:
    """The current trace id (32 hex digits), for log lines."""
    if _tracer is None:
        return None
    ctx = otel_trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def inject(headers: dict[str, str]) -> None:
    """Add ``traceparent`` for the current span to outgoing headers (our notifications)."""
    if _tracer is not None:
        _propagator.inject(headers)


def _context(traceparent: str | None) -> Any:
    if not traceparent:
        return None
    ctx = _propagator.extract({"traceparent": traceparent})
    return ctx if otel_trace.get_current_span(ctx).get_span_context().is_valid else None


# --- spans ------------------------------------------------------------------------------------


class Span:
    """What callers may do with a span: add attributes, mark an error. No-op when off."""

    __slots__ = ("_span",)

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def set(self, key: str, value: str | int | float | bool | None) -> None:
        if self._span is not None and value is not None:
            self._span.set_attribute(key, value)

    def error(self, kind: str) -> None:
        """Mark the span failed with a short, fixed description (never a message)."""
        if self._span is not None:
            self._span.set_attribute("error.type", kind)
            self._span.set_status(Status(StatusCode.ERROR, kind))


_NOOP = Span()


class _Off:
    """The context of every span while tracing is off: one shared object, no generator (a
    callback opens four spans, and a generator-based context costs a few microseconds each)."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return _NOOP

    def __exit__(self, *exc: object) -> None:
        return None


_OFF = _Off()


def span(
    name: str,
    attributes: Attributes | None = None,
    *,
    parent: str | None = None,
    kind: str = "internal",
) -> AbstractContextManager[Span]:
    """A span as a child of ``parent`` (a stored traceparent) or else of the current span.
    Exceptions mark it failed by their type."""
    if _tracer is None:
        return _OFF
    return _span(name, attributes, parent, kind)


@contextlib.contextmanager
def _span(
    name: str, attributes: Attributes | None, parent: str | None, kind: str
) -> Iterator[Span]:
    if parent is not None:
        # The current span (e.g. the HTTP request) is linked, the task's trace is the parent.
        ctx = _context(parent)
        here = otel_trace.get_current_span().get_span_context()
        links = [Link(here)] if ctx is not None and here.is_valid else []
    else:
        links, ctx = [], None
    span_kind = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT}.get(kind, SpanKind.INTERNAL)
    with _tracer.start_as_current_span(
        name,
        context=ctx,
        kind=span_kind,
        attributes=dict(attributes or {}),
        links=links,
        record_exception=False,  # exception messages may quote URLs; the type is enough
        set_status_on_exception=False,
    ) as current:
        wrapped = Span(current)
        try:
            yield wrapped
        except BaseException as exc:
            wrapped.error(type(exc).__name__)
            raise


def child_span(name: str, attributes: Attributes | None = None) -> AbstractContextManager[Span]:
    """A span only inside a traced operation: the ledger calls of the background loops'
    idle polling would otherwise each start a trace of their own, every second."""
    if _tracer is None or not otel_trace.get_current_span().get_span_context().is_valid:
        return _OFF
    return _span(name, attributes, None, "internal")


def server_span(
    method: str, route: str, headers: Mapping[str, str]
) -> AbstractContextManager[Span]:
    """The span of one HTTP request, named by its route template, continuing the caller's
    trace when it sent a ``traceparent``."""
    if _tracer is None:
        return _OFF
    return _server_span(method, route, headers)


@contextlib.contextmanager
def _server_span(method: str, route: str, headers: Mapping[str, str]) -> Iterator[Span]:
    parent = _propagator.extract({k: v for k, v in headers.items() if k == "traceparent"})
    token = otel_context.attach(parent)
    try:
        with _span(
            f"{method} {route}" if route != "unmatched" else method,
            {"http.request.method": method, "http.route": route},
            None,
            "server",
        ) as current:
            yield current
    finally:
        otel_context.detach(token)
