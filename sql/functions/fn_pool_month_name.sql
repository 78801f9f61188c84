-- after: 0001
CREATE OR REPLACE FUNCTION fn_pool_month_name(p_month date) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$ SELECT 'usage_events_mt_pool_p' || pg_catalog.to_char(p_month, 'YYYYMM') $$;
