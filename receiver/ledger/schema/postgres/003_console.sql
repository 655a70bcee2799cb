-- The console: prompt search (full text, 'simple' configuration: no stemming, the same
-- word matching as SQLite's FTS5) and indexes for the gallery's filters and live updates.
-- Angle brackets become spaces first: the text parser would otherwise drop "<script>" as an
-- HTML tag, and a prompt's words must be findable whatever they are.
CREATE INDEX tasks_prompt_search ON tasks
    USING GIN (to_tsvector('simple', translate(prompt, '<>', '  ')));
CREATE INDEX tasks_status_id ON tasks (status, id);
CREATE INDEX tasks_provider_id ON tasks (provider, id);
CREATE INDEX tasks_updated ON tasks (updated_at);
CREATE INDEX notifications_task ON notifications (task_id);
