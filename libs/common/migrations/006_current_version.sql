-- A workflow's current version is what new runs start on (API triggers, event matches, crons,
-- scheduled runs). It used to always be the newest registered version; a rollback can now point
-- it at an older one, so the column says what it means.
ALTER TABLE workflows RENAME COLUMN latest_version_id TO current_version_id;

-- GET /workflows/{name}/versions lists one workflow's versions, newest first.
CREATE INDEX workflow_versions_by_name ON workflow_versions (tenant_id, name, created_at DESC);
