"""Prometheus metrics, registered once per process.

Label values come only from configuration (destination and provider names), from the code
(route templates, ledger operations) or from fixed sets (outcomes, states, HTTP methods and
status codes), never from a request: a path, a token or an unknown name could otherwise grow
the series without bound or put a secret on a dashboard. The gauges fed from the ledger
(queue depth, backlog ages) describe the whole ledger, so every replica reports the same
value: aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import functools
import platform
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info

from . import __version__

DELIVERIES = Counter("receiver_deliveries_total", "Callbacks received", ["provider", "outcome"])
VERIFY_FAILURES = Counter(
    "receiver_verification_failures_total", "Callbacks refused", ["provider", "cause"]
)
QUEUE_DEPTH = Gauge("receiver_queue_depth", "Archive jobs not yet done, by state", ["state"])
OLDEST_JOB_AGE = Gauge("receiver_oldest_job_age_seconds", "Age of the oldest due archive job")
OLDEST_UNFINISHED_JOB = Gauge(
    "receiver_oldest_unfinished_job_seconds",
    "Time since the oldest unfinished archive job was enqueued (its result URL ages with it)",
    ["provider"],
)
NOTIFY_BACKLOG = Gauge(
    "receiver_notifications_pending", "Notifications not yet delivered, by state", ["state"]
)
OLDEST_NOTIFICATION = Gauge(
    "receiver_oldest_notification_seconds", "Age of the oldest notification not yet delivered"
)
SUBMITTED_TASKS = Gauge(
    "receiver_submitted_tasks", "Tasks waiting for their provider's result", ["provider"]
)
OLDEST_SUBMITTED = Gauge(
    "receiver_oldest_submitted_task_seconds",
    "Age of the oldest task still waiting for its provider's result",
    ["provider"],
)
PROVIDER_GRACE = Gauge(
    "receiver_provider_callback_grace_seconds",
    "How long a task waits for a callback before the reconciler polls (configured providers)",
    ["provider"],
)
PROVIDER_URL_LIFETIME = Gauge(
    "receiver_provider_url_lifetime_seconds",
    "How long the provider's result URLs live (configured providers)",
    ["provider"],
)
ARCHIVE_LATENCY = Histogram(
    "receiver_archive_seconds",
    "Completion (callback) to durable image and sidecar",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600),
)
ARCHIVED_BYTES = Counter("receiver_archived_bytes_total", "Image bytes archived", ["destination"])
ARCHIVED_OBJECTS = Counter("receiver_archived_objects_total", "Images archived", ["destination"])
JOB_OUTCOMES = Counter("receiver_jobs_total", "Archive job attempts", ["outcome"])
NOTIFICATIONS = Counter("receiver_notifications_total", "Notifications sent", ["outcome"])
POLLS = Counter("receiver_polls_total", "Provider polls", ["provider", "outcome"])
RESUBMISSIONS = Counter(
    "receiver_resubmissions_total",
    "Tasks submitted again after an interrupted submission",
    ["provider"],
)

# --- HTTP ---------------------------------------------------------------------------------------

HTTP_DURATION = Histogram(
    "receiver_http_request_duration_seconds",
    "HTTP requests by route template, method and status, first byte in to last byte out",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HTTP_IN_FLIGHT = Gauge("receiver_http_requests_in_flight", "HTTP requests being served")

# --- the path of a task -------------------------------------------------------------------------

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LEDGER_TX = Histogram(
    "receiver_ledger_transaction_seconds",
    "Ledger transactions by operation and outcome (ok, unavailable, error)",
    ["backend", "operation", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
FETCH_SECONDS = Histogram(
    "receiver_fetch_seconds",
    "Downloads of results by provider, destination and outcome (ok, expired, refused, error)",
    ["provider", "destination", "outcome"],
    buckets=_SECONDS,
)
FETCH_BYTES = Counter("receiver_fetch_bytes_total", "Bytes downloaded", ["provider", "destination"])
STORE_SECONDS = Histogram(
    "receiver_store_seconds",
    "Writes to destinations by kind (image, sidecar, xmp) and outcome (ok, exists, error)",
    ["destination", "kind", "outcome"],
    buckets=_SECONDS,
)
STORE_BYTES = Counter("receiver_store_bytes_total", "Bytes written", ["destination", "kind"])

BUILD = Info("receiver_build", "The running receiver")
BUILD.info({"version": __version__, "python": platform.python_version()})


@functools.lru_cache(maxsize=256)
def delivered(provider: str, outcome: str) -> Any:
    """The :data:`DELIVERIES` child for a provider the code knows and a fixed outcome, looked
    up once (``labels()`` takes a lock and builds its key on every call)."""
    return DELIVERIES.labels(provider, outcome)


def provider_label(name: str) -> str:
    """A provider name as a label: one the code knows, else ``other``."""
    from .providers import REGISTRY

    return name if name in REGISTRY else "other"
