-- Flow control (docs/flow-control.md): idempotency keys, paused workflows, and the triggers
-- held back from starting a run at once (debounce windows, batches, paused triggers).

-- One row per (tenant, workflow, key): the run the key stands for until `expires_at`
-- ('infinity' with until_finished: until that run ends). The primary key is what makes two
-- concurrent triggers with one key agree on one run.
CREATE TABLE idempotency_keys (
    tenant_id      text NOT NULL,
    workflow       text NOT NULL,
    key            text NOT NULL,
    run_id         text NOT NULL,
    expires_at     timestamptz NOT NULL,
    until_finished boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, workflow, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at) WHERE NOT until_finished;

-- A paused workflow. `dropped` counts the event and cron triggers skipped in mode 'drop'.
CREATE TABLE workflow_pauses (
    tenant_id  text NOT NULL,
    workflow   text NOT NULL,
    mode       text NOT NULL CHECK (mode IN ('queue', 'drop')),
    paused_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    paused_by  text NOT NULL DEFAULT '',
    dropped    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, workflow)
);

-- A run to be: its id is fixed when the window opens (the first trigger's run id), so every
-- trigger it holds can answer with it. 'open' windows take more triggers; a 'sealed' one
-- takes none and becomes its run (the scheduler owning the tenant creates it, then marks the
-- window 'started'); 'dropped' ones were sealed while their workflow was paused in drop mode.
-- A trigger held while its workflow is paused in queue mode is a sealed window of kind
-- 'paused' holding that one trigger.
CREATE TABLE flow_windows (
    tenant_id   text NOT NULL,
    run_id      text NOT NULL,
    workflow    text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('debounce', 'batch', 'paused')),
    group_key   text NOT NULL DEFAULT '',
    keep        text NOT NULL DEFAULT 'last' CHECK (keep IN ('last', 'all')),
    state       text NOT NULL CHECK (state IN ('open', 'sealed', 'started', 'dropped')),
    items       integer NOT NULL DEFAULT 0,
    opened_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    deadline    timestamptz NOT NULL DEFAULT clock_timestamp(),
    sealed_at   timestamptz,
    started_at  timestamptz,
    PRIMARY KEY (tenant_id, run_id)
);
-- At most one open window per key: the unique index is what serialises concurrent joins.
CREATE UNIQUE INDEX flow_windows_open ON flow_windows (tenant_id, workflow, kind, group_key)
    WHERE state = 'open';
CREATE INDEX flow_windows_pending ON flow_windows (deadline) WHERE state IN ('open', 'sealed');
CREATE INDEX flow_windows_by_workflow ON flow_windows (tenant_id, workflow)
    WHERE state = 'sealed';

-- The triggers a window holds, in arrival order; `trigger` is the msgpack TriggerRun.
-- Keyed by the trigger's own run id, so a redelivered trigger joins once.
CREATE TABLE flow_items (
    tenant_id   text NOT NULL,
    trigger_id  text NOT NULL,
    run_id      text NOT NULL,
    seq         integer NOT NULL,
    source      text NOT NULL DEFAULT 'api',
    trigger     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, trigger_id)
);
CREATE INDEX flow_items_by_run ON flow_items (tenant_id, run_id, seq);

