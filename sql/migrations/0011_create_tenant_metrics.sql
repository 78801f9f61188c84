-- Per-tenant metrics, correct at scale.
--
-- The seed's vw_tenant_metrics joined subscriptions and usage events on the organization, so
-- every event was counted once per active subscription (fan-out), summed
-- pg_total_relation_size of a partitioned parent (always 0), and failed on the regclass cast
-- for a tenant without a partition. Here each measure is computed on its own, per tenant,
-- from that tenant's own partitions only (dynamic SQL on its partition: no plan over every
-- tenant's leaves), and a missing partition is simply zero: sql/functions/fn_tenant_usage_stats.sql
-- and the view, sql/functions/vw_tenant_metrics.sql.

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
