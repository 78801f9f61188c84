-- after: 0004
-- What the seed's view meant, per organization, wherever each tenant lives (its partition, the
-- pool, or a schema of its own: fn_tenant_active_subscriptions, fn_tenant_usage_stats). For
-- operators (admin roles): it reads every tenant's partitions and schemas, which billing_app cannot.
CREATE OR REPLACE VIEW vw_tenant_metrics WITH (security_invoker = true) AS
    -- The tenants first, materialised: on a Citus coordinator organizations is distributed, and
    -- the per-tenant functions below run queries of their own, which Citus runs only from the
    -- coordinator (never from a query pushed down to a shard); on one server it changes nothing.
    WITH tenants AS MATERIALIZED (
        SELECT o.id, o.name, COALESCE(tc.tier, 'free') AS tier
          FROM public.organizations o
          LEFT JOIN public.tenant_classifications tc ON tc.organization_id = o.id)
    SELECT t.id AS organization_id,
           t.name AS organization_name,
           t.tier,
           public.fn_tenant_active_subscriptions(t.id) AS active_subscriptions,
           u.events_last_24h,
           u.events_this_month,
           u.storage_bytes,
           pg_size_pretty(u.storage_bytes) AS storage_used,
           u.last_activity
      FROM tenants t
     CROSS JOIN LATERAL public.fn_tenant_usage_stats(t.id) u;
