-- after: 0021
-- Every month partition of one tenant (or of all), where it is and where the policy wants it.
-- The pool's months age like a tenant's and move by the global policy (the tiering_policy row
-- for all tiers): listed with a NULL tenant when asked for every partition; asked for one
-- tenant, it lists that tenant's months only. A schema tenant's months (placement kind
-- 'schema': <schema>.usage_events_pYYYYMM, not its DEFAULT _rest) age and move like a dedicated
-- tenant's, by its tier's policy. partition_schema is where the partition is: public, or the
-- tenant's schema (month names repeat from schema to schema).
CREATE OR REPLACE FUNCTION fn_tier_plan(p_tenant uuid DEFAULT NULL, p_as_of timestamptz DEFAULT now())
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
        movable           boolean,
        partition_schema  name)
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    WITH db AS (
        SELECT dattablespace FROM pg_database WHERE datname = current_database()
    ), months AS (
        SELECT c.oid, c.relname::text AS partition_name, c.reltablespace,
               CASE WHEN p.relname = 'usage_events_mt_default' THEN NULL ELSE uuid(substr(p.relname, 19)) END AS tenant,
               to_date(right(c.relname, 6), 'YYYYMM') AS month_start, 'public'::name AS partition_schema
          FROM pg_inherits pi
          JOIN pg_class p ON p.oid = pi.inhparent
          JOIN pg_class c ON c.oid = pi.inhrelid
         WHERE pi.inhparent IN (SELECT i.inhrelid FROM pg_inherits i
                                 WHERE i.inhparent = 'public.usage_events_mt'::regclass)
           AND c.relkind = 'r'
           AND (c.relname ~ '^usage_events_mt_t_[0-9a-f]{32}_p[0-9]{6}$'
                OR (p.relname = 'usage_events_mt_default' AND c.relname ~ '^usage_events_mt_pool_p[0-9]{6}$'))
           AND (p_tenant IS NULL OR p.relname = public.fn_tenant_partition_name(p_tenant))
        UNION ALL
        SELECT c.oid, c.relname::text, c.reltablespace, tp.organization_id,
               to_date(right(c.relname, 6), 'YYYYMM'), n.nspname
          FROM public.tenant_placements tp
          JOIN pg_namespace n ON n.nspname = tp.location
          JOIN pg_class p ON p.relnamespace = n.oid AND p.relname = 'usage_events' AND p.relkind = 'p'
          JOIN pg_inherits pi ON pi.inhparent = p.oid
          JOIN pg_class c ON c.oid = pi.inhrelid
         WHERE tp.kind = 'schema'
           AND c.relkind = 'r'
           AND c.relname ~ '^usage_events_p[0-9]{6}$'
           AND (p_tenant IS NULL OR tp.organization_id = p_tenant)
    ), aged AS (
        SELECT m.*,
               p_as_of - ((m.month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC') AS age,
               (SELECT spcname FROM pg_tablespace
                 WHERE oid = COALESCE(NULLIF(m.reltablespace, 0), (SELECT dattablespace FROM db))) AS current_tablespace,
               CASE WHEN m.tenant IS NULL THEN NULL
                    ELSE COALESCE((SELECT tc.tier FROM public.tenant_classifications tc
                                    WHERE tc.organization_id = m.tenant), 'free') END AS tenant_tier
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
           t.age > interval '0',
           t.partition_schema
      FROM targeted t
      JOIN public.storage_tiers st ON st.storage_tier = t.target_tier
     ORDER BY t.tenant NULLS FIRST, t.partition_schema, t.month_start
$$;
