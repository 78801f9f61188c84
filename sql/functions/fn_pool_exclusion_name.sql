-- after: 0001
CREATE OR REPLACE FUNCTION fn_pool_exclusion_name(p_tenant uuid) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'pool_excludes_' || pg_catalog.replace(p_tenant::text, '-', '') $$;
