-- after: 0019
-- Promotion, last step: drop the tenant's exclusion CHECKs from the pool's leaves again.
CREATE OR REPLACE FUNCTION fn_pool_unexclude_tenant(p_tenant uuid) RETURNS integer
    LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT public.fn_pool_exclude_tenant(p_tenant, false) $$;
