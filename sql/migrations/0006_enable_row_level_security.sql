-- Every tenant table: RLS enabled and FORCED (the owner obeys it too), with explicit USING
-- and WITH CHECK. Superusers and BYPASSRLS roles always bypass RLS; billing_app is neither.
--
-- The policies call fn_current_tenant_id() directly, not wrapped in a sub-select: on the
-- partitioned usage_events_mt that lets the executor prune to one tenant at start-up.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT * FROM (VALUES
            ('organizations',          'id'),
            ('subscriptions',          'organization_id'),
            ('invoices',               'organization_id'),
            ('payment_methods',        'organization_id'),
            ('usage_events_mt',        'organization_id'),
            ('tenant_classifications', 'organization_id'),
            ('tenant_schemas',         'organization_id'),
            ('tenant_backup_config',   'organization_id')
        ) AS v(table_name, tenant_column)
    LOOP
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t.table_name);
        EXECUTE format('ALTER TABLE public.%I FORCE ROW LEVEL SECURITY', t.table_name);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON public.%I AS PERMISSIVE FOR ALL TO PUBLIC '
            'USING (%I = public.fn_current_tenant_id()) '
            'WITH CHECK (%I = public.fn_current_tenant_id())',
            t.table_name, t.tenant_column, t.tenant_column);
    END LOOP;
END
$$;

-- Partitions are reached through the parent only: billing_app holds no privilege on them,
-- and each one has RLS enabled and forced with no policy, so that a privilege granted by
-- mistake still shows nothing. (Queries through the parent apply the parent's policies.)
ALTER TABLE usage_events_mt_default ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_events_mt_default FORCE ROW LEVEL SECURITY;
REVOKE ALL ON usage_events_mt_default FROM PUBLIC;

-- What applications may do. Organizations are created by onboarding, not by applications.
GRANT SELECT, UPDATE ON organizations TO billing_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON subscriptions, invoices, payment_methods TO billing_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON usage_events_mt TO billing_app;  -- usage_events: its own file
GRANT SELECT ON tenant_classifications, tenant_schemas, tenant_backup_config, tier_limits TO billing_app;
