-- Usage events, partitioned by tenant. Tenant partitions are created and ATTACHed by the
-- pipelines (tenant_partition); until then a tenant's rows land in the DEFAULT partition,
-- so no insert is ever rejected for lack of a partition.
--
-- The key includes "timestamp": a tenant partition may be sub-partitioned by month, and a
-- unique key on a partitioned table must hold every partition key column.
CREATE TABLE usage_events_mt (
    id               uuid NOT NULL DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL,
    metric_name      varchar(100) NOT NULL,
    quantity         numeric(20, 6) NOT NULL,
    "timestamp"      timestamptz NOT NULL,
    properties       jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (organization_id, id, "timestamp")
) PARTITION BY LIST (organization_id);

-- The seed's per-partition indexes, declared once on the parent: every partition gets them,
-- and ATTACH PARTITION adopts a matching index instead of building another.
CREATE INDEX usage_events_mt_timestamp_idx ON usage_events_mt ("timestamp" DESC);
CREATE INDEX usage_events_mt_metric_timestamp_idx ON usage_events_mt (metric_name, "timestamp" DESC);

CREATE TABLE usage_events_mt_default PARTITION OF usage_events_mt DEFAULT;
-- The default partition is scanned under lock by every ATTACH: an index on the tenant lets
-- the drain find one tenant's rows without reading the others.
CREATE INDEX usage_events_mt_default_organization_id_idx ON usage_events_mt_default (organization_id);

ALTER TABLE usage_events_mt OWNER TO billing_owner;
ALTER TABLE usage_events_mt_default OWNER TO billing_owner;

-- Applications keep the name usage_events: a view over usage_events_mt, sql/functions/usage_events.sql.
