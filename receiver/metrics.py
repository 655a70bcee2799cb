"""Prometheus metrics, registered once per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter("receiver_deliveries_total", "Callbacks received", ["provider", "outcome"])
VERIFY_FAILURES = Counter(
    "receiver_verification_failures_total", "Callbacks refused", ["provider", "cause"]
)
QUEUE_DEPTH = Gauge("receiver_queue_depth", "Archive jobs not yet done")
OLDEST_JOB_AGE = Gauge("receiver_oldest_job_age_seconds", "Age of the oldest due archive job")
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
