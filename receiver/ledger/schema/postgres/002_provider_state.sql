-- Per-task provider state (BFL's polling_url, ...) kept with the task so every replica and every
-- restart polls where the provider said to; and a provider's raw answer kept when no image could
-- be read from it, so a later version can parse it again (reason unparsed_response).
ALTER TABLE tasks ADD COLUMN provider_state TEXT;

CREATE TABLE raw_responses (
    task_id TEXT PRIMARY KEY,
    content_type TEXT,
    data BYTEA NOT NULL,
    received_at DOUBLE PRECISION NOT NULL
);
