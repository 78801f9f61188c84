-- after: 0001
-- grant: EXECUTE TO billing_app
-- The seed's per-tier limits (work_mem, statement_timeout), read from tier_limits and set
-- transaction-locally, so they cannot outlive the transaction on a pooled connection.
-- A tenant without a classification gets the free tier. Returns the tier.
CREATE OR REPLACE FUNCTION fn_set_tenant_resources(p_tenant_id uuid) RETURNS text
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tier     text;
    v_work_mem text;
    v_timeout  text;
BEGIN
    IF p_tenant_id IS NULL OR p_tenant_id IS DISTINCT FROM public.fn_current_tenant_id() THEN
        RAISE EXCEPTION 'tenant resources: % is not the tenant in context', p_tenant_id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'call fn_set_tenant_context() for that tenant first, in the same transaction';
    END IF;
    SELECT tc.tier INTO v_tier
        FROM public.tenant_classifications tc
        WHERE tc.organization_id = p_tenant_id;
    v_tier := COALESCE(v_tier, 'free');
    SELECT tl.work_mem, tl.statement_timeout INTO v_work_mem, v_timeout
        FROM public.tier_limits tl
        WHERE tl.tier = v_tier;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant resources: tier % has no row in tier_limits', v_tier
            USING HINT = 'add the tier to tier_limits';
    END IF;
    PERFORM pg_catalog.set_config('work_mem', v_work_mem, true);
    PERFORM pg_catalog.set_config('statement_timeout', v_timeout, true);
    RETURN v_tier;
END
$$;
