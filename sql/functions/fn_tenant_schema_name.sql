-- after: 0001
-- grant: EXECUTE TO PUBLIC
-- The name a tenant's own schema gets: tenant_<32 hex>. Where a tenant lives is the registry's
-- answer (tenant_placements), not this name's.
CREATE OR REPLACE FUNCTION fn_tenant_schema_name(p_tenant uuid) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'tenant_' || pg_catalog.replace(p_tenant::text, '-', '') $$;