-- Add one trigger to the open window of its key, opening one (with run id p_new_run) when
-- there is none or the open one is past its deadline (then that one is sealed here). Batches
-- are sealed by the join that fills them. Returns the window's run id, its deadline, and
-- whether this join opened it or sealed it. A trigger id seen before returns its window.
CREATE FUNCTION ratchet_flow_join(
    p_tenant text, p_workflow text, p_kind text, p_key text, p_keep text,
    p_new_run text, p_trigger_id text, p_source text, p_trigger bytea,
    p_period_ms bigint, p_max_wait_ms bigint, p_size integer
) RETURNS TABLE (run_id text, deadline timestamptz, opened boolean, sealed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w flow_windows%ROWTYPE;
    ts timestamptz;
    seen text;
    due timestamptz;
    tries integer := 0;
BEGIN
    SELECT i.run_id INTO seen FROM flow_items i
     WHERE i.tenant_id = p_tenant AND i.trigger_id = p_trigger_id;
    IF FOUND THEN
        SELECT * INTO w FROM flow_windows f WHERE f.tenant_id = p_tenant AND f.run_id = seen;
        RETURN QUERY SELECT seen, w.deadline, false, false;
        RETURN;
    END IF;
    LOOP
        tries := tries + 1;
        IF tries > 20 THEN
            RAISE EXCEPTION 'flow window of % % % stays contended', p_workflow, p_kind, p_key;
        END IF;
        ts := clock_timestamp();
        SELECT * INTO w FROM flow_windows f
         WHERE f.tenant_id = p_tenant AND f.workflow = p_workflow AND f.kind = p_kind
           AND f.group_key = p_key AND f.state = 'open'
         FOR UPDATE;
        IF FOUND AND w.deadline <= ts THEN
            -- Overdue (the scheduler has not sealed it yet): it ends here, without this one.
            UPDATE flow_windows f SET state = 'sealed', sealed_at = ts
             WHERE f.tenant_id = p_tenant AND f.run_id = w.run_id;
        ELSIF FOUND THEN
            w.items := w.items + 1;
            IF p_kind = 'debounce' THEN
                due := least(ts + make_interval(secs => p_period_ms / 1000.0),
                             w.opened_at + make_interval(secs => p_max_wait_ms / 1000.0));
            ELSE
                due := w.deadline;
            END IF;
            INSERT INTO flow_items (tenant_id, trigger_id, run_id, seq, source, trigger)
            VALUES (p_tenant, p_trigger_id, w.run_id, w.items, p_source, p_trigger);
            IF p_kind = 'batch' AND w.items >= p_size THEN
                UPDATE flow_windows f SET items = w.items, last_at = ts, state = 'sealed',
                       sealed_at = ts, deadline = ts
                 WHERE f.tenant_id = p_tenant AND f.run_id = w.run_id;
                RETURN QUERY SELECT w.run_id, ts, false, true;
            ELSE
                UPDATE flow_windows f SET items = w.items, last_at = ts, deadline = due
                 WHERE f.tenant_id = p_tenant AND f.run_id = w.run_id;
                RETURN QUERY SELECT w.run_id, due, false, false;
            END IF;
            RETURN;
        END IF;
        IF p_kind = 'debounce' THEN
            due := ts + make_interval(secs => least(p_period_ms, p_max_wait_ms) / 1000.0);
        ELSE
            due := ts + make_interval(secs => p_max_wait_ms / 1000.0);
        END IF;
        BEGIN
            INSERT INTO flow_windows (tenant_id, run_id, workflow, kind, group_key, keep, state,
                                      items, opened_at, last_at, deadline, sealed_at)
            VALUES (p_tenant, p_new_run, p_workflow, p_kind, p_key, p_keep,
                    CASE WHEN p_kind = 'batch' AND p_size <= 1 THEN 'sealed' ELSE 'open' END,
                    1, ts, ts, CASE WHEN p_kind = 'batch' AND p_size <= 1 THEN ts ELSE due END,
                    CASE WHEN p_kind = 'batch' AND p_size <= 1 THEN ts END);
        EXCEPTION WHEN unique_violation THEN
            CONTINUE;  -- another trigger opened this key's window meanwhile: join that one
        END;
        INSERT INTO flow_items (tenant_id, trigger_id, run_id, seq, source, trigger)
        VALUES (p_tenant, p_trigger_id, p_new_run, 1, p_source, p_trigger);
        IF p_kind = 'batch' AND p_size <= 1 THEN
            RETURN QUERY SELECT p_new_run, ts, true, true;
        ELSE
            RETURN QUERY SELECT p_new_run, due, true, false;
        END IF;
        RETURN;
    END LOOP;
END;
$$;
