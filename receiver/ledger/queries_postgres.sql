-- Statements only the PostgreSQL ledger runs, loaded beside queries.sql (same :name
-- parameters). Each connection of the group pool PREPAREs them once (planned once) and runs
-- them with EXECUTE; every parameter is CAST where it is used, so its type is known when it
-- is prepared.

-- name: record_deliveries
-- SqlLedger.record_outcome's transaction for a group of callbacks with a pending outcome,
-- in one statement (record_outcomes below says how groups are sent): nothing but their
-- deliveries changes, so the tasks are read without a lock and nothing else is touched
-- (each table a statement names costs it at every run, rows or none).
WITH input AS (
    SELECT e.n, e.v->>'id' AS id, e.v->>'provider' AS provider, e.v->>'key' AS key,
           e.v->>'provider_task_id' AS provider_task_id
    FROM jsonb_array_elements(CAST(:batch AS JSONB)) WITH ORDINALITY AS e (v, n)
), task AS (
    -- One index lookup per callback (OFFSET 0 keeps the subquery apart): planned once for
    -- any batch, the join would otherwise be costed for a hundred rows of input (the
    -- planner's guess for a JSON array) and may scan the whole table.
    SELECT i.n, t.* FROM input AS i,
        LATERAL (SELECT * FROM tasks WHERE tasks.id = i.id OFFSET 0) AS t
), allowed AS (
    SELECT t.n, t.id FROM task AS t JOIN input AS i USING (n)
    WHERE i.provider_task_id IS NULL OR t.provider_task_id IS NULL
       OR t.provider_task_id = i.provider_task_id
), delivery AS (
    INSERT INTO deliveries (provider, key, task_id, received_at)
    SELECT i.provider, i.key, a.id, CAST(:now AS DOUBLE PRECISION)
    FROM allowed AS a JOIN input AS i USING (n)
    WHERE i.key IS NOT NULL
    ORDER BY i.provider, i.key
    ON CONFLICT DO NOTHING
    RETURNING provider, key
), fresh AS (
    SELECT i.n FROM input AS i JOIN delivery AS d ON d.provider = i.provider AND d.key = i.key
)
SELECT r.*,
       r.id IS NOT NULL AS found,
       i.n IN (SELECT n FROM allowed) AS allowed,
       i.n IN (SELECT n FROM fresh) AS fresh,
       FALSE AS changed,
       FALSE AS notified
FROM input AS i LEFT JOIN task AS r ON r.n = i.n
ORDER BY i.n

-- name: record_outcomes
-- SqlLedger.record_outcome's transaction for a group of callbacks with a final outcome, in
-- one statement: with record_deliveries, a group commit is one query and one round trip
-- (BEGIN, these, COMMIT) instead of two to five round trips per callback. :batch is a JSON
-- array, one object per callback (SqlLedger._outcome_statement). The caller puts callbacks
-- that touch the same task or delivery key in separate statements, in order, so the rows of
-- one statement never meet and each is decided as the Python version decides one callback,
-- in the same order: no task, nothing; a callback for another provider task (mismatch),
-- nothing; a delivery key seen before, duplicate and nothing; a task no longer submitted,
-- only the delivery is kept; otherwise the action: 'complete' (outcome, inline images,
-- event, archive job) or 'fail' (raw answer, failure, queued jobs dead, event,
-- notification). Each task is locked as it is read (FOR UPDATE: the latest committed
-- version, which nobody else changes before this commits), so the updates apply exactly
-- when go says so. One row comes back per callback, in order: the task as changed (or as
-- read; NULLs when found is false) and the flags the caller needs. Data-modifying CTEs share
-- one snapshot and cannot see each other's rows, so each step names the one before it
-- through RETURNING. pg_notify is delivered at commit.
WITH input AS (
    SELECT e.n, e.v->>'id' AS id, e.v->>'provider' AS provider, e.v->>'key' AS key,
           e.v->>'provider_task_id' AS provider_task_id, e.v->>'action' AS action,
           e.v->>'outcome' AS outcome, e.v->>'outcome_task_id' AS outcome_task_id,
           e.v->>'reason' AS reason, e.v->>'message' AS message,
           decode(e.v->>'raw', 'base64') AS raw, e.v->>'raw_content_type' AS raw_content_type,
           e.v->'inline' AS inline, e.v->>'event' AS event,
           CAST(e.v->>'deadline' AS DOUBLE PRECISION) AS deadline, e.v->>'nid' AS nid
    FROM jsonb_array_elements(CAST(:batch AS JSONB)) WITH ORDINALITY AS e (v, n)
), task AS (
    -- One index lookup per callback, as in record_deliveries, locking the row it reads; in
    -- the order of the task ids, so that two replicas' groups lock in the same order.
    SELECT i.n, t.* FROM (SELECT * FROM input ORDER BY id) AS i,
        LATERAL (SELECT * FROM tasks WHERE tasks.id = i.id FOR UPDATE OFFSET 0) AS t
), allowed AS (
    SELECT t.n, t.id, t.status FROM task AS t JOIN input AS i USING (n)
    WHERE i.provider_task_id IS NULL OR t.provider_task_id IS NULL
       OR t.provider_task_id = i.provider_task_id
), delivery AS (
    INSERT INTO deliveries (provider, key, task_id, received_at)
    SELECT i.provider, i.key, a.id, CAST(:now AS DOUBLE PRECISION)
    FROM allowed AS a JOIN input AS i USING (n)
    WHERE i.key IS NOT NULL
    ORDER BY i.provider, i.key
    ON CONFLICT DO NOTHING
    RETURNING provider, key
), fresh AS (
    SELECT i.n FROM input AS i JOIN delivery AS d ON d.provider = i.provider AND d.key = i.key
), go AS (
    SELECT a.n, a.id FROM allowed AS a JOIN input AS i USING (n)
    WHERE a.status = 'submitted' AND i.action IN ('complete', 'fail')
      AND (i.key IS NULL OR a.n IN (SELECT n FROM fresh))
), raw AS (
    INSERT INTO raw_responses (task_id, content_type, data, received_at)
    SELECT g.id, i.raw_content_type, i.raw, CAST(:now AS DOUBLE PRECISION)
    FROM go AS g JOIN input AS i USING (n)
    WHERE i.action = 'fail' AND i.raw IS NOT NULL
    ON CONFLICT (task_id) DO UPDATE SET content_type = excluded.content_type,
        data = excluded.data, received_at = excluded.received_at
), completed AS (
    UPDATE tasks AS t
    SET status = 'completed', outcome = i.outcome,
        completed_at = CAST(:now AS DOUBLE PRECISION), updated_at = CAST(:now AS DOUBLE PRECISION),
        provider_task_id = COALESCE(t.provider_task_id, i.outcome_task_id), next_poll_at = NULL
    FROM go AS g JOIN input AS i USING (n)
    WHERE t.id = g.id AND i.action = 'complete' AND t.status = 'submitted'
    RETURNING g.n, t.*
), failed AS (
    UPDATE tasks AS t
    SET status = 'failed', failure_reason = i.reason, failure_message = i.message,
        outcome = COALESCE(i.outcome, t.outcome), updated_at = CAST(:now AS DOUBLE PRECISION),
        next_poll_at = NULL
    FROM go AS g JOIN input AS i USING (n)
    WHERE t.id = g.id AND i.action = 'fail' AND t.status = 'submitted'
    RETURNING g.n, t.*
), changed AS (
    SELECT * FROM completed UNION ALL SELECT * FROM failed
), inline AS (
    INSERT INTO inline_images (task_id, idx, data)
    SELECT c.id, CAST(image->>'idx' AS INTEGER), decode(image->>'data', 'base64')
    FROM completed AS c JOIN input AS i USING (n), jsonb_array_elements(i.inline) AS image
    ON CONFLICT DO NOTHING
), killed AS (
    UPDATE jobs AS j
    SET state = 'dead', last_error = i.message, updated_at = CAST(:now AS DOUBLE PRECISION)
    FROM failed AS f JOIN input AS i USING (n)
    WHERE j.task_id = f.id AND j.state IN ('queued', 'leased')
), event AS (
    INSERT INTO events (task_id, seq, status, at, data)
    SELECT c.id, COALESCE((SELECT MAX(e.seq) FROM events AS e WHERE e.task_id = c.id), 0) + 1,
           c.status, CAST(:now AS DOUBLE PRECISION), i.event
    FROM changed AS c JOIN input AS i USING (n)
), job AS (
    INSERT INTO jobs (task_id, state, attempts, deadline, next_attempt_at, created_at, updated_at)
    SELECT c.id, 'queued', 0, i.deadline, CAST(:now AS DOUBLE PRECISION),
           CAST(:now AS DOUBLE PRECISION), CAST(:now AS DOUBLE PRECISION)
    FROM completed AS c JOIN input AS i USING (n)
), notification AS (
    INSERT INTO notifications (id, task_id, event, url, state, attempts, next_attempt_at,
                               created_at)
    SELECT i.nid, f.id, 'task.failed', f.notify_url, 'queued', 0,
           CAST(:now AS DOUBLE PRECISION), CAST(:now AS DOUBLE PRECISION)
    FROM failed AS f JOIN input AS i USING (n)
    WHERE f.notify_url IS NOT NULL
    RETURNING task_id
), wake AS (
    SELECT pg_notify(CAST(:channel AS TEXT), w.channel)
    FROM (SELECT 'task:' || id AS channel FROM changed
          UNION ALL SELECT 'jobs' FROM completed
          UNION ALL SELECT 'notify' FROM notification) AS w
)
SELECT r.*,
       r.id IS NOT NULL AS found,
       i.n IN (SELECT n FROM allowed) AS allowed,
       i.n IN (SELECT n FROM fresh) AS fresh,
       i.n IN (SELECT n FROM changed) AS changed,
       r.id IN (SELECT task_id FROM notification) AS notified,
       (SELECT COUNT(*) FROM wake) AS woken
FROM input AS i
LEFT JOIN (SELECT * FROM changed
           UNION ALL SELECT * FROM task WHERE n NOT IN (SELECT n FROM changed)) AS r
    ON r.n = i.n
ORDER BY i.n
