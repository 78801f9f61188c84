-- Bounded leaves: most tenants share a pool, split by month; only the largest get partitions.
--
-- Before: every onboarded tenant got a partition of its own, so usage_events_mt had one leaf
-- per tenant (14,001 at 10,000 tenants). A query that relies on RLS alone is planned over
-- every leaf (3.9 s at 10,000 tenants), and a time bound written with now() sets up run-time
-- pruning over all of them. bench/partitions.py measured RLS-only planning at 10,000
-- tenants in this layout: 2.5 ms with 150 leaves, about 4 ms with 200, 11-12 ms with 300.
-- The default budget is 200.
--
--   usage_events_mt                          LIST (organization_id)
--   ├── usage_events_mt_default              DEFAULT: the pool, shared by pooled tenants, RANGE ("timestamp")
--   │   ├── usage_events_mt_pool_before      MINVALUE up to the first month: rows older than the months
--   │   ├── usage_events_mt_pool_pYYYYMM     one month of every pooled tenant; tiered by the global policy
--   │   └── usage_events_mt_pool_after       after the last month, up to MAXVALUE: rows beyond the premade ones
--   └── usage_events_mt_t_<32 hex>           dedicated: a tenant that earned it, within the leaf budget
--
-- Onboarding a tenant is registering it: its rows land in the pool, with no DDL. A tenant
-- gets a dedicated partition when its tier says so (tier_limits.partition_by_month), when it
-- is flagged (tenant_classifications.dedicated_resources), or when it outgrows
-- partition_config.split_threshold_rows, and only while the leaves under usage_events_mt stay
-- within partition_config.leaf_budget. Otherwise it stays pooled, which is correct, only
-- less isolated physically: RLS guards the pool exactly as it guards a partition.
--
-- The pool has no DEFAULT partition of its own, but two open-ended ranges instead: a
-- partitioned DEFAULT partition with a DEFAULT of its own makes the planner test every
-- query's clauses against the pool's partition constraint (NOT organization_id = ANY(every
-- dedicated tenant)), 0.13 -> 0.60 ms of planning at 60 dedicated tenants, measured here.
--
-- Promotion is online (core/partitions.py): the pipelines hold the tenant's advisory lock,
-- add a NOT VALID CHECK (organization_id <> tenant) to every pool leaf in a short
-- transaction, then move the tenant's rows, VALIDATE those CHECKs (SHARE UPDATE EXCLUSIVE:
-- writers go on) and ATTACH in one transaction. With the CHECKs validated, ATTACH does not
-- scan the pool. Then the CHECKs are dropped.
--
-- The functions, in sql/functions/: the pool's (fn_premake_pool_months, fn_create_month_table,
-- fn_attach_month, fn_pool_month_name, fn_cap_lock_timeout, fn_leaf_count), promotion's
-- (fn_pool_exclude_tenant, fn_pool_unexclude_tenant, fn_pool_exclusion_name), and the ones
-- this layout changed: fn_prepare_tenant_partition, fn_attach_tenant_partition,
-- fn_create_tenant_partition, fn_tier_plan, fn_move_begin, fn_tenant_usage_stats (with
-- fn_pool_bytes_per_row).

ALTER TABLE partition_config ADD COLUMN leaf_budget integer NOT NULL DEFAULT 200 CHECK (leaf_budget > 0);

-- The DEFAULT partition becomes the pool: a partitioned table of the same name. Its rows
-- (tenants not onboarded before this migration) are moved into it, then into its months.
ALTER TABLE usage_events_mt DETACH PARTITION usage_events_mt_default;
ALTER TABLE usage_events_mt_default RENAME TO usage_events_mt_default_before_0016;
DO $$
DECLARE
    v_index text;
BEGIN
    -- Free the index names for the pool's own indexes.
    FOR v_index IN SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                    WHERE x.indrelid = 'public.usage_events_mt_default_before_0016'::regclass LOOP
        EXECUTE format('ALTER INDEX public.%I RENAME TO %I', v_index, left('old_' || v_index, 63));
    END LOOP;
END
$$;

-- The primary key leads with organization_id, which serves the pool's per-tenant lookups:
-- no extra index to maintain on every insert.
CREATE TABLE usage_events_mt_default (LIKE usage_events_mt INCLUDING DEFAULTS)
    PARTITION BY RANGE ("timestamp");
DO $$
DECLARE
    v_this_month timestamptz := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
BEGIN
    EXECUTE format('CREATE TABLE public.usage_events_mt_pool_before PARTITION OF public.usage_events_mt_default'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', v_this_month);
    EXECUTE format('CREATE TABLE public.usage_events_mt_pool_after PARTITION OF public.usage_events_mt_default'
                   ' FOR VALUES FROM (%L) TO (MAXVALUE)', v_this_month);
END
$$;
ALTER TABLE usage_events_mt ATTACH PARTITION usage_events_mt_default DEFAULT;
SELECT fn_secure_partition(t)
  FROM unnest(ARRAY['usage_events_mt_default', 'usage_events_mt_pool_before', 'usage_events_mt_pool_after']) t;
INSERT INTO usage_events_mt SELECT * FROM usage_events_mt_default_before_0016;
DROP TABLE usage_events_mt_default_before_0016;

-- The pool's months, from its oldest row to premake_months ahead: its rows move into them.
SELECT fn_premake_pool_months();

ALTER TABLE usage_events_mt_default OWNER TO billing_owner;
