-- after: 0020
-- Record where a tenant lives (tenant_placements, sql/migrations/0018), in the caller's
-- transaction: the same one that moved it. Idempotent; 'since' changes only when the place does.
-- While an online move of the tenant copies (tenant_pipelines.tenant_moves, step copying or
-- verified) the registry is the move's: the tenant stays where it is until the cutover, which
-- records the new place itself, so a step the move runs (attaching the partition it moves
-- into) records nothing.
CREATE OR REPLACE FUNCTION fn_record_placement(p_tenant uuid, p_kind text, p_location text) RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO public.tenant_placements AS p (organization_id, kind, location)
    SELECT p_tenant, p_kind, p_location
     WHERE NOT EXISTS (SELECT 1 FROM tenant_pipelines.tenant_moves m
                        WHERE m.organization_id = p_tenant AND m.step <> 'cut_over')
    ON CONFLICT (organization_id) DO UPDATE
       SET kind = EXCLUDED.kind, location = EXCLUDED.location, state = 'placed', since = now()
     WHERE (p.kind, p.location, p.state) IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.location, 'placed')
$$;
