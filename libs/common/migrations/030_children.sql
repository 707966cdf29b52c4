-- Child runs: a run started from inside a task of another run. The link is written once, when
-- the scheduler first stores the run, and never changes.
ALTER TABLE runs
    ADD COLUMN parent_run_id  text,
    ADD COLUMN parent_task_id text,
    ADD COLUMN parent_task    text,
    ADD COLUMN depth          smallint NOT NULL DEFAULT 0;

-- GET /runs?parent_run_id= and a run view's `children`: a parent's children, newest first.
-- Partial: top-level runs (most of them) cost the index nothing.
CREATE INDEX runs_by_parent ON runs (tenant_id, parent_run_id, created_at DESC)
    WHERE parent_run_id IS NOT NULL;
