-- after: 0001
-- grant: EXECUTE TO PUBLIC
CREATE OR REPLACE FUNCTION fn_month_partition_name(p_tenant uuid, p_month date) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$ SELECT public.fn_tenant_partition_name(p_tenant) || '_p' || pg_catalog.to_char(p_month, 'YYYYMM') $$;
