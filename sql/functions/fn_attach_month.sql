-- after: 0001
-- A month table, created already, ATTACHed to p_parent for its month, with that month's rows
-- moved into it first out of p_from (a detached edge of the pool, or a tenant's _rest), if
-- given: in the caller's transaction, so nothing is lost or doubled. Returns the rows moved.
CREATE OR REPLACE FUNCTION fn_attach_month(p_parent text, p_leaf text, p_month date, p_from text) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_from timestamptz := p_month::timestamp AT TIME ZONE 'UTC';
    v_to   timestamptz := (p_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    v_n    bigint := 0;
BEGIN
    IF p_from IS NOT NULL THEN
        EXECUTE format('WITH moved AS (DELETE FROM public.%I WHERE "timestamp" >= %L AND "timestamp" < %L'
                       ' RETURNING *) INSERT INTO public.%I SELECT * FROM moved', p_from, v_from, v_to, p_leaf);
        GET DIAGNOSTICS v_n = ROW_COUNT;
    END IF;
    EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION public.%I FOR VALUES FROM (%L) TO (%L)',
                   p_parent, p_leaf, v_from, v_to);
    RETURN v_n;
END
$$;
