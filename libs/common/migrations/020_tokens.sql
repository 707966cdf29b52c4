-- Tokens get an id, a name, scopes, an expiry and a revocation mark; tenants get operator-set
-- limits; every change a tenant makes is kept in an append-only audit log.
ALTER TABLE api_tokens
    ADD COLUMN id          text,
    ADD COLUMN name        text NOT NULL DEFAULT 'default',
    ADD COLUMN scopes      text[] NOT NULL DEFAULT ARRAY['admin', 'write', 'read', 'worker'],
    ADD COLUMN expires_at  timestamptz,
    ADD COLUMN revoked_at  timestamptz;
-- Tokens issued before scopes existed keep every scope, so nothing that works stops working.
UPDATE api_tokens SET id = 'tok_' || substr(token_hash, 1, 24) WHERE id IS NULL;
ALTER TABLE api_tokens ALTER COLUMN id SET NOT NULL;
CREATE UNIQUE INDEX api_tokens_id ON api_tokens (id);
CREATE INDEX api_tokens_by_tenant ON api_tokens (tenant_id, created_at);

-- NULL means unlimited; a tenant without a row has no limits at all.
CREATE TABLE tenant_limits (
    tenant_id            text PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    unfinished_runs      bigint,
    triggers_per_s       double precision,
    events_per_s         double precision,
    payload_bytes        bigint,
    workers              integer,
    slots                integer,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    ts          timestamptz NOT NULL DEFAULT clock_timestamp(),
    token_id    text,
    token_name  text,
    action      text NOT NULL,
    target      text,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, id DESC);
CREATE INDEX audit_log_by_action ON audit_log (tenant_id, action, id DESC);

-- Append-only: rows can be added, never changed or removed (short of dropping the table).
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
