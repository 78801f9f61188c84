-- after: 0020
-- grant: EXECUTE TO billing_app
-- The schema a tenant's transaction is routed to, or NULL when it lives in the shared tables:
-- read from the registry in the caller's context (RLS lets a tenant see its own row only).
-- A schema behind the tenant tables' migrations (tenant_tables_version) is refused, never
-- routed to.
CREATE OR REPLACE FUNCTION fn_tenant_schema_route(p_tenant uuid) RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schema   text;
    v_at       text;
    v_required text;
BEGIN
    SELECT p.location, ts.migrated_to INTO v_schema, v_at
      FROM public.tenant_placements p
      LEFT JOIN public.tenant_schemas ts ON ts.organization_id = p.organization_id
     WHERE p.organization_id = p_tenant AND p.kind = 'schema';
    IF v_schema IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT v.version INTO v_required FROM public.tenant_tables_version v;
    IF v_at IS NULL OR v_at < v_required THEN
        RAISE EXCEPTION 'tenant %: schema % is at migration %, the tenant tables at %', p_tenant, v_schema,
                        COALESCE(v_at, 'none'), v_required
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'run tenant-pipelines db migrate: it brings every tenant schema up to date';
    END IF;
    RETURN v_schema;
END
$$;
