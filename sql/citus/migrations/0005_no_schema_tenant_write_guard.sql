-- sql/migrations/0023's RESTRICTIVE policies refuse a schema tenant's writes in the shared
-- tables. There are no schema tenants on Citus yet, and a coordinator migrated from scratch never
-- creates them (0023 skips Citus); a single-node database moved onto a coordinator brings them,
-- and they go here, so that both kinds of coordinator have the same policies: tenant_isolation
-- alone (Citus propagates the DROP to every shard).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['usage_events_mt', 'subscriptions', 'invoices', 'payment_methods'] LOOP
        EXECUTE format('DROP POLICY IF EXISTS schema_tenants_insert_into_their_schema ON public.%I', t);
        EXECUTE format('DROP POLICY IF EXISTS schema_tenants_update_in_their_schema ON public.%I', t);
    END LOOP;
END
$$;
