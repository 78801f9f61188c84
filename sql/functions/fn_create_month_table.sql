-- after: 0001
-- A month table for p_parent (the pool, or a tenant's partition), created standalone if it is
-- not there yet: LIKE the parent, its columns, defaults, indexes and CHECKs (a tenant's), plus
-- one for the month, which lets ATTACH skip scanning it for rows outside the month; secured
-- like every partition. Returns whether it was created.
CREATE OR REPLACE FUNCTION fn_create_month_table(p_parent text, p_leaf text, p_month date) RETURNS boolean
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF to_regclass('public.' || quote_ident(p_leaf)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE public.%I (LIKE public.%I INCLUDING DEFAULTS INCLUDING INDEXES'
                   ' INCLUDING CONSTRAINTS)', p_leaf, p_parent);
    EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT month_bounds_check'
                   ' CHECK ("timestamp" >= %L AND "timestamp" < %L)', p_leaf,
                   p_month::timestamp AT TIME ZONE 'UTC', (p_month + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    PERFORM public.fn_secure_partition(p_leaf);
    RETURN true;
END
$$;
