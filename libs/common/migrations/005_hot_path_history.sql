-- Fewer rows and index entries per task on the scheduler's hot path.
--
-- Run history: one row per run per scheduler batch, holding that batch's events of the run in
-- order, instead of one row per event. A single-task run took six rows (run.created,
-- task.queued, task.assigned, task.running, task.succeeded, run.succeeded), each with two index
-- entries; they were about a third of PostgreSQL's work per task. Now it takes about three rows
-- and one index. The only reader (GET /runs/{id}/events) looks rows up by run, so the primary
-- key is the run's. `events` is json (validated, stored as sent): nothing queries inside it on
-- the hot path, and jsonb would rebuild it in binary form on every insert.
CREATE TABLE run_history (
    tenant_id  text NOT NULL,
    run_id     text NOT NULL,
    seq        bigserial,
    ts         timestamptz NOT NULL,
    -- [{"kind", "task_id"?, "task_name"?, "attempt"?, "detail"?}, ...], oldest first
    events     json NOT NULL,
    PRIMARY KEY (tenant_id, run_id, seq)
);

INSERT INTO run_history (tenant_id, run_id, seq, ts, events)
SELECT tenant_id, run_id, seq, ts, json_build_array(json_strip_nulls(json_build_object(
    'kind', kind, 'task_id', task_id, 'task_name', task_name, 'attempt', attempt,
    'detail', detail)))
FROM run_events ORDER BY seq;
SELECT setval(pg_get_serial_sequence('run_history', 'seq'),
              COALESCE((SELECT max(seq) FROM run_history), 0) + 1, false);
DROP TABLE run_events;

-- A task row is updated as it moves through its states, and an attempt row when it ends. No
-- updated column is indexed, so with room left on the page PostgreSQL updates in place (HOT)
-- instead of writing a new entry into every index.
ALTER TABLE tasks SET (fillfactor = 80);
ALTER TABLE task_attempts SET (fillfactor = 80);
ALTER TABLE runs SET (fillfactor = 90);
