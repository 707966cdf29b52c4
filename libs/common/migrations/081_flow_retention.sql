-- Flow control's finished rows are pruned like runs (RATCHET_RETENTION_DAYS): windows that
-- became their run (or were dropped) long ago, and the triggers they held.
CREATE INDEX flow_windows_done ON flow_windows (started_at) WHERE state IN ('started', 'dropped');
