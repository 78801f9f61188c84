-- Migration 0023 refuses a schema tenant's writes in the shared tables by the route that
-- fn_set_tenant_context records (app.tenant_route). That setting is the client's to write: a
-- client that clears it after the call (set_config('app.tenant_route', '', true)), or that
-- writes the stamped context by hand without calling fn_set_tenant_context (no route, no
-- search_path), had its row accepted in public.invoices and the rest: acknowledged, never
-- read by the tenant's routed queries, outside its backups and moves, and blocking its next
-- move ("rows of this tenant that no move put there").
--
-- These RESTRICTIVE policies ask the registry instead, which billing_app cannot write: the
-- current tenant (fn_current_tenant_id(), the context every write must match anyway under
-- tenant_isolation) is refused the shared tables while tenant_placements says it lives in a
-- schema. The subquery does not depend on the row, so it runs once per statement (an InitPlan
-- on tenant_placements' key), not once per row: ingest's multi-row statements pay it once.
-- A statement in READ COMMITTED reads the registry as of its own start; a move's cutover
-- changes the row under the tenant's exclusive lock, which every fn_set_tenant_context caller
-- holds shared (a REPEATABLE READ snapshot older than a cutover is refused by
-- fn_check_tenant_snapshot when the context is set by the function).
--
-- TO billing_app (and its members) only: the movers run as the owner and copy a tenant back
-- into the shared tables before the cutover flips its registry row. 0023's policies stay:
-- they also cover a route recorded for a tenant the registry has not flipped yet.
-- Not on a Citus coordinator (no schema tenants there; see 0023).
DO $$
DECLARE
    t text;
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['usage_events_mt', 'subscriptions', 'invoices', 'payment_methods'] LOOP
        EXECUTE format('CREATE POLICY schema_tenants_placed_in_a_schema_insert ON public.%I AS RESTRICTIVE '
                       'FOR INSERT TO billing_app WITH CHECK (NOT EXISTS ('
                       'SELECT FROM public.tenant_placements p WHERE p.organization_id = public.fn_current_tenant_id()'
                       ' AND p.kind = ''schema''))', t);
        EXECUTE format('CREATE POLICY schema_tenants_placed_in_a_schema_update ON public.%I AS RESTRICTIVE '
                       'FOR UPDATE TO billing_app USING (true) WITH CHECK (NOT EXISTS ('
                       'SELECT FROM public.tenant_placements p WHERE p.organization_id = public.fn_current_tenant_id()'
                       ' AND p.kind = ''schema''))', t);
    END LOOP;
END
$$;
