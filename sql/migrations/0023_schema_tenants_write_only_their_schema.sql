-- A tenant placed in a schema of its own writes there, never in the shared tables. Its routed
-- names (usage_events, subscriptions, invoices, payment_methods) already reach its schema; a
-- qualified name (public.invoices) or a search_path set by hand would still reach the shared
-- table, where RLS accepts the tenant's own rows: the row would be acknowledged, then never
-- read by the tenant's routed queries, and lost to every backup and move that follows the
-- placement. During a move the capture trigger refuses such a write after the cutover; this
-- refuses it for good.
--
-- One RESTRICTIVE policy per command that writes (INSERT, UPDATE) on each shared table a
-- tenant schema has its own copy of. Restrictive policies are AND-ed with the permissive
-- tenant_isolation policy. They apply to writes only, so no read plan (nor its partition
-- pruning) changes; the check reads one setting per row (fn_tenant_routed_to_schema).
-- billing_app cannot reach a partition directly, so the parent's policies are enough.
-- DELETE is left to tenant_isolation: a schema tenant has no rows left in the shared tables
-- once its move has removed the old copy.
--
-- Not on a Citus coordinator (issue 19): there are no schema tenants there (sql/citus has its
-- own fn_set_tenant_context, which routes nowhere), and Citus distributes the tables after this
-- migration, refusing policies whose functions it has not propagated yet.
DO $$
DECLARE
    t text;
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['usage_events_mt', 'subscriptions', 'invoices', 'payment_methods'] LOOP
        EXECUTE format('CREATE POLICY schema_tenants_insert_into_their_schema ON public.%I AS RESTRICTIVE '
                       'FOR INSERT TO PUBLIC WITH CHECK (NOT public.fn_tenant_routed_to_schema())', t);
        EXECUTE format('CREATE POLICY schema_tenants_update_in_their_schema ON public.%I AS RESTRICTIVE '
                       'FOR UPDATE TO PUBLIC USING (true) WITH CHECK (NOT public.fn_tenant_routed_to_schema())', t);
    END LOOP;
END
$$;
