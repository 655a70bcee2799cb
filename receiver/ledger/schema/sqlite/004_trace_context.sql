-- The W3C trace context (traceparent) of the POST /v1/tasks that created each task, so the
-- callback, the archive job, polls and the notification continue the submission's trace on
-- whichever replica handles them. NULL when tracing was off at submission.
ALTER TABLE tasks ADD COLUMN traceparent TEXT;
