-- after: 0001
-- Record where a tenant lives (tenant_placements, sql/migrations/0018), in the caller's
-- transaction: the same one that moved it. Idempotent; 'since' changes only when the place does.
CREATE OR REPLACE FUNCTION fn_record_placement(p_tenant uuid, p_kind text, p_location text) RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO public.tenant_placements AS p (organization_id, kind, location)
    VALUES (p_tenant, p_kind, p_location)
    ON CONFLICT (organization_id) DO UPDATE
       SET kind = EXCLUDED.kind, location = EXCLUDED.location, state = 'placed', since = now()
     WHERE (p.kind, p.location, p.state) IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.location, 'placed')
$$;
