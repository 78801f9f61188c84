-- Citus (replaces sql/functions/fn_tenant_usage_stats.sql on a coordinator). Usage figures of
-- one tenant on Citus, where a tenant's rows of every table are in one shard group: its events
-- counted in usage_events_mt with the tenant's predicate (one shard, on one worker), and its
-- storage as the bytes of its rows in the four tenant tables (pg_column_size: without indexes
-- and free space, so lower than the disk its shards take; an isolated tenant's shards are
-- listed with their sizes in citus_shards). Called per tenant from the coordinator only
-- (vw_tenant_metrics materialises the tenants first): a function that queries distributed
-- tables cannot run inside a query pushed down to a shard.
CREATE OR REPLACE FUNCTION fn_tenant_usage_stats(p_tenant uuid, p_now timestamptz DEFAULT now())
    RETURNS TABLE (events_last_24h bigint, events_this_month bigint, last_activity timestamptz,
                   storage_bytes bigint)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_month timestamptz := date_trunc('month', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    v_bytes bigint;
BEGIN
    SELECT count(*) FILTER (WHERE e."timestamp" > p_now - interval '24 hours'),
           count(*) FILTER (WHERE e."timestamp" >= v_month),
           max(e."timestamp"),
           COALESCE(sum(pg_column_size(e.*)), 0)
      INTO events_last_24h, events_this_month, last_activity, storage_bytes
      FROM public.usage_events_mt e
     WHERE e.organization_id = p_tenant AND e."timestamp" <= p_now;
    SELECT COALESCE(sum(b), 0) INTO v_bytes FROM (
        SELECT sum(pg_column_size(s.*)) AS b FROM public.subscriptions s WHERE s.organization_id = p_tenant
        UNION ALL SELECT sum(pg_column_size(i.*)) FROM public.invoices i WHERE i.organization_id = p_tenant
        UNION ALL SELECT sum(pg_column_size(m.*)) FROM public.payment_methods m WHERE m.organization_id = p_tenant) x;
    storage_bytes := storage_bytes + v_bytes;
    RETURN NEXT;
END
$$;
