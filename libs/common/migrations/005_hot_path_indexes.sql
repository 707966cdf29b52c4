-- Fewer index writes per task. Every transition appends a run_events row; its bigserial key and
-- a separate (tenant_id, run_id, seq) index cost two index insertions per row, and the only
-- reader (GET /runs/{id}/events) looks rows up by run. One key serves both.
ALTER TABLE run_events DROP CONSTRAINT run_events_pkey;
DROP INDEX run_events_by_run;
ALTER TABLE run_events ADD PRIMARY KEY (tenant_id, run_id, seq);

-- A task row is updated as it moves through its states, and an attempt row when it ends. No
-- updated column is indexed, so with room left on the page PostgreSQL updates in place (HOT)
-- instead of writing a new entry into every index.
ALTER TABLE tasks SET (fillfactor = 80);
ALTER TABLE task_attempts SET (fillfactor = 80);
ALTER TABLE runs SET (fillfactor = 90);
