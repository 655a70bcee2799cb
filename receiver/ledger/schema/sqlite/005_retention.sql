-- Retention (worker.job_retention_days, worker.event_retention_days): finished jobs and
-- notifications are found by age through partial indexes, which cost nothing while a row is
-- still live (a leased job's heartbeat does not touch them).
CREATE INDEX jobs_finished ON jobs (updated_at) WHERE state IN ('done', 'dead');
CREATE INDEX notifications_finished ON notifications (created_at) WHERE state IN ('done', 'dead');
