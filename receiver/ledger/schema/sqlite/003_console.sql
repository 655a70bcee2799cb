-- The console: prompt search (FTS5) and indexes for the gallery's filters and live updates.
-- The search table keeps its own copy of each prompt with the task id beside it: an
-- external-content table would key on tasks.rowid, which VACUUM may renumber.
CREATE VIRTUAL TABLE tasks_fts USING fts5(
    prompt, task_id UNINDEXED, tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO tasks_fts (prompt, task_id) SELECT prompt, id FROM tasks;
CREATE TRIGGER tasks_fts_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO tasks_fts (prompt, task_id) VALUES (new.prompt, new.id);
END;
CREATE TRIGGER tasks_fts_update AFTER UPDATE OF prompt ON tasks BEGIN
    DELETE FROM tasks_fts WHERE task_id = old.id;
    INSERT INTO tasks_fts (prompt, task_id) VALUES (new.prompt, new.id);
END;
CREATE TRIGGER tasks_fts_delete AFTER DELETE ON tasks BEGIN
    DELETE FROM tasks_fts WHERE task_id = old.id;
END;
CREATE INDEX tasks_status_id ON tasks (status, id);
CREATE INDEX tasks_provider_id ON tasks (provider, id);
CREATE INDEX tasks_updated ON tasks (updated_at);
CREATE INDEX notifications_task ON notifications (task_id);
