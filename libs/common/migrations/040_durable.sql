-- Durable tasks and DAG conditions (docs/durable.md).
--
-- durable_log: one row per wait (or memoized value) of a durable task, by position in the
-- task's code; positions below zero are a DAG task's wait_for conditions. The log outlives
-- attempts: a new attempt replays it. `deadline_at` is fixed when the wait is first recorded,
-- so a replay keeps the original deadline. `waiting_attempt` is the attempt that is parked at
-- this wait on its worker (NULL while no attempt has reached it).
CREATE TABLE durable_log (
    tenant_id        text NOT NULL,
    task_id          text NOT NULL,
    position         integer NOT NULL,
    run_id           text NOT NULL,
    kind             text NOT NULL,
    spec             bytea NOT NULL,
    status           text NOT NULL,          -- pending | done
    result           bytea,
    deadline_at      timestamptz,
    registered_at    timestamptz NOT NULL,
    waiting_attempt  integer,
    PRIMARY KEY (tenant_id, task_id, position)
);
CREATE INDEX durable_log_pending ON durable_log (tenant_id, task_id) WHERE status = 'pending';

-- The event conditions of pending waits, read by the matcher: only events published at or
-- after `registered_at` count. Rows go when their wait completes.
CREATE TABLE durable_event_waits (
    tenant_id      text NOT NULL,
    task_id        text NOT NULL,
    position       integer NOT NULL,
    idx            integer NOT NULL,
    key            text NOT NULL,
    scope          text,
    expression     text NOT NULL,
    registered_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, task_id, position, idx)
);
CREATE INDEX durable_event_waits_by_key ON durable_event_waits (tenant_id, key);
