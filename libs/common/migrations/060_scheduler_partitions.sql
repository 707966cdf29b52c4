-- Scheduler partitions, their leases, and the fence every scheduler commit passes (docs/scaling.md).
--
-- Tenants are spread over a fixed number of partitions (FNV-1a of the tenant id, modulo the
-- count fixed when the CMD stream was created; ratchet_partition below is the same function as
-- nats-server's partition() subject transform). A partition belongs to at most one scheduler at
-- a time: the row's owner, until expires_at. Every acquisition bumps the epoch.
CREATE TABLE scheduler_partitions (
    partition   integer PRIMARY KEY,
    owner       text,
    epoch       bigint NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    acquired_at timestamptz
);

-- The live schedulers: each refreshes its row while it runs and deletes it when it stops.
-- Every scheduler computes the same partition -> member map from this list (rendezvous hashing).
CREATE TABLE scheduler_members (
    instance     text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL,
    started_at   timestamptz NOT NULL,
    host         text NOT NULL DEFAULT '',
    pid          integer NOT NULL DEFAULT 0
);

CREATE FUNCTION ratchet_partition(tenant text, partitions integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    h bigint := 2166136261;
    raw bytea := convert_to(tenant, 'UTF8');
BEGIN
    FOR i IN 0 .. length(raw) - 1 LOOP
        h := ((h # get_byte(raw, i)) * 16777619) % 4294967296;
    END LOOP;
    RETURN (h % partitions)::integer;
END $$;

-- The fence: called inside a scheduler's batch transaction, it raises (SQLSTATE RTF01) unless
-- the caller still holds every listed partition at the listed epoch with an unexpired lease.
-- FOR KEY SHARE keeps a takeover (which locks the row FOR UPDATE) waiting until this
-- transaction ends, while the owner's own renewals (plain UPDATEs) pass.
CREATE FUNCTION ratchet_fence(p_owner text, p_parts integer[], p_epochs bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    held integer;
BEGIN
    SELECT count(*) INTO held FROM (
        SELECT 1 FROM scheduler_partitions s
        JOIN unnest(p_parts, p_epochs) AS t(part, ep) ON s.partition = t.part
        WHERE s.owner = p_owner AND s.epoch = t.ep AND s.expires_at > clock_timestamp()
        FOR KEY SHARE OF s
    ) AS valid;
    IF held <> cardinality(p_parts) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'RTF01',
            MESSAGE = format('fenced: %s holds %s of its %s partition leases',
                             p_owner, held, cardinality(p_parts));
    END IF;
    RETURN held;
END $$;
