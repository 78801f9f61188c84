-- after: 0001
-- For DBAs: both steps in one call (one transaction). Idempotent; re-run it after any failure.
CREATE OR REPLACE FUNCTION fn_create_tenant_partition(p_tenant uuid, p_premake_months integer DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_prepared jsonb := public.fn_prepare_tenant_partition(p_tenant, p_premake_months);
BEGIN
    IF v_prepared->>'layout' = 'pooled' THEN
        RETURN v_prepared || jsonb_build_object('attached_now', false, 'rows_moved', 0);
    END IF;
    RETURN v_prepared || public.fn_attach_tenant_partition(p_tenant);
END
$$;
