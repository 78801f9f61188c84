-- after: 0021
-- For DBAs: move every misplaced month partition (of one tenant, or all) in ONE transaction.
-- The pipelines do the same one partition per transaction, with retries, and freeze cold
-- partitions afterwards (VACUUM cannot run inside a function). partition_schema: public, or a
-- schema tenant's schema (fn_tier_plan).
CREATE OR REPLACE FUNCTION fn_tier_usage_data(p_tenant uuid DEFAULT NULL, p_as_of timestamptz DEFAULT now())
    RETURNS TABLE (partition_name text, from_tablespace name, to_tablespace name, bytes bigint,
                   partition_schema name)
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
        partition_schema := r.partition_schema;
        bytes := public.fn_move_partition(r.partition_name, r.target_tablespace, r.partition_schema);
        RETURN NEXT;
    END LOOP;
END
$$;
