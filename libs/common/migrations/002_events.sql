-- Event filters, crons and one-off scheduled runs. Every table is keyed by tenant_id.

-- A filter narrows which events of a workflow's on_events keys start a run.
CREATE TABLE filters (
    tenant_id   text NOT NULL,
    id          text NOT NULL,
    workflow    text NOT NULL,
    scope       text,
    expression  text NOT NULL,
    payload     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
-- The matcher loads a tenant's filters in one query (tenant_id prefix of the PK); the API
-- lists them per workflow.
CREATE INDEX filters_by_workflow ON filters (tenant_id, workflow);

-- Crons from the API (origin 'api') and from workflows' on_crons (origin 'workflow').
-- next_due_at is the next tick to fire; a ticker claims due rows with FOR UPDATE SKIP LOCKED
-- and advances next_due_at/last_tick in the same transaction, so two schedulers never both
-- fire a tick.
CREATE TABLE crons (
    tenant_id    text NOT NULL,
    id           text NOT NULL,
    workflow     text NOT NULL,
    name         text NOT NULL,
    expression   text NOT NULL,
    input        jsonb NOT NULL DEFAULT '{}',
    metadata     jsonb NOT NULL DEFAULT '{}',
    origin       text NOT NULL DEFAULT 'api',
    next_due_at  timestamptz NOT NULL,
    last_tick    timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, workflow, name)
);
CREATE INDEX crons_by_due ON crons (next_due_at);

CREATE TABLE scheduled_runs (
    tenant_id   text NOT NULL,
    id          text NOT NULL,
    workflow    text NOT NULL,
    run_at      timestamptz NOT NULL,
    input       jsonb NOT NULL DEFAULT '{}',
    metadata    jsonb NOT NULL DEFAULT '{}',
    run_id      text NOT NULL,
    fired_at    timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
-- Only unfired rows are ever due: the partial index stays small however many have fired.
CREATE INDEX scheduled_runs_due ON scheduled_runs (run_at) WHERE fired_at IS NULL;
CREATE INDEX scheduled_runs_by_tenant ON scheduled_runs (tenant_id, run_at);
