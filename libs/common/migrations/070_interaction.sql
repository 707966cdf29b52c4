-- Talking to a running run (docs/interaction.md): signals and waitpoint completions, the
-- latest state a durable task set, waitpoints, and forks.
--
-- run_inbox: what was sent to a run, in the order the scheduler received it (`seq`, from 0
-- per run). `kind` is 'signal' (name = the signal's name) or 'waitpoint' (name = the
-- waitpoint id). A message is 'pending' until a durable wait takes it ('delivered', with the
-- task and log position it went to), or 'refused' when the run's inbox was full. Only the
-- scheduler writes it, in its batch transactions; the API reads it (counts, the run page).
CREATE TABLE run_inbox (
    tenant_id     text NOT NULL,
    run_id        text NOT NULL,
    id            text NOT NULL,
    seq           integer NOT NULL,
    kind          text NOT NULL,
    name          text NOT NULL,
    payload       bytea NOT NULL,
    status        text NOT NULL,
    task_id       text,
    position      integer,
    sent_at       timestamptz NOT NULL,
    delivered_at  timestamptz,
    PRIMARY KEY (tenant_id, run_id, id)
);
CREATE INDEX run_inbox_pending ON run_inbox (tenant_id, run_id) WHERE status = 'pending';

-- The latest value `ctx.set_state` recorded for a run (the durable log keeps every one).
CREATE TABLE run_state (
    tenant_id   text NOT NULL,
    run_id      text NOT NULL,
    state       bytea NOT NULL,            -- JSON
    task_id     text NOT NULL,
    position    integer NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, run_id)
);

-- Waitpoints: created by the API for a durable task (one per task and log position, so a
-- replay gets the same one back), completed once through their signed URL or the API.
CREATE TABLE waitpoints (
    id            text PRIMARY KEY,
    tenant_id     text NOT NULL,
    run_id        text NOT NULL,
    task_id       text NOT NULL,
    position      integer NOT NULL,
    label         text NOT NULL,
    status        text NOT NULL,             -- pending | completed
    payload       bytea,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    completed_at  timestamptz,
    completed_by  text                       -- url | token:<token id> | ui:<token id>
);
CREATE INDEX waitpoints_by_run ON waitpoints (tenant_id, run_id);
CREATE INDEX waitpoints_pending ON waitpoints (tenant_id, created_at) WHERE status = 'pending';

-- The server's keys for signing waitpoint URLs when none are configured: made once, shared by
-- every API process. RATCHET_WAITPOINT_KEYS overrides (and rotates) them.
CREATE TABLE waitpoint_keys (
    name        text PRIMARY KEY,
    secret      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A fork: the new run, the run it came from, and where it was forked.
CREATE TABLE run_forks (
    tenant_id    text NOT NULL,
    run_id       text NOT NULL,
    forked_from  text NOT NULL,
    from_task    text NOT NULL,
    from_step    integer,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, run_id)
);
CREATE INDEX run_forks_by_origin ON run_forks (tenant_id, forked_from);
