-- after: 0004
-- What the seed's view meant, per organization, wherever each tenant lives (its partition, the
-- pool, or a schema of its own: fn_tenant_active_subscriptions, fn_tenant_usage_stats). For
-- operators (admin roles): it reads every tenant's partitions and schemas, which billing_app cannot.
CREATE OR REPLACE VIEW vw_tenant_metrics WITH (security_invoker = true) AS
    SELECT o.id AS organization_id,
           o.name AS organization_name,
           COALESCE(tc.tier, 'free') AS tier,
           public.fn_tenant_active_subscriptions(o.id) AS active_subscriptions,
           u.events_last_24h,
           u.events_this_month,
           u.storage_bytes,
           pg_size_pretty(u.storage_bytes) AS storage_used,
           u.last_activity
      FROM public.organizations o
      LEFT JOIN public.tenant_classifications tc ON tc.organization_id = o.id
     CROSS JOIN LATERAL public.fn_tenant_usage_stats(o.id) u;
