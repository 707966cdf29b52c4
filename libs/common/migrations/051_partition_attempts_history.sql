-- The rest of a run's history by day too (after 050's runs and tasks): task_attempts by the
-- task's created_at (a new column, filled from the task), run_history by its ts. Retention then
-- drops a day of all four tables together, and the indexes every batch inserts into stay the
-- size of a day instead of growing with the history.
--
-- Same shape as 050: the old table becomes the "legacy" partition up to this migration, the
-- rest of today gets a partition, and ratchet_ensure_partitions creates the days ahead.

ALTER TABLE task_attempts ADD COLUMN created_at timestamptz;
UPDATE task_attempts a SET created_at = t.created_at
FROM tasks t WHERE t.tenant_id = a.tenant_id AND t.id = a.task_id;
-- An attempt whose task row is gone: any time before now keeps it in the legacy partition.
UPDATE task_attempts SET created_at = COALESCE(started_at, finished_at, now())
WHERE created_at IS NULL;
ALTER TABLE task_attempts ALTER COLUMN created_at SET NOT NULL;

CREATE FUNCTION ratchet_partition_indexes(old_table text, new_table text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    idx record;
BEGIN
    FOR idx IN
        SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS def, i.indisunique AS uniq
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = old_table::regclass AND NOT i.indisprimary
    LOOP
        IF idx.uniq THEN
            RAISE EXCEPTION 'unique index % on % must include the partition key', idx.name,
                old_table;
        END IF;
        EXECUTE format('ALTER INDEX %I RENAME TO %I', idx.name, left(idx.name, 50) || '_legacy');
        EXECUTE regexp_replace(idx.def, ' ON (\S+\.)?' || old_table || ' ',
                               ' ON ' || quote_ident(new_table) || ' ');
    END LOOP;
END $$;

DO $$
DECLARE
    spec record;
    bound timestamptz := now();
    today date := (now() AT TIME ZONE 'UTC')::date;
    seq text;
BEGIN
    FOR spec IN
        SELECT * FROM (VALUES
            ('task_attempts', 'created_at', 'tenant_id, task_id, attempt, created_at', 80),
            ('run_history', 'ts', 'tenant_id, run_id, seq, ts', 100)
        ) AS v(parent, key, pk, fill)
    LOOP
        seq := NULL;
        IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = spec.parent::regclass
                   AND attname = 'seq' AND NOT attisdropped) THEN
            seq := pg_get_serial_sequence(spec.parent, 'seq');
        END IF;
        EXECUTE format('ALTER TABLE %I RENAME TO %I', spec.parent, spec.parent || '_legacy');
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', spec.parent || '_legacy',
                       spec.parent || '_pkey');
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING STORAGE'
                       ' INCLUDING COMMENTS) PARTITION BY RANGE (%I)',
                       spec.parent, spec.parent || '_legacy', spec.key);
        IF seq IS NOT NULL THEN
            -- The sequence must outlive the legacy partition, which retention drops.
            EXECUTE format('ALTER SEQUENCE %s OWNED BY %I.seq', seq, spec.parent);
        END IF;
        EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (%s)', spec.parent, spec.pk);
        PERFORM ratchet_partition_indexes(spec.parent || '_legacy', spec.parent);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
                       spec.parent, spec.parent || '_legacy', bound);
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)'
                       ' WITH (fillfactor = %s)',
                       format('%s_p%s', spec.parent, to_char(today, 'YYYYMMDD')), spec.parent,
                       bound, ((today + 1)::timestamp AT TIME ZONE 'UTC'), spec.fill);
    END LOOP;
END $$;

DROP FUNCTION ratchet_partition_indexes(text, text);

CREATE OR REPLACE FUNCTION ratchet_ensure_partitions(days_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    spec record;
    day date;
    made integer := 0;
BEGIN
    FOR spec IN
        SELECT * FROM (VALUES ('runs', 90), ('tasks', 80), ('task_attempts', 80),
                              ('run_history', 100)) AS v(parent, fill)
    LOOP
        -- From the day after the newest partition (or tomorrow) to today + days_ahead.
        SELECT COALESCE(max(to_date(right(c.relname, 8), 'YYYYMMDD')) + 1,
                        (now() AT TIME ZONE 'UTC')::date + 1)
        INTO day
        FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
        WHERE h.inhparent = spec.parent::regclass AND c.relname ~ '_p[0-9]{8}$';
        WHILE day <= (now() AT TIME ZONE 'UTC')::date + days_ahead LOOP
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)'
                ' WITH (fillfactor = %s)',
                format('%s_p%s', spec.parent, to_char(day, 'YYYYMMDD')), spec.parent,
                (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'),
                spec.fill);
            made := made + 1;
            day := day + 1;
        END LOOP;
    END LOOP;
    RETURN made;
END $$;

SELECT ratchet_ensure_partitions(14);
