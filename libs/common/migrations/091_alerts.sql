-- Alert rules and their grouping windows (docs/alerts.md).
CREATE TABLE alert_rules (
    tenant_id          text NOT NULL,
    id                 text NOT NULL,
    events             text[] NOT NULL,
    workflow           text,
    filter             text,
    slack_webhook_url  text,
    email              text[] NOT NULL DEFAULT '{}',
    webhook_url        text,
    window_s           double precision NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

-- One open group per rule, event and subject (a workflow, a token, a limit) collects what
-- happened until `closes_at`; then it is flushed into one message per channel.
CREATE TABLE alert_groups (
    tenant_id     text NOT NULL,
    id            text NOT NULL,
    rule_id       text NOT NULL,
    event         text NOT NULL,
    subject       text NOT NULL,
    opened_at     timestamptz NOT NULL DEFAULT now(),
    closes_at     timestamptz NOT NULL,
    count         integer NOT NULL DEFAULT 1,
    first_run_id  text,
    last_run_id   text,
    detail        text NOT NULL DEFAULT '',
    flushed       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX alert_groups_open ON alert_groups (tenant_id, rule_id, event, subject)
    WHERE NOT flushed;
CREATE INDEX alert_groups_due ON alert_groups (closes_at) WHERE NOT flushed;
-- Facts that alert once (a token about to expire): seen here, never opened again.
CREATE TABLE alert_facts (
    tenant_id  text NOT NULL,
    rule_id    text NOT NULL,
    fact       text NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rule_id, fact)
);
