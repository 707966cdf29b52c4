-- Ratchet operational schema. Every table is keyed by tenant_id.
CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    token_hash  text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE workflow_versions (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    name        text NOT NULL,
    hash        text NOT NULL,
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name, hash)
);

CREATE TABLE workflows (
    tenant_id          text NOT NULL,
    name               text NOT NULL,
    latest_version_id  text NOT NULL REFERENCES workflow_versions(id),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE runs (
    tenant_id    text NOT NULL,
    id           text NOT NULL,
    workflow     text NOT NULL,
    version_id   text NOT NULL,
    status       text NOT NULL,
    priority     smallint NOT NULL,
    input        bytea NOT NULL,
    metadata     jsonb NOT NULL DEFAULT '{}',
    additional   bytea NOT NULL DEFAULT '',
    source       text NOT NULL DEFAULT 'api',
    generation   integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX runs_by_status ON runs (tenant_id, status, created_at DESC);
CREATE INDEX runs_active ON runs (status) WHERE status IN ('PENDING', 'RUNNING');

CREATE TABLE tasks (
    tenant_id    text NOT NULL,
    id           text NOT NULL,
    run_id       text NOT NULL,
    name         text NOT NULL,
    action       text NOT NULL,
    status       text NOT NULL,
    attempt      integer NOT NULL DEFAULT 0,
    failures     integer NOT NULL DEFAULT 0,
    worker_id    text,
    output       bytea,
    priority     smallint NOT NULL,
    queued_at    timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    not_before   timestamptz,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX tasks_by_run ON tasks (tenant_id, run_id);

CREATE TABLE task_attempts (
    tenant_id    text NOT NULL,
    task_id      text NOT NULL,
    attempt      integer NOT NULL,
    status       text NOT NULL,
    worker_id    text,
    error        jsonb,
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (tenant_id, task_id, attempt)
);

-- Append-only history of every transition of a run and its tasks.
CREATE TABLE run_events (
    seq        bigserial PRIMARY KEY,
    tenant_id  text NOT NULL,
    run_id     text NOT NULL,
    task_id    text,
    task_name  text,
    attempt    integer,
    kind       text NOT NULL,
    detail     jsonb,
    ts         timestamptz NOT NULL
);
CREATE INDEX run_events_by_run ON run_events (tenant_id, run_id, seq);

-- Messages written in the same transaction as the state they announce, relayed after commit.
CREATE TABLE outbox (
    msg_id   text PRIMARY KEY,
    seq      bigserial NOT NULL,
    subject  text NOT NULL,
    payload  bytea NOT NULL
);

-- Deadlines (backoff, execution/schedule timeouts, scheduled runs) fired by the sweeper.
CREATE TABLE timers (
    tenant_id  text NOT NULL,
    task_id    text NOT NULL,
    kind       text NOT NULL,
    attempt    integer NOT NULL,
    due_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, task_id, kind)
);
CREATE INDEX timers_by_due ON timers (due_at);
