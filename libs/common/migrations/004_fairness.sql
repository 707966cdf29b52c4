-- Fair scheduling: rate-limit definitions and starts, concurrency slot holders, and the
-- attempts still executing on workers. Written by the scheduler in its batch transaction.

-- Static rate-limit keys, created through the API (r.rate_limits.put / PUT /rate-limits).
CREATE TABLE rate_limits (
    tenant_id   text NOT NULL,
    key         text NOT NULL,
    limit_units integer NOT NULL CHECK (limit_units > 0),
    per         text NOT NULL CHECK (per IN ('second', 'minute', 'hour')),
    burst       integer CHECK (burst IS NULL OR burst > 0),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX rate_limits_by_update ON rate_limits (updated_at);

-- One row per key that has ever admitted a start: the row the schedulers lock, in key
-- order, before they check and record starts, so starts of one key are serialized.
CREATE TABLE rate_limit_keys (
    tenant_id  text NOT NULL,
    key        text NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

-- Every start that took units (kept for an hour, the longest window).
CREATE TABLE rate_limit_admissions (
    tenant_id  text NOT NULL,
    key        text NOT NULL,
    ts         timestamptz NOT NULL,
    units      integer NOT NULL,
    task_id    text NOT NULL,
    attempt    integer NOT NULL,
    PRIMARY KEY (tenant_id, key, task_id, attempt)
);
CREATE INDEX rate_limit_admissions_by_ts ON rate_limit_admissions (tenant_id, key, ts);
CREATE INDEX rate_limit_admissions_age ON rate_limit_admissions (ts);

-- Who holds a concurrency slot: a run ("r:<run>:-") or a task attempt ("t:<task>:<n>").
CREATE TABLE concurrency_holders (
    tenant_id  text NOT NULL,
    key        text NOT NULL,
    holder     text NOT NULL,
    max_runs   integer NOT NULL,
    strategy   text NOT NULL,
    PRIMARY KEY (tenant_id, key, holder)
);

-- Attempts of concurrency-controlled tasks handed to a worker and not yet settled by it
-- (a timed-out attempt may still be running): they keep their slots until it confirms.
CREATE TABLE executing_attempts (
    tenant_id  text NOT NULL,
    task_id    text NOT NULL,
    attempt    integer NOT NULL,
    run_id     text NOT NULL,
    worker_id  text NOT NULL,
    PRIMARY KEY (tenant_id, task_id, attempt)
);
