-- Webhooks in and out (docs/webhooks.md).
--
-- webhooks: a tenant's public endpoints, POST /hooks/<tenant>/<name>. The secret is kept as
-- given: verifying an HMAC needs it (it is never shown again by the API). `config` holds the
-- per-source options (header, prefix, tolerance, user name).
CREATE TABLE webhooks (
    tenant_id   text NOT NULL,
    name        text NOT NULL,
    source      text NOT NULL,
    secret      text NOT NULL,
    event_key   text NOT NULL,
    scope       text,
    config      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- What each request to a hook got: the last 100 per hook are kept (older rows are deleted as
-- new ones arrive). Requests to a hook that does not exist are logged under its name too.
CREATE TABLE webhook_deliveries (
    id           bigserial PRIMARY KEY,
    tenant_id    text NOT NULL,
    name         text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    status       integer NOT NULL,
    outcome      text NOT NULL,
    event_id     text,
    event_key    text,
    detail       text NOT NULL DEFAULT ''
);
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (tenant_id, name, id DESC);

-- The key outgoing deliveries are signed with, one per tenant (made on first use).
CREATE TABLE signing_secrets (
    tenant_id   text PRIMARY KEY,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- callback_url of a run, written before its trigger is published.
CREATE TABLE run_callbacks (
    tenant_id   text NOT NULL,
    run_id      text NOT NULL,
    url         text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, run_id)
);

-- Every outgoing HTTP or email delivery (run callbacks, alerts), with its retry state: this
-- table is both the queue the deliverer works from and the delivery log the API shows.
-- `id` is derived from what the delivery means, so a redelivered fact adds nothing.
CREATE TABLE outbound_deliveries (
    tenant_id        text NOT NULL,
    id               text NOT NULL,
    kind             text NOT NULL,          -- callback | alert
    channel          text NOT NULL,          -- webhook | slack | email
    target           text NOT NULL,          -- URL, or comma-separated addresses
    run_id           text,
    rule_id          text,
    body             bytea NOT NULL,         -- JSON
    status           text NOT NULL DEFAULT 'pending',   -- pending | delivered | failed
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX outbound_deliveries_due ON outbound_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX outbound_deliveries_by_run ON outbound_deliveries (tenant_id, run_id)
    WHERE run_id IS NOT NULL;
CREATE INDEX outbound_deliveries_by_rule ON outbound_deliveries (tenant_id, rule_id, created_at)
    WHERE rule_id IS NOT NULL;
