-- The ledger's tables. Times are epoch seconds (DOUBLE PRECISION); JSON is stored as TEXT.
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,
    destination TEXT NOT NULL,
    metadata TEXT NOT NULL,
    notify_url TEXT,
    status TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    provider_task_id TEXT,
    failure_reason TEXT,
    failure_message TEXT,
    outcome TEXT,
    objects TEXT NOT NULL DEFAULT '[]',
    submitted_at DOUBLE PRECISION,
    completed_at DOUBLE PRECISION,
    archived_at DOUBLE PRECISION,
    next_poll_at DOUBLE PRECISION,
    poll_attempts INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT UNIQUE
);
CREATE INDEX tasks_provider_task ON tasks (provider, provider_task_id);
CREATE INDEX tasks_poll ON tasks (status, next_poll_at);
CREATE INDEX tasks_created ON tasks (created_at);

CREATE TABLE inline_images (
    task_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (task_id, idx)
);

CREATE TABLE deliveries (
    provider TEXT NOT NULL,
    key TEXT NOT NULL,
    task_id TEXT,
    received_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (provider, key)
);
CREATE INDEX deliveries_received ON deliveries (received_at);

CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    deadline DOUBLE PRECISION,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_expires_at DOUBLE PRECISION,
    last_error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
CREATE INDEX jobs_task ON jobs (task_id);

CREATE TABLE events (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
);

CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_expires_at DOUBLE PRECISION,
    last_error TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX notifications_due ON notifications (state, next_attempt_at);
