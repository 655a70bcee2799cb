-- Named statements shared by the SQLite and PostgreSQL ledgers. Parameters are :name;
-- {skip_locked} becomes FOR UPDATE SKIP LOCKED on PostgreSQL and nothing on SQLite, where
-- BEGIN IMMEDIATE already serializes writers.

-- name: insert_task
INSERT INTO tasks (id, provider, model, prompt, params, destination, metadata, notify_url,
                   status, created_at, updated_at, idempotency_key, next_poll_at, traceparent)
VALUES (:id, :provider, :model, :prompt, :params, :destination, :metadata, :notify_url,
        'submitted', :now, :now, :idempotency_key, :submit_by, :traceparent)
ON CONFLICT DO NOTHING
RETURNING id

-- name: task_by_key
SELECT * FROM tasks WHERE idempotency_key = :key

-- name: get_task
SELECT * FROM tasks WHERE id = :id

-- name: find_task
SELECT * FROM tasks WHERE provider = :provider AND provider_task_id = :provider_task_id
ORDER BY created_at DESC LIMIT 1

-- name: mark_submitted
UPDATE tasks
SET provider_task_id = COALESCE(:provider_task_id, provider_task_id), submitted_at = :now,
    provider_state = COALESCE(:provider_state, provider_state),
    next_poll_at = CASE WHEN status = 'submitted'
        THEN CAST(:next_poll_at AS DOUBLE PRECISION) ELSE NULL END,
    updated_at = :now
WHERE id = :id
RETURNING *

-- name: insert_event
INSERT INTO events (task_id, seq, status, at, data)
SELECT :task_id, COALESCE(MAX(seq), 0) + 1, :status, :now, :data FROM events WHERE task_id = :task_id

-- name: events
SELECT * FROM events WHERE task_id = :task_id AND seq > :after ORDER BY seq

-- name: insert_delivery
INSERT INTO deliveries (provider, key, task_id, received_at)
VALUES (:provider, :key, :task_id, :now)
ON CONFLICT DO NOTHING
RETURNING key

-- name: complete_task
UPDATE tasks
SET status = 'completed', outcome = :outcome, completed_at = :now, updated_at = :now,
    provider_task_id = COALESCE(provider_task_id, :provider_task_id), next_poll_at = NULL
WHERE id = :id AND status = 'submitted'
RETURNING *

-- name: fail_task
UPDATE tasks
SET status = 'failed', failure_reason = :reason, failure_message = :message,
    outcome = COALESCE(:outcome, outcome), updated_at = :now, next_poll_at = NULL
WHERE id = :id AND status IN ('submitted', 'completed')
RETURNING *

-- name: archive_task
UPDATE tasks
SET status = 'archived', objects = :objects, archived_at = :now, updated_at = :now
WHERE id = :id AND status = 'completed'
RETURNING *

-- name: requeue_task
UPDATE tasks
SET status = 'completed', outcome = :outcome, objects = '[]', failure_reason = NULL,
    failure_message = NULL, archived_at = NULL, completed_at = :now, updated_at = :now
WHERE id = :id
RETURNING *

-- name: insert_inline
INSERT INTO inline_images (task_id, idx, data) VALUES (:task_id, :idx, :data)
ON CONFLICT DO NOTHING

-- name: inline_image
SELECT data FROM inline_images WHERE task_id = :task_id AND idx = :idx

-- name: insert_raw
INSERT INTO raw_responses (task_id, content_type, data, received_at)
VALUES (:task_id, :content_type, :data, :now)
ON CONFLICT (task_id) DO UPDATE SET content_type = excluded.content_type, data = excluded.data,
    received_at = excluded.received_at

-- name: raw_response
SELECT content_type, data FROM raw_responses WHERE task_id = :task_id

-- name: insert_job
INSERT INTO jobs (task_id, state, attempts, deadline, next_attempt_at, created_at, updated_at)
VALUES (:task_id, 'queued', 0, :deadline, :now, :now, :now)

-- name: claim_jobs
UPDATE jobs
SET state = 'leased', lease_owner = :owner, lease_expires_at = :until,
    attempts = attempts + 1, updated_at = :now
WHERE id IN (
    SELECT id FROM jobs
    WHERE state IN ('queued', 'leased')
      AND CASE state WHEN 'queued' THEN next_attempt_at ELSE lease_expires_at END <= :now
    ORDER BY next_attempt_at, id
    LIMIT :limit
    {skip_locked}
)
RETURNING id, task_id, attempts, deadline, lease_owner, lease_expires_at

-- name: extend_lease
UPDATE jobs SET lease_expires_at = :until, updated_at = :now
WHERE id = :id AND lease_owner = :owner AND state = 'leased'
RETURNING id

-- name: end_job
UPDATE jobs SET state = :state, lease_owner = NULL, last_error = :error, updated_at = :now
WHERE id = :id AND lease_owner = :owner AND state = 'leased'
RETURNING task_id

-- name: retry_job
UPDATE jobs
SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, last_error = :error,
    next_attempt_at = :due, updated_at = :now
WHERE id = :id AND lease_owner = :owner AND state = 'leased'

-- name: release_jobs
UPDATE jobs
SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = :now,
    attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at = :now
WHERE lease_owner = :owner AND state = 'leased'

-- name: kill_queued_jobs
UPDATE jobs SET state = 'dead', last_error = :error, updated_at = :now
WHERE task_id = :task_id AND state IN ('queued', 'leased')

