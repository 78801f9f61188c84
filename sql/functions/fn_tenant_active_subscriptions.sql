-- after: 0001
-- The tenant's active subscriptions, counted where its subscriptions live: its schema's
-- subscriptions for a schema tenant (tenant_placements kind 'schema'), the shared table for
-- any other. For operators (admin roles), like vw_tenant_metrics that calls it.
CREATE OR REPLACE FUNCTION fn_tenant_active_subscriptions(p_tenant uuid) RETURNS bigint
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schema text := public.fn_get_tenant_schema(p_tenant);
    v_count  bigint;
BEGIN
    IF v_schema IS NULL THEN
        SELECT count(*) INTO v_count FROM public.subscriptions s
         WHERE s.organization_id = p_tenant AND s.status = 'active';
    ELSE
        EXECUTE format('SELECT count(*) FROM %I.subscriptions s WHERE s.organization_id = $1 AND s.status = ''active''',
                       v_schema)
            INTO v_count USING p_tenant;
    END IF;
    RETURN v_count;
END
$$;
