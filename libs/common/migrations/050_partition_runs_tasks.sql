-- History off the hot path: runs and tasks are range-partitioned by creation time, one
-- partition per UTC day, so retention drops whole days (RATCHET_RETENTION_DAYS) instead of
-- deleting rows, and the partitions the scheduler writes stay small and hot.
--
-- The partition key must be part of every unique constraint: the primary keys become
-- (tenant_id, id, created_at). A run's tasks carry the run's created_at, so a run and its
-- tasks live in the same day. Lookups by (tenant_id, id) still use each partition's primary
-- key index (a prefix of it).
--
-- The existing tables are kept as they are and attached as one "legacy" partition covering
-- everything created before this migration (no rewrite: only the new primary key index is
-- built on them, in place of the old one); the rest of today gets a partition of its own.
-- Retention drops the legacy partition once the migration is older than the window.
--
-- ratchet_ensure_partitions(days) creates the daily partitions from tomorrow on; the scheduler
-- calls it at start and hourly (services/scheduler/partitions.py).

CREATE FUNCTION ratchet_partition_indexes(old_table text, new_table text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    idx record;
BEGIN
    -- Every secondary index of the old table, recreated on the partitioned one under its
    -- name (the old index is renamed; ATTACH then adopts it as that partition's index).
    FOR idx IN
        SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS def, i.indisunique AS uniq
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = old_table::regclass AND NOT i.indisprimary
    LOOP
        IF idx.uniq THEN
            RAISE EXCEPTION 'unique index % on % must include created_at to be partitioned',
                idx.name, old_table;
        END IF;
        EXECUTE format('ALTER INDEX %I RENAME TO %I', idx.name, left(idx.name, 50) || '_legacy');
        EXECUTE regexp_replace(idx.def, ' ON (\S+\.)?' || old_table || ' ',
                               ' ON ' || quote_ident(new_table) || ' ');
    END LOOP;
END $$;

CREATE FUNCTION ratchet_ensure_partitions(days_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    parent text;
    day date;
    first_day date;
    made integer := 0;
    name text;
BEGIN
    -- From the day after the newest partition (or tomorrow) to today + days_ahead.
    FOREACH parent IN ARRAY ARRAY['runs', 'tasks'] LOOP
        SELECT COALESCE(max(to_date(right(c.relname, 8), 'YYYYMMDD')) + 1,
                        (now() AT TIME ZONE 'UTC')::date + 1)
        INTO first_day
        FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
        WHERE h.inhparent = parent::regclass AND c.relname ~ '_p[0-9]{8}$';
        day := first_day;
        WHILE day <= (now() AT TIME ZONE 'UTC')::date + days_ahead LOOP
            name := format('%s_p%s', parent, to_char(day, 'YYYYMMDD'));
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)'
                ' WITH (fillfactor = %s)',
                name, parent, (day::timestamp AT TIME ZONE 'UTC'),
                ((day + 1)::timestamp AT TIME ZONE 'UTC'),
                CASE parent WHEN 'tasks' THEN 80 ELSE 90 END);
            made := made + 1;
            day := day + 1;
        END LOOP;
    END LOOP;
    RETURN made;
END $$;

DO $$
DECLARE
    parent text;
    bound timestamptz := now();
    today date := (now() AT TIME ZONE 'UTC')::date;
BEGIN
    FOREACH parent IN ARRAY ARRAY['runs', 'tasks'] LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', parent, parent || '_legacy');
        -- A partition may have one primary key: ATTACH gives it the parent's, which also
        -- serves every lookup the old (tenant_id, id) one did.
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', parent || '_legacy', parent || '_pkey');
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING STORAGE'
                       ' INCLUDING COMMENTS) PARTITION BY RANGE (created_at)',
                       parent, parent || '_legacy');
        EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (tenant_id, id, created_at)', parent);
        PERFORM ratchet_partition_indexes(parent || '_legacy', parent);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
                       parent, parent || '_legacy', bound);
        -- The rest of today: what is created from now on lands in a day partition already.
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)'
                       ' WITH (fillfactor = %s)',
                       format('%s_p%s', parent, to_char(today, 'YYYYMMDD')), parent, bound,
                       ((today + 1)::timestamp AT TIME ZONE 'UTC'),
                       CASE parent WHEN 'tasks' THEN 80 ELSE 90 END);
    END LOOP;
END $$;

DROP FUNCTION ratchet_partition_indexes(text, text);

SELECT ratchet_ensure_partitions(14);
