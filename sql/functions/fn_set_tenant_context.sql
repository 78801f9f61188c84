-- after: 0001
-- grant: EXECUTE TO billing_app
-- Enter one tenant's context for the rest of the current transaction, stamped with the
-- transaction's start (fn_current_tenant_id() reads it in this transaction only). Refuses
-- NULL and tenants that do not exist. Takes the tenant's advisory lock SHARED (see
-- fn_tenant_lock_key). Returns the tenant id so calls can be chained. Not SECURITY DEFINER:
-- it has no reason to run with more rights than its caller.
CREATE OR REPLACE FUNCTION fn_set_tenant_context(p_tenant_id uuid) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_tenant_id IS NULL THEN
        RAISE EXCEPTION 'tenant context: the tenant id is NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass the organization''s UUID';
    END IF;
    PERFORM pg_catalog.set_config(
        'app.current_tenant',
        pg_catalog.extract('epoch', pg_catalog.transaction_timestamp())::text || p_tenant_id::text,
        true);
    IF NOT EXISTS (SELECT 1 FROM public.organizations o WHERE o.id = p_tenant_id) THEN
        PERFORM pg_catalog.set_config('app.current_tenant', '', true);
        RAISE EXCEPTION 'unknown tenant %', p_tenant_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'onboard the organization first, or check the id';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(public.fn_tenant_lock_key(p_tenant_id));
    RETURN p_tenant_id;
END
$$;
