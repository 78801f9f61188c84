-- Per-tenant metrics, correct at scale.
--
-- The seed's vw_tenant_metrics joined subscriptions and usage events on the organization, so
-- every event was counted once per active subscription (fan-out), summed
-- pg_total_relation_size of a partitioned parent (always 0), and failed on the regclass cast
-- for a tenant without a partition. Here each measure is computed on its own, per tenant,
-- from that tenant's own partitions only (dynamic SQL on its partition: no plan over every
-- tenant's leaves), and a missing partition is simply zero.

-- Usage figures of one tenant, from its own partition tree plus any rows still in DEFAULT,
-- and the storage of its partition tree plus its enterprise schema.
CREATE FUNCTION fn_tenant_usage_stats(p_tenant uuid, p_now timestamptz DEFAULT now())
    RETURNS TABLE (events_last_24h bigint, events_this_month bigint, last_activity timestamptz,
                   storage_bytes bigint)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_part   regclass := to_regclass('public.' || quote_ident(public.fn_tenant_partition_name(p_tenant)));
    v_month  timestamptz := date_trunc('month', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    v_24h    bigint := 0;
    v_month_n bigint := 0;
    v_last   timestamptz;
    v_bytes  bigint := 0;
    d_24h    bigint;
    d_month  bigint;
    d_last   timestamptz;
BEGIN
    IF v_part IS NOT NULL THEN
        EXECUTE format('SELECT count(*), max("timestamp") FROM %s'
                       ' WHERE "timestamp" > $1 - interval ''24 hours'' AND "timestamp" <= $1', v_part)
            INTO v_24h, v_last USING p_now;
        EXECUTE format('SELECT count(*) FROM %s WHERE "timestamp" >= $1 AND "timestamp" <= $2', v_part)
            INTO v_month_n USING v_month, p_now;
        IF v_last IS NULL THEN
            EXECUTE format('SELECT max("timestamp") FROM %s WHERE "timestamp" <= $1', v_part)
                INTO v_last USING p_now;
        END IF;
        SELECT COALESCE(sum(pg_total_relation_size(t.relid)), 0) INTO v_bytes
          FROM pg_partition_tree(v_part) t;
    END IF;
    SELECT count(*) FILTER (WHERE d."timestamp" > p_now - interval '24 hours' AND d."timestamp" <= p_now),
           count(*) FILTER (WHERE d."timestamp" >= v_month AND d."timestamp" <= p_now),
           max(d."timestamp") FILTER (WHERE d."timestamp" <= p_now)
      INTO d_24h, d_month, d_last
      FROM public.usage_events_mt_default d WHERE d.organization_id = p_tenant;
    v_bytes := v_bytes + COALESCE((
        SELECT sum(pg_total_relation_size(c.oid))
          FROM public.tenant_schemas ts
          JOIN pg_namespace n ON n.nspname = ts.schema_name
          JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm')
         WHERE ts.organization_id = p_tenant), 0);
    events_last_24h := v_24h + d_24h;
    events_this_month := v_month_n + d_month;
    last_activity := GREATEST(v_last, d_last);
    storage_bytes := v_bytes;
    RETURN NEXT;
END
$$;

-- What the seed's view meant, per organization. For operators (admin roles): it reads every
-- tenant's partitions, which billing_app cannot.
CREATE VIEW vw_tenant_metrics WITH (security_invoker = true) AS
    SELECT o.id AS organization_id,
           o.name AS organization_name,
           COALESCE(tc.tier, 'free') AS tier,
           (SELECT count(*) FROM public.subscriptions s
             WHERE s.organization_id = o.id AND s.status = 'active') AS active_subscriptions,
           u.events_last_24h,
           u.events_this_month,
           u.storage_bytes,
           pg_size_pretty(u.storage_bytes) AS storage_used,
           u.last_activity
      FROM public.organizations o
      LEFT JOIN public.tenant_classifications tc ON tc.organization_id = o.id
     CROSS JOIN LATERAL public.fn_tenant_usage_stats(o.id) u;

-- One row per tenant per day: the history the tenant_metrics asset keeps.
CREATE TABLE tenant_metrics_history (
    day                   date NOT NULL,
    organization_id       uuid NOT NULL REFERENCES organizations (id),
    tier                  text NOT NULL,
    active_subscriptions  bigint NOT NULL,
    events_last_24h       bigint NOT NULL,
    events_this_month     bigint NOT NULL,
    storage_bytes         bigint NOT NULL,
    last_activity         timestamptz,
    monthly_events_limit  bigint,
    storage_quota_gb      integer,
    recorded_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, day)
);
CREATE INDEX tenant_metrics_history_day_idx ON tenant_metrics_history (day);
ALTER TABLE tenant_metrics_history OWNER TO billing_owner;
ALTER TABLE tenant_metrics_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_metrics_history FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_metrics_history AS PERMISSIVE FOR ALL TO PUBLIC
    USING (organization_id = public.fn_current_tenant_id())
    WITH CHECK (organization_id = public.fn_current_tenant_id());
-- A tenant's application may read its own history.
GRANT SELECT ON tenant_metrics_history TO billing_app;

ALTER FUNCTION fn_tenant_usage_stats(uuid, timestamptz) OWNER TO billing_owner;
REVOKE ALL ON FUNCTION fn_tenant_usage_stats(uuid, timestamptz) FROM PUBLIC;
ALTER VIEW vw_tenant_metrics OWNER TO billing_owner;
REVOKE ALL ON vw_tenant_metrics FROM PUBLIC;
