-- The tenant context is transaction-local: set_config(..., true). A pooled server connection
-- (PgBouncer, transaction mode) can never hand one tenant's context to the next client.
-- None of these functions is SECURITY DEFINER: they have no reason to run with more rights
-- than their caller.

-- NULL when the context is unset, or empty: a setting that went out of scope reads as ''.
-- Plain SQL, STABLE, no SET clause: it is inlined into policies, so partition pruning on
-- organization_id = fn_current_tenant_id() happens at executor start-up.
CREATE FUNCTION fn_current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT NULLIF(pg_catalog.current_setting('app.current_tenant', true), '')::pg_catalog.uuid
$$;

-- One advisory lock per tenant serialises a tenant's writers with changes to its partitions
-- (sql/0007). Why: a writer plans its INSERT with the partition layout of the moment. If a
-- partition is attached between that and the row's routing (into DEFAULT or the tenant's
-- _rest), the row fails the partition check and the INSERT errors. So every tenant
-- transaction takes the lock SHARED here, before any INSERT starts, and attaching takes it
-- EXCLUSIVE: only that tenant's writers wait, for the attach only; other tenants never do.
CREATE FUNCTION fn_tenant_lock_key(p_tenant uuid) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT pg_catalog.hashtextextended(p_tenant::text, 7364) $$;

-- Enter one tenant's context for the rest of the current transaction. Refuses NULL and
-- tenants that do not exist. Returns the tenant id so calls can be chained.
CREATE FUNCTION fn_set_tenant_context(p_tenant_id uuid) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_tenant_id IS NULL THEN
        RAISE EXCEPTION 'tenant context: the tenant id is NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass the organization''s UUID';
    END IF;
    PERFORM pg_catalog.set_config('app.current_tenant', p_tenant_id::text, true);
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

-- The seed's per-tier limits (work_mem, statement_timeout), read from tier_limits and set
-- transaction-locally, so they cannot outlive the transaction on a pooled connection.
-- A tenant without a classification gets the free tier. Returns the tier.
CREATE FUNCTION fn_set_tenant_resources(p_tenant_id uuid) RETURNS text
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

ALTER FUNCTION fn_tenant_lock_key(uuid) OWNER TO billing_owner;
ALTER FUNCTION fn_current_tenant_id() OWNER TO billing_owner;
ALTER FUNCTION fn_set_tenant_context(uuid) OWNER TO billing_owner;
ALTER FUNCTION fn_set_tenant_resources(uuid) OWNER TO billing_owner;
REVOKE ALL ON FUNCTION fn_set_tenant_context(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION fn_set_tenant_resources(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fn_set_tenant_context(uuid) TO billing_app;
GRANT EXECUTE ON FUNCTION fn_set_tenant_resources(uuid) TO billing_app;
