-- after: 0001
-- A new partition: owned by billing_owner, RLS forced with no policy (queries go through the
-- parent, whose policies apply), no privileges for anyone else.
CREATE OR REPLACE FUNCTION fn_secure_partition(p_table text) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('ALTER TABLE public.%I OWNER TO billing_owner', p_table);
    EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', p_table);
    EXECUTE format('ALTER TABLE public.%I FORCE ROW LEVEL SECURITY', p_table);
    EXECUTE format('REVOKE ALL ON public.%I FROM PUBLIC, billing_app', p_table);
END
$$;
