-- after: 0001
-- grant: EXECUTE TO PUBLIC
CREATE OR REPLACE FUNCTION fn_tenant_partition_name(p_tenant uuid) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'usage_events_mt_t_' || pg_catalog.replace(p_tenant::text, '-', '') $$;
