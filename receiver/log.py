"""JSON logs with task id and provider; secrets, tokens and signed URL queries never appear."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from typing import Any

from . import tracing

# The id of the HTTP request being served (set by receiver.middleware), stamped on every log
# line written while serving it and on the ledger events it records.
REQUEST_ID: ContextVar[str | None] = ContextVar("receiver_request_id", default=None)
# Fields the request's handlers add to its access line (a fresh dict per request while the
# access log is on, None otherwise): one line per callback instead of two.
ACCESS_FIELDS: ContextVar[dict[str, Any] | None] = ContextVar(
    "receiver_access_fields", default=None
)

# URL query strings (signed URLs), hook tokens in paths, bearer/whsec secrets. Each pattern
# with the literals one of which any match contains: a line holding none of them cannot match,
# so its regex is not run (most lines hold none).
_SCRUB = [
    (("://",), re.compile(r"(https?://[^\s?\"']+)\?[^\s\"']*"), r"\1?<redacted>"),
    (("/v1/hooks/",), re.compile(r"(/v1/hooks/[a-z0-9_-]+/)[A-Za-z0-9_.\-]+"), r"\1<token>"),
    (
        ("whsec_", "wbs_", "Bearer "),
        re.compile(r"(whsec_|wbs_|Bearer )[A-Za-z0-9+/=_\-.]+"),
        r"\1<redacted>",
    ),
    (("access_token=",), re.compile(r"(access_token=)[^&\s\"']+"), r"\1<redacted>"),
]
_FIELDS = (
    "request_id",
    "trace_id",
    "task_id",
    "provider",
    "job_id",
    "delivery",
    "status",
    "reason",
    "event",
    # the access log (receiver.middleware)
    "method",
    "route",
    "http_status",
    "duration_ms",
    "bytes",
)


class ContextFilter(logging.Filter):
    """Stamps each record with the request id and trace id of the work being done, so a line
    from deep inside a request (a provider call, the ledger) still names its request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = REQUEST_ID.get()
            if request_id is not None:
                record.request_id = request_id
        if getattr(record, "trace_id", None) is None:
            trace_id = tracing.current_trace_id()
            if trace_id is not None:
                record.trace_id = trace_id
        return True


def scrub(text: str) -> str:
    for needles, pattern, repl in _SCRUB:
        for needle in needles:
            if needle in text:
                text = pattern.sub(repl, text)
                break
    return text


def on_access_line(**fields: Any) -> bool:
    """Put ``fields`` (names from the formatters' list) on the current request's access line;
    False when no access line will be written, so the caller logs them on a line of its own."""
    notes = ACCESS_FIELDS.get()
    if notes is None:
        return False
    notes.update(fields)
    return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        attrs = record.__dict__  # the extra fields are plain instance attributes
        for name in _FIELDS:
            value = attrs.get(name)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(data)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(
            f"{n}={getattr(record, n)}" for n in _FIELDS if getattr(record, n, None) is not None
        )
        line = f"{record.levelname.lower():7} {record.name}: {record.getMessage()} {extra}"
        if record.exc_info:  # the traceback is what an operator needs to report a crash
            line = line.rstrip() + "\n" + self.formatException(record.exc_info)
        return scrub(line)


def setup(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Neither formatter prints thread or process: not collecting them saves a getpid() system
    # call and two lookups on every line (logging's documented switches).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for noisy in ("httpx", "httpcore", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn's access log prints request paths, which hold hook tokens: scrubbed by our handler.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
