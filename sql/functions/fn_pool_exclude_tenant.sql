-- after: 0019
-- Promotion, step 1 (its own short transaction; the caller holds the tenant's advisory lock
-- so that none of its rows enter the pool until the attach): a NOT VALID CHECK
-- (organization_id <> tenant) on every pool leaf. With p_exclude false (the last step,
-- fn_pool_unexclude_tenant), the CHECKs are dropped again. Each ADD or DROP takes ACCESS
-- EXCLUSIVE on one leaf for an instant. Returns how many leaves it changed.
CREATE OR REPLACE FUNCTION fn_pool_exclude_tenant(p_tenant uuid, p_exclude boolean DEFAULT true) RETURNS integer
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name text := public.fn_pool_exclusion_name(p_tenant);
    v_leaf regclass;
    v_n    integer := 0;
BEGIN
    PERFORM set_config('lock_timeout', (SELECT lock_timeout FROM public.partition_config), true);
    PERFORM public.fn_cap_lock_timeout(100);
    FOR v_leaf IN SELECT t.relid FROM pg_partition_tree('public.usage_events_mt_default'::regclass) t
                   WHERE t.isleaf AND p_exclude <> EXISTS (SELECT 1 FROM pg_constraint c
                                                           WHERE c.conrelid = t.relid AND c.conname = v_name) LOOP
        IF p_exclude THEN
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (organization_id <> %L::uuid) NOT VALID',
                           v_leaf, v_name, p_tenant);
        ELSE
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', v_leaf, v_name);
        END IF;
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END
$$;
