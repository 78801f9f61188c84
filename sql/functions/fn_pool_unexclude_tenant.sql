-- after: 0001
-- Promotion, last step: drop those CHECKs again (each an instant under ACCESS EXCLUSIVE).
CREATE OR REPLACE FUNCTION fn_pool_unexclude_tenant(p_tenant uuid) RETURNS integer
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name text := public.fn_pool_exclusion_name(p_tenant);
    v_leaf regclass;
    v_n    integer := 0;
BEGIN
    PERFORM set_config('lock_timeout', (SELECT lock_timeout FROM public.partition_config), true);
    PERFORM public.fn_cap_lock_timeout(100);
    FOR v_leaf IN SELECT conrelid::regclass FROM pg_constraint WHERE conname = v_name
                     AND conrelid IN (SELECT relid FROM pg_partition_tree('public.usage_events_mt_default'::regclass)) LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', v_leaf, v_name);
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END
$$;

ALTER FUNCTION fn_pool_unexclude_tenant(uuid) OWNER TO billing_owner;
REVOKE ALL ON FUNCTION fn_pool_unexclude_tenant(uuid) FROM PUBLIC;
