-- after: 0001
-- Step 2 of onboarding a dedicated tenant: move its rows out of the pool and ATTACH its
-- partition, in one transaction: nothing lost, nothing doubled. The tenant's advisory lock,
-- taken EXCLUSIVE, holds off its writers (they take it shared in fn_set_tenant_context);
-- other tenants' writers never wait for the move. When the pool's leaves carry the tenant's
-- exclusion CHECKs (fn_pool_exclude_tenant), they are validated here, and ATTACH does not
-- scan the pool; without them (a DBA's one-call fn_create_tenant_partition), ATTACH scans
-- the pool under ACCESS EXCLUSIVE, which pooled writers wait for. A no-op when attached.
CREATE OR REPLACE FUNCTION fn_attach_tenant_partition(p_tenant uuid) RETURNS jsonb
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_part  text;
    v_leaf  regclass;
    v_moved bigint := 0;
    v_validated integer := 0;
BEGIN
    IF p_tenant IS NULL THEN
        RAISE EXCEPTION 'tenant partition: the tenant id is NULL' USING HINT = 'pass the organization''s UUID';
    END IF;
    v_part := public.fn_tenant_partition_name(p_tenant);
    IF to_regclass('public.' || quote_ident(v_part)) IS NULL THEN
        RAISE EXCEPTION 'tenant %: partition % does not exist', p_tenant, v_part
            USING HINT = 'run fn_prepare_tenant_partition() first, or fn_create_tenant_partition()';
    END IF;
    IF public.fn_is_partition_of(v_part, 'usage_events_mt') THEN
        PERFORM public.fn_record_placement(p_tenant, 'partition', v_part);
        RETURN jsonb_build_object('tenant', p_tenant, 'partition', v_part, 'attached_now', false, 'rows_moved', 0,
                                  'checks_validated', 0);
    END IF;
    PERFORM set_config('lock_timeout', (SELECT lock_timeout FROM public.partition_config), true);
    PERFORM pg_advisory_xact_lock(public.fn_tenant_lock_key(p_tenant));
    EXECUTE format('WITH moved AS (DELETE FROM public.usage_events_mt_default WHERE organization_id = %L::uuid'
                   ' RETURNING *) INSERT INTO public.%I SELECT * FROM moved', p_tenant, v_part);
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    FOR v_leaf IN SELECT c.conrelid::regclass FROM pg_constraint c
                   WHERE c.conname = public.fn_pool_exclusion_name(p_tenant) AND NOT c.convalidated
                     AND c.conrelid IN (SELECT relid FROM pg_partition_tree('public.usage_events_mt_default'::regclass)) LOOP
        EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', v_leaf, public.fn_pool_exclusion_name(p_tenant));
        v_validated := v_validated + 1;
    END LOOP;
    PERFORM public.fn_cap_lock_timeout(100);
    EXECUTE format('ALTER TABLE public.usage_events_mt ATTACH PARTITION public.%I FOR VALUES IN (%L)',
                   v_part, p_tenant);
    PERFORM public.fn_record_placement(p_tenant, 'partition', v_part);
    RETURN jsonb_build_object('tenant', p_tenant, 'partition', v_part, 'attached_now', true, 'rows_moved', v_moved,
                              'checks_validated', v_validated);
END
$$;
