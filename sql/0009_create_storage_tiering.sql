-- Storage tiers: month partitions move hot -> warm -> cold as they age.
--
-- A month partition's age is the age of the newest row it can hold: now minus its upper
-- bound. So a month turns warm when all of it is older than warm_after, and the current and
-- future months (upper bound ahead of now) are always hot and never moved. _rest partitions
-- and partitioned parents are never moved: a parent holds no data, and ALTER TABLE ... SET
-- TABLESPACE on it only changes where future partitions go.

-- Which tablespace serves each tier. Tablespaces are created by a DBA (or, for the embedded
-- cluster, by tenant-pipelines): CREATE TABLESPACE cannot run inside a transaction, and its
-- folder must exist and belong to the server's OS user.
CREATE TABLE storage_tiers (
    storage_tier  text PRIMARY KEY CHECK (storage_tier IN ('hot', 'warm', 'cold')),
    tablespace    name NOT NULL,
    rank          integer NOT NULL UNIQUE
);
INSERT INTO storage_tiers (storage_tier, tablespace, rank) VALUES
    ('hot',  'pg_default',   1),
    ('warm', 'warm_storage', 2),
    ('cold', 'cold_storage', 3);

-- When months turn warm and cold: one row per tenant tier, or the NULL row for all tiers.
CREATE TABLE tiering_policy (
    tenant_tier  text UNIQUE NULLS NOT DISTINCT REFERENCES tier_limits (tier),
    warm_after   interval NOT NULL CHECK (warm_after > interval '0'),
    cold_after   interval NOT NULL,
    CHECK (cold_after > warm_after)
);
INSERT INTO tiering_policy (tenant_tier, warm_after, cold_after) VALUES (NULL, '30 days', '90 days');

ALTER TABLE storage_tiers OWNER TO billing_owner;
ALTER TABLE tiering_policy OWNER TO billing_owner;
GRANT SELECT ON storage_tiers, tiering_policy TO billing_app;

CREATE OR REPLACE FUNCTION fn_hot_tablespace() RETURNS text
    LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN tablespace = 'pg_default' THEN '' ELSE tablespace::text END
      FROM public.storage_tiers WHERE storage_tier = 'hot'
$$;

