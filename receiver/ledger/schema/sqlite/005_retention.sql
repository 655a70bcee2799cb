-- Retention (worker.job_retention_days, worker.event_retention_days): finished jobs and
-- notifications are found by age through partial indexes, which cost nothing while a row is
-- still live (a leased job's heartbeat does not touch them).
CREATE INDEX jobs_finished ON jobs (updated_at) WHERE state IN ('done', 'dead');
CREATE INDEX notifications_finished ON notifications (created_at) WHERE state IN ('done', 'dead');
-- The reconciler counts submitted tasks by provider every few seconds: from this small index
-- (submitted tasks only) instead of a pass over every task, which took 0.2 s at 100,000
-- tasks on SQLite once its statistics made a provider-ordered scan look cheaper.
CREATE INDEX tasks_submitted ON tasks (provider, created_at) WHERE status = 'submitted';
