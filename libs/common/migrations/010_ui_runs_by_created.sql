-- The dashboard's runs list pages newest-first by (created_at, id) over a tenant's runs, with
-- or without filters; without this index an unfiltered page sorts every run of the tenant.
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (tenant_id, created_at DESC, id DESC);