-- Every month partition of one tenant (or of all), where it is and where the policy wants it.
CREATE FUNCTION fn_tier_plan(p_tenant uuid DEFAULT NULL, p_as_of timestamptz DEFAULT now())
    RETURNS TABLE (
        partition_name    text,
        tenant            uuid,
        month_start       date,
        age               interval,
        current_tier      text,
        target_tier       text,
        current_tablespace name,
        target_tablespace name,
        misplaced_indexes integer,
        bytes             bigint,
        movable           boolean)
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    WITH db AS (
        SELECT dattablespace FROM pg_database WHERE datname = current_database()
    ), months AS (
        SELECT c.oid, c.relname::text AS partition_name, c.reltablespace,
               uuid(substr(p.relname, 19)) AS tenant,
               to_date(right(c.relname, 6), 'YYYYMM') AS month_start
          FROM pg_inherits pi
          JOIN pg_class p ON p.oid = pi.inhparent
          JOIN pg_class c ON c.oid = pi.inhrelid
         WHERE pi.inhparent IN (SELECT i.inhrelid FROM pg_inherits i
                                 WHERE i.inhparent = 'public.usage_events_mt'::regclass)
           AND c.relkind = 'r'
           AND c.relname ~ '^usage_events_mt_t_[0-9a-f]{32}_p[0-9]{6}$'
           AND (p_tenant IS NULL OR p.relname = public.fn_tenant_partition_name(p_tenant))
    ), aged AS (
        SELECT m.*,
               p_as_of - ((m.month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC') AS age,
               (SELECT spcname FROM pg_tablespace
                 WHERE oid = COALESCE(NULLIF(m.reltablespace, 0), (SELECT dattablespace FROM db))) AS current_tablespace,
               COALESCE((SELECT tc.tier FROM public.tenant_classifications tc
                          WHERE tc.organization_id = m.tenant), 'free') AS tenant_tier
          FROM months m
    ), targeted AS (
        SELECT a.*,
               CASE WHEN a.age >= pol.cold_after THEN 'cold'
                    WHEN a.age >= pol.warm_after THEN 'warm'
                    ELSE 'hot' END AS target_tier
          FROM aged a
          CROSS JOIN LATERAL (
              SELECT tp.warm_after, tp.cold_after FROM public.tiering_policy tp
               WHERE tp.tenant_tier = a.tenant_tier OR tp.tenant_tier IS NULL
               ORDER BY tp.tenant_tier NULLS LAST LIMIT 1) pol
    )
    SELECT t.partition_name, t.tenant, t.month_start, t.age,
           (SELECT st.storage_tier FROM public.storage_tiers st WHERE st.tablespace = t.current_tablespace
             ORDER BY st.rank LIMIT 1),
           t.target_tier, t.current_tablespace, st.tablespace,
           (SELECT count(*)::int FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid
             WHERE x.indrelid = t.oid
               AND (SELECT spcname FROM pg_tablespace
                     WHERE oid = COALESCE(NULLIF(ic.reltablespace, 0), (SELECT dattablespace FROM db)))
                   IS DISTINCT FROM st.tablespace),
           pg_total_relation_size(t.oid),
           t.age > interval '0'
      FROM targeted t
      JOIN public.storage_tiers st ON st.storage_tier = t.target_tier
     ORDER BY t.tenant, t.month_start
$$;

-- Move one partition, its TOAST table and its indexes to a tablespace, in the current
-- transaction. SET TABLESPACE rewrites under ACCESS EXCLUSIVE on the partition only: the
-- caller sets lock_timeout and retries, and moves only months whose rows are all old.
CREATE FUNCTION fn_move_partition(p_partition text, p_tablespace name) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel   regclass := to_regclass('public.' || quote_ident(p_partition));
    v_index regclass;
BEGIN
    IF v_rel IS NULL OR (SELECT relkind FROM pg_class WHERE oid = v_rel) <> 'r' THEN
        RAISE EXCEPTION 'partition %: no such table partition', p_partition
            USING HINT = 'only leaf partitions hold data; parents are never moved';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_tablespace WHERE spcname = p_tablespace) THEN
        RAISE EXCEPTION 'tablespace % does not exist', p_tablespace
            USING ERRCODE = 'undefined_object',
                  HINT = format('create it as a superuser, outside a transaction: CREATE TABLESPACE %I LOCATION ''/path'' '
                                '(the folder must exist, be empty and belong to the server''s OS user), '
                                'or point storage_tiers at an existing tablespace', p_tablespace);
    END IF;
    EXECUTE format('ALTER TABLE %s SET TABLESPACE %I', v_rel, p_tablespace);
    FOR v_index IN SELECT indexrelid::regclass FROM pg_index WHERE indrelid = v_rel LOOP
        EXECUTE format('ALTER INDEX %s SET TABLESPACE %I', v_index, p_tablespace);
    END LOOP;
    RETURN pg_total_relation_size(v_rel);
END
$$;

-- For DBAs: move every misplaced month partition (of one tenant, or all) in ONE transaction.
-- The pipelines do the same one partition per transaction, with retries, and freeze cold
-- partitions afterwards (VACUUM cannot run inside a function).
CREATE FUNCTION fn_tier_usage_data(p_tenant uuid DEFAULT NULL, p_as_of timestamptz DEFAULT now())
    RETURNS TABLE (partition_name text, from_tablespace name, to_tablespace name, bytes bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    PERFORM set_config('lock_timeout', (SELECT lock_timeout FROM public.partition_config), true);
    FOR r IN SELECT * FROM public.fn_tier_plan(p_tenant, p_as_of) p
              WHERE p.movable AND (p.current_tablespace IS DISTINCT FROM p.target_tablespace
                                   OR p.misplaced_indexes > 0) LOOP
        partition_name := r.partition_name;
        from_tablespace := r.current_tablespace;
        to_tablespace := r.target_tablespace;
        bytes := public.fn_move_partition(r.partition_name, r.target_tablespace);
        RETURN NEXT;
    END LOOP;
END
$$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'fn_tier_plan(uuid, timestamptz)', 'fn_move_partition(text, name)',
        'fn_tier_usage_data(uuid, timestamptz)'
    ] LOOP
        EXECUTE format('ALTER FUNCTION public.%s OWNER TO billing_owner', f);
        EXECUTE format('REVOKE ALL ON FUNCTION public.%s FROM PUBLIC', f);
    END LOOP;
END
$$;
