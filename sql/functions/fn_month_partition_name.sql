-- after: 0001
CREATE OR REPLACE FUNCTION fn_month_partition_name(p_tenant uuid, p_month date) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$ SELECT public.fn_tenant_partition_name(p_tenant) || '_p' || pg_catalog.to_char(p_month, 'YYYYMM') $$;

ALTER FUNCTION fn_month_partition_name(uuid, date) OWNER TO billing_owner;
