-- The W3C trace context a run was triggered under, so traces survive a scheduler restart.
-- NULL when the run is not traced (no exporter configured, or not sampled).
ALTER TABLE runs ADD COLUMN traceparent text;
