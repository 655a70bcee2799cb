-- Statements only the PostgreSQL ledger runs, loaded beside queries.sql (same :name
-- parameters). Each connection of the group pool PREPAREs them once (planned once) and runs
-- them with EXECUTE; every parameter is CAST where it is used, so its type is known when it
-- is prepared (a NULL carries none of its own).
--
-- record_delivery and record_outcome are SqlLedger.record_outcome's transaction, each in one
-- statement, so the callbacks of a group commit reach the server together in one query
-- with BEGIN and COMMIT (one round trip for the group) instead of two to five round trips
-- per callback. They decide as the Python version does, in the same order: no task, nothing;
-- a callback for another provider task (mismatch), nothing; a delivery key seen before,
-- duplicate and nothing; a pending outcome, or a task no longer submitted, only the delivery
-- is kept. Each returns one row: the task as changed (or as read; NULLs when found is false)
-- and the flags the caller needs. Data-modifying CTEs share one snapshot and cannot see each
-- other's rows, so each step names the one before it through RETURNING.

-- name: record_delivery
-- A pending outcome: nothing but the delivery changes, so the task is read without a lock.
WITH task AS (
    SELECT * FROM tasks WHERE id = CAST(:id AS TEXT)
), allowed AS (
    SELECT id FROM task
    WHERE CAST(:provider_task_id AS TEXT) IS NULL OR provider_task_id IS NULL
       OR provider_task_id = CAST(:provider_task_id AS TEXT)
), delivery AS (
    INSERT INTO deliveries (provider, key, task_id, received_at)
    SELECT CAST(:provider AS TEXT), CAST(:key AS TEXT), id, CAST(:now AS DOUBLE PRECISION)
    FROM allowed WHERE CAST(:key AS TEXT) IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING key
), flags AS (
    SELECT EXISTS (SELECT 1 FROM task) AS found,
           EXISTS (SELECT 1 FROM allowed) AS allowed,
           EXISTS (SELECT 1 FROM delivery) AS fresh,
           FALSE AS changed,
           FALSE AS notified
)
SELECT r.*, f.* FROM flags AS f LEFT JOIN task AS r ON TRUE

-- name: record_outcome
-- A final outcome: :action says what it does to a submitted task, 'complete' (outcome,
-- inline images, event, archive job) or 'fail' (raw answer, failure, queued jobs dead,
-- event, notification). The task row is locked as it is read (FOR UPDATE), so the status
-- decided on is the latest committed one and no other transaction changes it before this
-- one commits: the updates below then apply exactly when go says so. Changes are announced
-- with pg_notify, delivered at commit.
WITH task AS (
    SELECT * FROM tasks WHERE id = CAST(:id AS TEXT) FOR UPDATE
), allowed AS (
    SELECT id, status FROM task
    WHERE CAST(:provider_task_id AS TEXT) IS NULL OR provider_task_id IS NULL
       OR provider_task_id = CAST(:provider_task_id AS TEXT)
), delivery AS (
    INSERT INTO deliveries (provider, key, task_id, received_at)
    SELECT CAST(:provider AS TEXT), CAST(:key AS TEXT), id, CAST(:now AS DOUBLE PRECISION)
    FROM allowed WHERE CAST(:key AS TEXT) IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING key
), go AS (
    SELECT id FROM allowed
    WHERE status = 'submitted'
      AND (CAST(:key AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM delivery))
), raw AS (
    INSERT INTO raw_responses (task_id, content_type, data, received_at)
    SELECT id, CAST(:raw_content_type AS TEXT), CAST(:raw AS BYTEA), CAST(:now AS DOUBLE PRECISION)
    FROM go WHERE CAST(:action AS TEXT) = 'fail' AND CAST(:raw AS BYTEA) IS NOT NULL
    ON CONFLICT (task_id) DO UPDATE SET content_type = excluded.content_type,
        data = excluded.data, received_at = excluded.received_at
), completed AS (
    UPDATE tasks
    SET status = 'completed', outcome = CAST(:outcome AS TEXT),
        completed_at = CAST(:now AS DOUBLE PRECISION), updated_at = CAST(:now AS DOUBLE PRECISION),
        provider_task_id = COALESCE(provider_task_id, CAST(:outcome_task_id AS TEXT)),
        next_poll_at = NULL
    WHERE id = (SELECT id FROM go) AND CAST(:action AS TEXT) = 'complete'
    RETURNING *
), failed AS (
    UPDATE tasks
    SET status = 'failed', failure_reason = CAST(:reason AS TEXT),
        failure_message = CAST(:message AS TEXT),
        outcome = COALESCE(CAST(:outcome AS TEXT), outcome),
        updated_at = CAST(:now AS DOUBLE PRECISION), next_poll_at = NULL
    WHERE id = (SELECT id FROM go) AND CAST(:action AS TEXT) = 'fail'
    RETURNING *
), changed AS (
    SELECT * FROM completed UNION ALL SELECT * FROM failed
), inline AS (
    INSERT INTO inline_images (task_id, idx, data)
    SELECT c.id, i.idx, i.data
    FROM completed AS c,
         unnest(CAST(:inline_idx AS INTEGER[]), CAST(:inline_data AS BYTEA[])) AS i (idx, data)
    ON CONFLICT DO NOTHING
), killed AS (
    UPDATE jobs SET state = 'dead', last_error = CAST(:message AS TEXT),
        updated_at = CAST(:now AS DOUBLE PRECISION)
    WHERE task_id = (SELECT id FROM failed) AND state IN ('queued', 'leased')
), event AS (
    INSERT INTO events (task_id, seq, status, at, data)
    SELECT c.id, COALESCE((SELECT MAX(seq) FROM events WHERE task_id = c.id), 0) + 1, c.status,
           CAST(:now AS DOUBLE PRECISION), CAST(:event AS TEXT)
    FROM changed AS c
), job AS (
    INSERT INTO jobs (task_id, state, attempts, deadline, next_attempt_at, created_at, updated_at)
    SELECT id, 'queued', 0, CAST(:deadline AS DOUBLE PRECISION), CAST(:now AS DOUBLE PRECISION),
           CAST(:now AS DOUBLE PRECISION), CAST(:now AS DOUBLE PRECISION)
    FROM completed
), notification AS (
    INSERT INTO notifications (id, task_id, event, url, state, attempts, next_attempt_at,
                               created_at)
    SELECT CAST(:nid AS TEXT), id, 'task.failed', notify_url, 'queued', 0,
           CAST(:now AS DOUBLE PRECISION), CAST(:now AS DOUBLE PRECISION)
    FROM failed WHERE notify_url IS NOT NULL
    RETURNING id
), wake AS (
    SELECT pg_notify(CAST(:channel AS TEXT), w.channel)
    FROM (SELECT 'task:' || id AS channel FROM changed
          UNION ALL SELECT 'jobs' FROM completed
          UNION ALL SELECT 'notify' FROM notification) AS w
), flags AS (
    SELECT EXISTS (SELECT 1 FROM task) AS found,
           EXISTS (SELECT 1 FROM allowed) AS allowed,
           EXISTS (SELECT 1 FROM delivery) AS fresh,
           EXISTS (SELECT 1 FROM changed) AS changed,
           EXISTS (SELECT 1 FROM notification) AS notified,
           (SELECT COUNT(*) FROM wake) AS woken
)
SELECT r.*, f.*
FROM flags AS f
LEFT JOIN (SELECT * FROM changed
           UNION ALL SELECT * FROM task WHERE NOT EXISTS (SELECT 1 FROM changed)) AS r ON TRUE
