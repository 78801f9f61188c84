-- Tenant partitions of usage_events_mt, and the functions that create them.
--
-- Layout (docs/partitioning.md has the reasoning and the figures):
--
--   usage_events_mt                          LIST (organization_id)
--   ├── usage_events_mt_default              DEFAULT: tenants not onboarded yet; kept drained
--   └── usage_events_mt_t_<32 hex>           one tenant, RANGE ("timestamp")
--       ├── usage_events_mt_t_<hex>_rest     DEFAULT: all of a small tenant's rows; the rest otherwise
--       └── usage_events_mt_t_<hex>_pYYYYMM  one month, for tenants split by month
--
-- A tenant is split into months when its tier says so (tier_limits.partition_by_month) or
-- when it outgrows partition_config.split_threshold_rows. Splitting is online: it touches
-- only that tenant's tables. Names are at most 58 bytes, under PostgreSQL's 63.
--
-- Every new table is created on its own first, then ATTACHed: ATTACH PARTITION takes
-- SHARE UPDATE EXCLUSIVE on the parent and never blocks other tenants' writers, where
-- CREATE TABLE ... PARTITION OF an attached parent would take ACCESS EXCLUSIVE.

ALTER TABLE tier_limits ADD COLUMN partition_by_month boolean NOT NULL DEFAULT false;
UPDATE tier_limits SET partition_by_month = (tier IN ('growth', 'enterprise'));

CREATE TABLE partition_config (
    singleton             boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    premake_months        integer NOT NULL DEFAULT 3 CHECK (premake_months BETWEEN 0 AND 36),
    max_history_months    integer NOT NULL DEFAULT 24 CHECK (max_history_months BETWEEN 0 AND 240),
    split_threshold_rows  bigint NOT NULL DEFAULT 1000000 CHECK (split_threshold_rows > 0),
    lock_timeout          text NOT NULL DEFAULT '2s'
);
INSERT INTO partition_config DEFAULT VALUES;
ALTER TABLE partition_config OWNER TO billing_owner;
GRANT SELECT ON partition_config TO billing_app;

-- The functions: sql/functions/fn_hot_tablespace.sql, fn_tenant_partition_name.sql,
-- fn_month_partition_name.sql, fn_secure_partition.sql, fn_is_partition_of.sql,
-- fn_prepare_tenant_partition.sql, fn_attach_tenant_partition.sql, fn_create_tenant_partition.sql.
