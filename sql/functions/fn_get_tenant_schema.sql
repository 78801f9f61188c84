-- after: 0020
-- grant: EXECUTE TO billing_app
-- The seed's question: the schema a tenant lives in, or NULL when its rows are in the shared
-- tables. From the registry (tenant_placements), which a tenant's own context can read.
CREATE OR REPLACE FUNCTION fn_get_tenant_schema(p_tenant uuid) RETURNS text
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.location FROM public.tenant_placements p WHERE p.organization_id = p_tenant AND p.kind = 'schema'
$$;