-- name: queue_depth
SELECT COUNT(*) AS depth, MIN(CASE WHEN next_attempt_at <= :now THEN next_attempt_at END) AS oldest
FROM jobs WHERE state IN ('queued', 'leased')

-- name: backlog_jobs
SELECT j.state AS state, t.provider AS provider, COUNT(*) AS n, MIN(j.created_at) AS oldest,
       MIN(CASE WHEN j.next_attempt_at <= :now THEN j.next_attempt_at END) AS due
FROM jobs j JOIN tasks t ON t.id = j.task_id
WHERE j.state IN ('queued', 'leased')
GROUP BY j.state, t.provider

-- name: backlog_notifications
SELECT state, COUNT(*) AS n, MIN(created_at) AS oldest
FROM notifications WHERE state IN ('queued', 'leased') GROUP BY state

-- name: backlog_submitted
SELECT provider, COUNT(*) AS n, MIN(created_at) AS oldest
FROM tasks WHERE status = 'submitted' GROUP BY provider

-- name: job_of_task
SELECT state, attempts, last_error, next_attempt_at FROM jobs
WHERE task_id = :id ORDER BY id DESC LIMIT 1

-- name: tasks_to_poll
SELECT * FROM tasks
WHERE status = 'submitted' AND next_poll_at IS NOT NULL AND next_poll_at <= :now
ORDER BY next_poll_at LIMIT :limit

-- name: claim_submission
UPDATE tasks SET next_poll_at = :until, updated_at = :now
WHERE id = :id AND status = 'submitted' AND submitted_at IS NULL
  AND next_poll_at IS NOT NULL AND next_poll_at <= :now
RETURNING id

-- name: schedule_poll
UPDATE tasks SET next_poll_at = :next_poll_at, poll_attempts = poll_attempts + 1,
    updated_at = :now
WHERE id = :id

-- name: insert_notification
INSERT INTO notifications (id, task_id, event, url, state, attempts, next_attempt_at, created_at)
SELECT :nid, id, :event, notify_url, 'queued', 0, :now, :now
FROM tasks WHERE id = :task_id AND notify_url IS NOT NULL
RETURNING id, task_id, event, url, attempts, created_at

-- name: claim_notifications
UPDATE notifications
SET state = 'leased', lease_owner = :owner, lease_expires_at = :until, attempts = attempts + 1
WHERE id IN (
    SELECT id FROM notifications
    WHERE state IN ('queued', 'leased')
      AND CASE state WHEN 'queued' THEN next_attempt_at ELSE lease_expires_at END <= :now
    ORDER BY next_attempt_at
    LIMIT :limit
    {skip_locked}
)
RETURNING id, task_id, event, url, attempts, created_at, lease_owner

-- name: finish_notification
UPDATE notifications SET state = 'done', lease_owner = NULL
WHERE id = :id AND lease_owner = :owner

-- name: retry_notification
UPDATE notifications
SET state = :state, lease_owner = NULL, lease_expires_at = NULL, last_error = :error,
    next_attempt_at = :due
WHERE id = :id AND lease_owner = :owner

-- name: purge_deliveries
DELETE FROM deliveries WHERE received_at < :before

-- name: requeue_failed_task
UPDATE tasks
SET status = 'completed', outcome = :outcome, objects = '[]', failure_reason = NULL,
    failure_message = NULL, archived_at = NULL, completed_at = :now, updated_at = :now
WHERE id = :id AND status = 'failed'
RETURNING *

-- name: task_jobs
SELECT id, state, attempts, last_error, next_attempt_at, created_at, updated_at
FROM jobs WHERE task_id = :task_id ORDER BY id

-- name: task_notifications
SELECT id, event, url, state, attempts, last_error, next_attempt_at, created_at
FROM notifications WHERE task_id = :task_id ORDER BY created_at

-- name: retrying_jobs
SELECT j.task_id, j.attempts, j.last_error, j.next_attempt_at, t.provider
FROM jobs j JOIN tasks t ON t.id = j.task_id
WHERE j.state = 'queued' AND j.attempts > 0
ORDER BY j.next_attempt_at LIMIT :limit

-- name: retrying_count
SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued' AND attempts > 0

-- name: deliveries_since
SELECT provider, COUNT(*) AS n FROM deliveries WHERE received_at >= :since GROUP BY provider

-- name: failures_since
SELECT failure_reason AS reason, COUNT(*) AS n FROM tasks
WHERE updated_at >= :since AND status = 'failed' GROUP BY failure_reason

-- name: notification_backlog
SELECT state, COUNT(*) AS n, MIN(created_at) AS oldest FROM notifications
WHERE state IN ('queued', 'leased', 'dead') GROUP BY state

-- name: purge_jobs
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE state IN ('done', 'dead') AND updated_at < :before LIMIT :batch
)

-- name: purge_notifications
DELETE FROM notifications WHERE id IN (
    SELECT id FROM notifications
    WHERE state IN ('done', 'dead') AND created_at < :before LIMIT :batch
)

-- name: purge_events
DELETE FROM events WHERE task_id IN (
    SELECT id FROM tasks
    WHERE updated_at >= :after AND updated_at < :before AND status IN ('archived', 'failed')
      AND EXISTS (
        SELECT 1 FROM events e WHERE e.task_id = tasks.id
    )
    LIMIT :batch
)
